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
use crate::segment::{self, CHECKPOINTS, Kind, Seal};
use crate::verify::StoredCheckpoint;
use deepseek_integrity::note::NoteSigner;

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
                    let note = read_note(&path).map_err(|e| io("read", &path, e))?;
                    checkpoints.push(StoredCheckpoint { name, note });
                }
            }
        }
    }
    Ok(checkpoints)
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

/// Reads a regular file whole, refusing anything else (a symbolic link, a
/// device, a FIFO: a length of 0 and reads without end, or a hang) and
/// anything over `limit` bytes, unread: the log directory and archive media
/// are not trusted to hold what their names say.
pub(crate) fn read_regular(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    if meta.len() > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("{} bytes, over the {limit} this file can have", meta.len()),
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("grew over the {limit} bytes this file can have"),
        ));
    }
    Ok(bytes)
}

/// A signed note (a checkpoint, a seal): UTF-8 text in a regular file of
/// at most [`segment::MAX_SEAL_BYTES`].
pub(crate) fn read_note(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read_regular(path, segment::MAX_SEAL_BYTES)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))
}

/// Creates `dir` (mode 0700, and syncs its parent) unless it exists; a symbolic link
/// or anything but a directory there is refused, so that nothing is
/// written through a link planted in the log directory or on a medium.
pub(crate) fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "not a directory (a symbolic link?)",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                ensure_dir(parent)?;
            }
            std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
                .create(dir)?;
            match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                Some(parent) => sync_dir(parent),
                None => Ok(()),
            }
        }
        Err(e) => Err(e),
    }
}

/// Who may read a file written durably.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Readers {
    /// Anyone who can enter the directory: in the live log (mode 0700),
    /// the audit user and root, whichever of them wrote it.
    Directory,
    /// Only the owner: copies on an archive medium, which other local
    /// users may be able to enter.
    Owner,
}

/// Writes `bytes` to `dir/name` so that a crash leaves either the old file
/// or the whole new one: a new temporary file (never through a link),
/// synced, renamed over the name, and the directory synced.
pub(crate) fn write_durably(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    readers: Readers,
) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    ensure_dir(dir)?;
    let temporary = dir.join(format!(".{name}.new"));
    match std::fs::remove_file(&temporary) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .mode(match readers {
            Readers::Directory => 0o644,
            Readers::Owner => 0o600,
        })
        .open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, dir.join(name))?;
    sync_dir(dir)
}

/// Renames `from` to `to` unless `to` exists (`RENAME_NOREPLACE`): a file
/// planted under the target's name is never replaced.
pub(crate) fn rename_new(from: &Path, to: &Path) -> std::io::Result<()> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE)
        .map_err(std::io::Error::from)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
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

/// Where the active segment starts, from a verified history: what the
/// last seal says.
#[derive(Debug, Clone, Default)]
pub struct Tail {
    /// The active segment's index.
    pub(crate) index: u64,
    /// The tree before its first entry, and that entry's `prev`.
    pub(crate) frontier: Frontier,
    pub(crate) last: Option<Hash>,
    /// A crash came between writing the last seal and renaming the file it
    /// seals: `entries.log` is still that (verified) segment.
    pub(crate) pending: bool,
}

/// Readies the active file before the history is verified: creates it
/// when missing (a new log, or a crash just after a rotation's rename),
/// and cuts a torn last entry (a crash mid-write, never acknowledged) off
/// it: verification refuses an incomplete line, and the removal is
/// recorded once the service runs.
pub fn prepare_active(dir: &Path) -> Result<Option<TornTail>, StorageError> {
    let (path, file, content) = open_active(dir)?;
    let complete = content
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    if complete == content.len() {
        return Ok(None);
    }
    let io = |action, source| StorageError::Io {
        action,
        path: path.clone(),
        source,
    };
    file.set_len(complete as u64)
        .map_err(|e| io("truncate the torn entry of", e))?;
    file.sync_data().map_err(|e| io("sync", e))?;
    Ok(Some(TornTail {
        offset: complete as u64,
        bytes: (content.len() - complete) as u64,
    }))
}

