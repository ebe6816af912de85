//! The append-only entries file and its durability rules: an entry counts
//! only once it is on disk (`fdatasync`, one per batch: group commit); a
//! failed write or sync is fatal and never retried (after a failed fsync
//! the kernel may have dropped the dirty pages, so a retry could "succeed"
//! without the data); a torn last entry, never acknowledged, is cut off at
//! open and reported so that the removal itself can be recorded.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use deepseek_integrity::digest::hex;

use crate::entry::Entry;
use crate::merkle::{self, Frontier, Hash};
use crate::note::NoteSigner;
use crate::segment::{self, CHECKPOINTS, Kind, Seal};
use crate::verify::StoredCheckpoint;

/// The active segment's file inside the log directory.
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

/// Every stored checkpoint note of a log (or archive) directory. Anything
/// unreadable is an error naming the file.
pub fn read_checkpoints(dir: &Path) -> Result<Vec<StoredCheckpoint>, StorageError> {
    let checkpoint_dir = dir.join(CHECKPOINTS);
    let io = |action, path: &Path, source| StorageError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let mut checkpoints = Vec::new();
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
                    let length = item_length(&path).map_err(|e| io("read", &path, e))?;
                    if length > segment::MAX_SEAL_BYTES {
                        return Err(StorageError::Damaged {
                            path,
                            line: 1,
                            reason: format!(
                                "{length} bytes, over the {} a checkpoint can have",
                                segment::MAX_SEAL_BYTES
                            ),
                        });
                    }
                    let note = std::fs::read_to_string(&path).map_err(|e| io("read", &path, e))?;
                    checkpoints.push(StoredCheckpoint { name, note });
                }
            }
        }
    }
    Ok(checkpoints)
}

fn item_length(path: &Path) -> std::io::Result<u64> {
    Ok(std::fs::metadata(path)?.len())
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

/// Writes `bytes` to `dir/name` so that a crash leaves either the old file
/// or the whole new one: a temporary file, synced, renamed, and the
/// directory synced.
pub(crate) fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let temporary = dir.join(format!(".{name}.new"));
    let mut file = File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, dir.join(name))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The last seal in `dir`, read without its signature (the history is
/// verified after the log is opened): where the active segment starts.
fn last_seal(dir: &Path) -> Result<Option<Seal>, StorageError> {
    let segments = dir.join(segment::SEGMENTS);
    let items = match std::fs::read_dir(&segments) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StorageError::Io {
                action: "read",
                path: segments,
                source,
            });
        }
        Ok(items) => items,
    };
    let last = items
        .filter_map(|item| {
            item.ok()?
                .file_name()
                .to_str()
                .and_then(segment::parse_name)
        })
        .filter(|(_, kind)| *kind == Kind::Seal)
        .map(|(index, _)| index)
        .max();
    let Some(index) = last else {
        return Ok(None);
    };
    let path = segment::path(dir, index, Kind::Seal);
    let damaged = |reason: String| StorageError::Damaged {
        path: path.clone(),
        line: 1,
        reason,
    };
    let note = std::fs::read_to_string(&path).map_err(|source| StorageError::Io {
        action: "read",
        path: path.clone(),
        source,
    })?;
    let seal = segment::unverified_text(&note)
        .ok_or_else(|| damaged("not a signed note".into()))
        .and_then(|text| Seal::parse(text).map_err(|e| damaged(e.to_string())))?;
    if seal.index != index {
        return Err(damaged(format!("says it seals segment {}", seal.index)));
    }
    Ok(Some(seal))
}

/// The open log: the active segment's file, and the tree so far.
#[derive(Debug)]
pub struct LogFile {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    /// The active segment's index and first entry.
    index: u64,
    first: u64,
    frontier: Frontier,
    last: Option<Hash>,
    /// SHA-256 of the active segment's file so far, for its seal.
    digest: Sha256,
    bytes: u64,
    /// When the active segment's first entry was written.
    since: Option<SystemTime>,
    /// How long the last append's `fdatasync` took.
    last_sync: std::time::Duration,
}

impl LogFile {
    /// Opens (or creates) the active segment in `dir`, finishing a
    /// rotation a crash interrupted, removing a torn last entry and
    /// checking that every entry chains to the one before.
    pub fn open(dir: &Path) -> Result<(Self, Option<TornTail>), StorageError> {
        let path = dir.join(ENTRIES);
        let io = |action, source| StorageError::Io {
            action,
            path: path.clone(),
            source,
        };
        let seal = last_seal(dir)?;
        if let Some(seal) = &seal {
            finish_rotation(dir, seal)?;
        }
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| io("open", e))?;
        if !existed {
            // The new directory entry must survive a crash too.
            sync_dir(dir).map_err(|e| io("sync the directory of", e))?;
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
        let mut log = Self {
            dir: dir.to_owned(),
            index: seal.as_ref().map_or(0, |s| s.index + 1),
            first: seal.as_ref().map_or(0, |s| s.frontier.size()),
            frontier: seal
                .as_ref()
                .map(|s| s.frontier.clone())
                .unwrap_or_default(),
            last: seal.as_ref().map(|s| s.last),
            digest: Sha256::new(),
            bytes: complete as u64,
            since: None,
            last_sync: std::time::Duration::ZERO,
            path,
            file,
        };
        log.digest.update(&content[..complete]);
        for (index, line) in content[..complete]
            .split(|&b| b == b'\n')
            .enumerate()
            .filter(|(_, l)| !l.is_empty())
        {
            let damaged = |reason: String| StorageError::Damaged {
                path: log.path.clone(),
                line: index as u64 + 1,
                reason,
            };
            let entry = Entry::decode(line).map_err(|e| damaged(e.to_string()))?;
            if entry.seq != log.frontier.size() || entry.prev != log.last.map(|h| hex(&h)) {
                return Err(damaged(
                    "out of sequence or not chained to the entry before".to_owned(),
                ));
            }
            log.since.get_or_insert(
                UNIX_EPOCH + std::time::Duration::from_nanos(entry.time_ns.try_into().unwrap_or(0)),
            );
            let leaf = merkle::leaf_hash(line);
            log.frontier.push(leaf);
            log.last = Some(leaf);
        }
        Ok((log, torn))
    }

