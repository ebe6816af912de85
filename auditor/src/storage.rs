//! The append-only entries file and its durability rules: an entry counts
//! only once it is on disk (`fdatasync`, one per batch: group commit); a
//! failed write or sync is fatal and never retried (after a failed fsync
//! the kernel may have dropped the dirty pages, so a retry could "succeed"
//! without the data); a torn last entry, never acknowledged, is cut off at
//! open and reported so that the removal itself can be recorded.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use deepseek_integrity::digest::hex;

use crate::entry::Entry;
use crate::merkle::{self, Hash};

/// The entries file inside the log directory.
pub const ENTRIES: &str = "entries.log";

/// Why the log cannot be used or written.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is damaged at line {line}: {reason}; refusing to append to it (run `deepseek-audit log verify`)"
    )]
    Damaged {
        path: PathBuf,
        line: u64,
        reason: String,
    },
}

/// Reads the entries file and every stored checkpoint of a log directory.
/// Anything unreadable is an error naming the file: a wrong `log_dir` must
/// not look like an empty, clean log.
pub fn read_log(
    dir: &Path,
) -> Result<(Vec<u8>, Vec<crate::verify::StoredCheckpoint>), StorageError> {
    let io = |action, path: &Path, source| StorageError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let entries = dir.join(ENTRIES);
    let log = std::fs::read(&entries).map_err(|e| io("read", &entries, e))?;
    let mut checkpoints = Vec::new();
    let checkpoint_dir = dir.join("checkpoints");
    match std::fs::read_dir(&checkpoint_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("read", &checkpoint_dir, e)),
        Ok(items) => {
            for item in items {
                let path = item.map_err(|e| io("read", &checkpoint_dir, e))?.path();
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if name.ends_with(".note") && !name.starts_with('.') {
                    let note = std::fs::read_to_string(&path).map_err(|e| io("read", &path, e))?;
                    checkpoints.push(crate::verify::StoredCheckpoint { name, note });
                }
            }
        }
    }
    Ok((log, checkpoints))
}

/// A torn last entry that was removed at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub offset: u64,
    pub bytes: u64,
}

/// Bytes free on `dir`'s filesystem, as unprivileged users see them: what
/// the disk floor, the low-water mark and `verify` compare.
pub(crate) fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(dir)?;
    Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

/// The open log: the file, and the leaves of the tree so far.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: File,
    leaves: Vec<Hash>,
    /// How long the last append's `fdatasync` took.
    last_sync: std::time::Duration,
}