/// Opens (or creates, durably) the active file for appending, never
/// through a link, and reads it.
fn open_active(dir: &Path) -> Result<(PathBuf, File, Vec<u8>), StorageError> {
    use std::os::unix::fs::OpenOptionsExt;
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
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| io("open", e))?;
    if !existed {
        // The new directory entry must survive a crash too.
        sync_dir(dir).map_err(|e| io("sync the directory of", e))?;
    }
    let mut content = Vec::new();
    file.read_to_end(&mut content).map_err(|e| io("read", e))?;
    Ok((path, file, content))
}

impl LogFile {
    /// Opens (or creates) the active segment in `dir`, after `tail`, the
    /// end of the verified history: finishes a rotation a crash cut short,
    /// and checks that every entry chains to the one before.
    pub fn open(dir: &Path, tail: &Tail) -> Result<Self, StorageError> {
        if tail.pending {
            let index = tail
                .index
                .checked_sub(1)
                .expect("a pending rotation has a seal");
            finish_rotation(dir, index)?;
        }
        let (path, file, content) = open_active(dir)?;
        let mut log = Self {
            dir: dir.to_owned(),
            index: tail.index,
            first: tail.frontier.size(),
            frontier: tail.frontier.clone(),
            last: tail.last,
            digest: Sha256::new(),
            bytes: content.len() as u64,
            since: None,
            last_sync: std::time::Duration::ZERO,
            path,
            file,
        };
        log.digest.update(&content);
        if !content.is_empty() && !content.ends_with(b"\n") {
            return Err(StorageError::Damaged {
                path: log.path.clone(),
                line: content.split(|&b| b == b'\n').count() as u64,
                reason: "an incomplete last entry".into(),
            });
        }
        let body = content.strip_suffix(b"\n").unwrap_or(&content);
        for (index, line) in body
            .split(|&b| b == b'\n')
            .enumerate()
            .filter(|_| !body.is_empty())
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
        Ok(log)
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
        write_durably(&segments, name, note.as_bytes(), Readers::Directory)
            .map_err(|e| io("write the seal", &seal_path, e))?;
        finish_rotation(&self.dir, self.index)?;
        // A new file: one planted under the name meanwhile is refused.
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
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

/// After the seal of segment `index` was written: moves the active file
/// it seals into `segments/`, never over a file already there.
fn finish_rotation(dir: &Path, index: u64) -> Result<(), StorageError> {
    let data = segment::path(dir, index, Kind::Data);
    let active = dir.join(ENTRIES);
    let segments = dir.join(segment::SEGMENTS);
    let io = |action, path: &Path, source| StorageError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    rename_new(&active, &data).map_err(|e| io("rename", &active, e))?;
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
        let mut log = LogFile::open(dir.path(), &Tail::default()).expect("open");
        assert_eq!(
            log.append(vec![event("a"), event("b")]).expect("append"),
            [0, 1]
        );
        assert_eq!(log.append(vec![event("c")]).expect("append"), [2]);
        let root = log.root();
        drop(log);
        assert_eq!(prepare_active(dir.path()).expect("nothing torn"), None);
        let log = LogFile::open(dir.path(), &Tail::default()).expect("reopen");
        assert_eq!((log.size(), log.root()), (3, root));
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
        let mut log = LogFile::open(dir.path(), &Tail::default()).expect("open");
        log.append(vec![event("a"), event("b")]).expect("append");
        drop(log);
        let path = dir.path().join(ENTRIES);
        let complete = std::fs::metadata(&path).expect("meta").len();
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        let torn_bytes = br#"{"seq":2,"prev":"ab"#;
        file.write_all(torn_bytes).expect("torn write");
        drop(file);
        let torn = prepare_active(dir.path()).expect("cut");
        let log = LogFile::open(dir.path(), &Tail::default()).expect("reopen");
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
        let mut log = LogFile::open(dir.path(), &Tail::default()).expect("open");
        log.append(vec![event("a"), event("b"), event("c")])
            .expect("append");
        drop(log);
        let path = dir.path().join(ENTRIES);
        let text = std::fs::read_to_string(&path)
            .expect("read")
            .replacen("\"a\"", "\"z\"", 1);
        std::fs::write(&path, text).expect("edit");
        let err = LogFile::open(dir.path(), &Tail::default())
            .expect_err("damaged")
            .to_string();
        assert!(err.contains("is damaged at line 2"), "{err}");
    }
}