    /// How long the last append's `fdatasync` took.
    pub fn last_sync(&self) -> std::time::Duration {
        self.last_sync
    }

    /// Entries in the log, all segments.
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// The root of the whole log.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// Bytes in the active segment.
    pub fn segment_bytes(&self) -> u64 {
        self.bytes
    }

    /// When the active segment's first entry was written (`None` while it
    /// is empty).
    pub fn segment_since(&self) -> Option<SystemTime> {
        self.since
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
        let mut last = self.last;
        for mut entry in batch {
            entry.seq = self.frontier.size() + leaves.len() as u64;
            entry.prev = last.map(|h: Hash| hex(&h));
            let line = entry.encode();
            let leaf = merkle::leaf_hash(&line);
            leaves.push(leaf);
            last = Some(leaf);
            seqs.push(entry.seq);
            bytes.extend_from_slice(&line);
            bytes.push(b'\n');
        }
        self.file.write_all(&bytes).map_err(|e| io("write", e))?;
        let sync = std::time::Instant::now();
        self.file.sync_data().map_err(|e| io("sync", e))?;
        self.last_sync = sync.elapsed();
        self.digest.update(&bytes);
        self.bytes += bytes.len() as u64;
        self.since.get_or_insert_with(SystemTime::now);
        leaves.into_iter().for_each(|leaf| self.frontier.push(leaf));
        self.last = last;
        Ok(seqs)
    }

    /// Seals the active segment and starts the next: the seal (signed by
    /// every signer: two for a key hand-over, which names `next_key`) is
    /// written first, then the file is renamed into `segments/`, then a
    /// new `entries.log` is created; [`LogFile::open`] finishes a rotation
    /// a crash cut short. Returns the seal's note, or `None` when the
    /// active segment is empty. Any error is fatal, as for `append`.
    pub fn rotate(
        &mut self,
        signers: &[&NoteSigner],
        next_key: Option<String>,
    ) -> Result<Option<String>, StorageError> {
        let Some((signer, _)) = signers.split_first() else {
            return Ok(None);
        };
        let Some(last) = self.last.filter(|_| self.size() > self.first) else {
            return Ok(None);
        };
        let seal = Seal {
            origin: signer.verifier().name().to_owned(),
            index: self.index,
            first: self.first,
            sha256: self.digest.clone().finalize().into(),
            last,
            frontier: self.frontier.clone(),
            next_key,
        };
        let note =
            NoteSigner::sign_all(signers, &seal.text()).expect("seal text ends in a newline");
        let segments = self.dir.join(segment::SEGMENTS);
        let io = |action, path: &Path, source| StorageError::Io {
            action,
            path: path.to_owned(),
            source,
        };
        let seal_path = segment::path(&self.dir, self.index, Kind::Seal);
        let name = seal_path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        write_durably(&segments, name, note.as_bytes())
            .map_err(|e| io("write the seal", &seal_path, e))?;
        finish_rotation(&self.dir, &seal)?;
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&self.path)
            .map_err(|e| io("create", &self.path, e))?;
        sync_dir(&self.dir).map_err(|e| io("sync", &self.dir, e))?;
        self.index += 1;
        self.first = self.size();
        self.digest = Sha256::new();
        self.bytes = 0;
        self.since = None;
        Ok(Some(note))
    }
}

/// After `seal` was written: moves the active file it seals into
/// `segments/` unless that happened already (or the segment was archived).
fn finish_rotation(dir: &Path, seal: &Seal) -> Result<(), StorageError> {
    let data = segment::path(dir, seal.index, Kind::Data);
    if data.exists() || segment::path(dir, seal.index, Kind::Archived).exists() {
        return Ok(());
    }
    let active = dir.join(ENTRIES);
    let io = |action, path: &Path, source| StorageError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let bytes = std::fs::read(&active).map_err(|e| io("read", &active, e))?;
    let digest: Hash = Sha256::digest(&bytes).into();
    if digest != seal.sha256 {
        return Err(StorageError::Damaged {
            path: data,
            line: 0,
            reason: format!(
                "missing, and {} is not the segment its seal describes",
                active.display()
            ),
        });
    }
    std::fs::rename(&active, &data).map_err(|e| io("rename", &active, e))?;
    let segments = dir.join(segment::SEGMENTS);
    sync_dir(&segments)
        .and_then(|()| sync_dir(dir))
        .map_err(|e| io("sync", &segments, e))
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
        let verifier = NoteSigner::from_seed("t", [1; 32]).expect("key").verifier();
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