impl LogFile {
    /// Opens (or creates) the entries file in `dir`, removing a torn last
    /// entry and checking that every entry chains to the one before.
    pub fn open(dir: &Path) -> Result<(Self, Option<TornTail>), StorageError> {
        let path = dir.join(ENTRIES);
        let io = |action, source| StorageError::Io {
            action,
            path: path.clone(),
            source,
        };
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| io("open", e))?;
        if !existed {
            // The new directory entry must survive a crash too.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("sync the directory of", e))?;
        }
        let mut content = Vec::new();
        file.read_to_end(&mut content).map_err(|e| io("read", e))?;
        let complete = content
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let torn = (complete < content.len()).then(|| TornTail {
            offset: complete as u64,
            bytes: (content.len() - complete) as u64,
        });
        if torn.is_some() {
            file.set_len(complete as u64)
                .map_err(|e| io("truncate the torn entry of", e))?;
            file.sync_data().map_err(|e| io("sync", e))?;
        }
        let mut leaves: Vec<Hash> = Vec::new();
        for (index, line) in content[..complete]
            .split(|&b| b == b'\n')
            .enumerate()
            .filter(|(_, l)| !l.is_empty())
        {
            let damaged = |reason: String| StorageError::Damaged {
                path: path.clone(),
                line: index as u64 + 1,
                reason,
            };
            let entry = Entry::decode(line).map_err(|e| damaged(e.to_string()))?;
            if entry.seq != leaves.len() as u64 || entry.prev != leaves.last().map(|h| hex(h)) {
                return Err(damaged(
                    "out of sequence or not chained to the entry before".to_owned(),
                ));
            }
            leaves.push(merkle::leaf_hash(line));
        }
        Ok((
            Self {
                path,
                file,
                leaves,
                last_sync: std::time::Duration::ZERO,
            },
            torn,
        ))
    }

    /// How long the last append's `fdatasync` took.
    pub fn last_sync(&self) -> std::time::Duration {
        self.last_sync
    }

    /// Entries in the log.
    pub fn size(&self) -> u64 {
        self.leaves.len() as u64
    }

    /// The root of the whole log.
    pub fn root(&self) -> Hash {
        merkle::root(&self.leaves)
    }

    pub fn leaves(&self) -> &[Hash] {
        &self.leaves
    }

    /// Appends a batch: numbers and chains each entry, writes them all, and
    /// syncs once. Returns the sequence numbers, in order. Any error is
    /// fatal for the log writer: the caller must stop, not retry.
    pub fn append(&mut self, batch: Vec<Entry>) -> Result<Vec<u64>, StorageError> {
        let io = |action, source| StorageError::Io {
            action,
            path: self.path.clone(),
            source,
        };
        let mut bytes = Vec::new();
        let mut seqs = Vec::with_capacity(batch.len());
        let mut leaves = Vec::with_capacity(batch.len());
        for mut entry in batch {
            entry.seq = self.leaves.len() as u64 + leaves.len() as u64;
            entry.prev = leaves.last().or(self.leaves.last()).map(|h: &Hash| hex(h));
            let line = entry.encode();
            leaves.push(merkle::leaf_hash(&line));
            seqs.push(entry.seq);
            bytes.extend_from_slice(&line);
            bytes.push(b'\n');
        }
        self.file.write_all(&bytes).map_err(|e| io("write", e))?;
        let sync = std::time::Instant::now();
        self.file.sync_data().map_err(|e| io("sync", e))?;
        self.last_sync = sync.elapsed();
        self.leaves.extend(leaves);
        Ok(seqs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Event;

    fn event(name: &str) -> Entry {
        Entry {
            model: Some(name.to_owned()),
            status: Some(200),
            ..Entry::event(Event::Request)
        }
    }

    #[test]
    fn appends_chain_and_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, torn) = LogFile::open(dir.path()).expect("open");
        assert_eq!(torn, None);
        assert_eq!(
            log.append(vec![event("a"), event("b")]).expect("append"),
            [0, 1]
        );
        assert_eq!(log.append(vec![event("c")]).expect("append"), [2]);
        let root = log.root();
        drop(log);
        let (log, torn) = LogFile::open(dir.path()).expect("reopen");
        assert_eq!((log.size(), log.root(), torn), (3, root, None));
        let bytes = std::fs::read(dir.path().join(ENTRIES)).expect("read");
        let verifier = crate::note::NoteSigner::from_seed("t", [1; 32])
            .expect("key")
            .verifier();
        assert_eq!(
            crate::verify::verify(&bytes, &[], &verifier, None)
                .expect("verifies")
                .entries,
            3
        );
    }

    #[test]
    fn a_torn_last_entry_is_cut_and_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = LogFile::open(dir.path()).expect("open");
        log.append(vec![event("a"), event("b")]).expect("append");
        drop(log);
        let path = dir.path().join(ENTRIES);
        let complete = std::fs::metadata(&path).expect("meta").len();
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        let torn_bytes = br#"{"seq":2,"prev":"ab"#;
        file.write_all(torn_bytes).expect("torn write");
        drop(file);
        let (log, torn) = LogFile::open(dir.path()).expect("reopen");
        assert_eq!(
            torn,
            Some(TornTail {
                offset: complete,
                bytes: torn_bytes.len() as u64
            })
        );
        assert_eq!(log.size(), 2);
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), complete);
    }

    #[test]
    fn a_damaged_log_is_refused_with_its_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = LogFile::open(dir.path()).expect("open");
        log.append(vec![event("a"), event("b"), event("c")])
            .expect("append");
        drop(log);
        let path = dir.path().join(ENTRIES);
        let text = std::fs::read_to_string(&path)
            .expect("read")
            .replacen("\"a\"", "\"z\"", 1);
        std::fs::write(&path, text).expect("edit");
        let err = LogFile::open(dir.path()).expect_err("damaged").to_string();
        assert!(err.contains("is damaged at line 2"), "{err}");
    }
}
