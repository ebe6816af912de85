//! The whole history of a log: its sealed segments, wherever they are (the
//! live directory, archives), and the active segment, verified as one
//! tree. The walk starts from the first pinned key and follows the
//! hand-over seals, so every checkpoint is checked with the key of its
//! time. A segment in no directory given is accepted only when `log
//! archive` recorded where it went; a removed or replaced one is named.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::merkle::{Frontier, Hash};
use crate::segment::{self, Kind, Seal};
use crate::storage::{self, ENTRIES, StorageError, Tail};
use crate::verify::{self, Sealing, StoredCheckpoint, Tamper};
use deepseek_integrity::note::NoteVerifier;

/// Where the history is read from.
#[derive(Debug, Clone, Copy)]
pub struct Sources<'a> {
    /// The live log directory (with `entries.log`), if any.
    pub live: Option<&'a Path>,
    /// Archive directories (`log archive --to`).
    pub archives: &'a [PathBuf],
}

/// Where a sealed segment's entries were found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// In this directory, and verified.
    Present(PathBuf),
    /// In none of the directories given; `log archive` recorded this.
    Archived(String),
}

/// One sealed segment of the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentReport {
    pub index: u64,
    pub first: u64,
    pub entries: u64,
    pub place: Place,
}

/// A history that verified.
#[derive(Debug, Clone)]
pub struct History {
    pub segments: Vec<SegmentReport>,
    /// The active segment's first entry and entries, when live.
    pub active: Option<(u64, u64)>,
    /// Entries in the whole history.
    pub entries: u64,
    /// Checkpoints and seals verified.
    pub checkpoints: usize,
    /// Checkpoints not checked: their entries are in no directory given.
    pub unchecked: usize,
    /// The largest verified checkpoint or seal.
    pub sealed: u64,
    /// Entries after it.
    pub unsealed: u64,
    /// The chain of keys, the first pinned one first.
    pub keys: Vec<NoteVerifier>,
    /// The entry files verified, in order (segments, then the active one).
    pub pieces: Vec<Piece>,
    /// Where the active segment starts.
    pub(crate) tail: Tail,
}

/// An entry file of the history that was verified.
#[derive(Debug, Clone)]
pub struct Piece {
    pub path: PathBuf,
    /// The tree before its first entry.
    pub(crate) start: Frontier,
    /// Its seal's note; `None` for the active segment.
    pub seal: Option<String>,
    /// The bytes verified: their length and SHA-256, for reading them
    /// again (the active file grows; a rotation or an archive run can
    /// move a file).
    pub(crate) len: usize,
    pub(crate) sha256: Hash,
}

impl Piece {
    /// The bytes that were verified, read again; `Changed` when they are
    /// not there any more.
    pub(crate) fn read(&self) -> Result<Vec<u8>, HistoryError> {
        let mut bytes =
            storage::read_regular(&self.path, u64::MAX).map_err(|e| io("read", &self.path, e))?;
        if bytes.len() < self.len {
            return Err(HistoryError::Changed(self.path.clone()));
        }
        bytes.truncate(self.len);
        if digest(&bytes) != self.sha256 {
            return Err(HistoryError::Changed(self.path.clone()));
        }
        Ok(bytes)
    }
}

fn digest(bytes: &[u8]) -> Hash {
    <sha2::Sha256 as sha2::Digest>::digest(bytes).into()
}

/// Why a history does not verify, or could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{}: {reason}", path.display())]
    Seal { path: PathBuf, reason: String },
    #[error(
        "segment {index} has no seal, but later segments do: the seal of segment {index} was removed"
    )]
    MissingSeal { index: u64 },
    #[error("{} and {} differ: two different histories", a.display(), b.display())]
    Conflict { a: PathBuf, b: PathBuf },
    #[error("{}: {source}", path.display())]
    Segment { path: PathBuf, source: Tamper },
    #[error("{}: {reason}: the segment was replaced", path.display())]
    Replaced { path: PathBuf, reason: String },
    #[error(
        "segment {index} (entries {first}..{end}) is in none of the directories given and no archive \
         record says where it went: it was removed (pass its archive with --archive)"
    )]
    Missing { index: u64, first: u64, end: u64 },
    #[error(
        "the trusted checkpoint at size {size} falls in segment {index}, whose entries are not here (pass its archive with --archive)"
    )]
    TrustedOutside { size: u64, index: u64 },
    #[error("the trusted checkpoint: {0}")]
    Trusted(String),
    #[error(
        "{}: a segment without a seal (a seal is written before its segment): not part of the history",
        path.display()
    )]
    Unsealed { path: PathBuf },
    #[error("{}: no sealed segment here (not mounted, or the wrong directory?)", dir.display())]
    EmptyArchive { dir: PathBuf },
    #[error(
        "{} changed while it was read (a rotation or an archive run): run the command again",
        .0.display()
    )]
    Changed(PathBuf),
}

/// The files of every source, gathered by segment index.
#[derive(Debug, Default)]
struct Found {
    seals: BTreeMap<u64, (PathBuf, String)>,
    /// Every copy found, the first (live first) verified in full.
    data: BTreeMap<u64, Vec<PathBuf>>,
    archived: BTreeMap<u64, String>,
    checkpoints: Vec<StoredCheckpoint>,
}

fn io(action: &'static str, path: &Path, source: std::io::Error) -> HistoryError {
    HistoryError::Storage(StorageError::Io {
        action,
        path: path.to_owned(),
        source,
    })
}

/// A seal or an archive record, as text: a regular file of a few KiB.
fn read_small(path: &Path) -> Result<String, HistoryError> {
    let bytes =
        storage::read_regular(path, segment::MAX_SEAL_BYTES).map_err(|e| io("read", path, e))?;
    String::from_utf8(bytes).map_err(|_| HistoryError::Seal {
        path: path.to_owned(),
        reason: "not UTF-8 text".into(),
    })
}

impl Found {
    /// Gathers `dir`'s files; an archive (not `live`) must hold a seal.
    fn gather(&mut self, dir: &Path, live: bool) -> Result<(), HistoryError> {
        let segments = dir.join(segment::SEGMENTS);
        let items = match std::fs::read_dir(&segments) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && live => None,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(HistoryError::EmptyArchive {
                    dir: dir.to_owned(),
                });
            }
            Err(e) => return Err(io("read", &segments, e)),
            Ok(items) => Some(items),
        };
        let mut seals_here = 0;
        for item in items.into_iter().flatten() {
            let path = item.map_err(|e| io("read", &segments, e))?.path();
            let Some((index, kind)) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(segment::parse_name)
            else {
                continue;
            };
            match kind {
                Kind::Seal => {
                    seals_here += 1;
                    let note = read_small(&path)?;
                    if let Some((other, known)) = self.seals.get(&index) {
                        if *known != note {
                            return Err(HistoryError::Conflict {
                                a: other.clone(),
                                b: path,
                            });
                        }
                    } else {
                        self.seals.insert(index, (path, note));
                    }
                }
                Kind::Data => self.data.entry(index).or_default().push(path),
                Kind::Archived => {
                    let record = read_small(&path)?;
                    self.archived.insert(index, record.trim().to_owned());
                }
            }
        }
        if !live && seals_here == 0 {
            return Err(HistoryError::EmptyArchive {
                dir: dir.to_owned(),
            });
        }
        self.checkpoints
            .extend(storage::read_checkpoints(dir).map_err(HistoryError::Storage)?);
        Ok(())
    }
}

/// The walk's state between segments.
struct Walk {
    key: NoteVerifier,
    keys: Vec<NoteVerifier>,
    frontier: Frontier,
    last: Option<Hash>,
    sealed: u64,
    checked: usize,
    unchecked: usize,
    /// Checkpoints by size, opened with the key of their era.
    pending: Vec<StoredCheckpoint>,
    /// The trusted checkpoint's size and note, until its segment is seen.
    trusted: Option<(u64, StoredCheckpoint)>,
}

impl Walk {
    /// The stored checkpoints of the range `(from, to]` (all beyond
    /// `from` when `to` is `None`), opened with the current key, and the
    /// trusted checkpoint when it falls there.
    fn sealings(&mut self, from: u64, to: Option<u64>) -> Result<Vec<Sealing>, Tamper> {
        let inside = |size: u64| within(size, from, to);
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|c| inside(checkpoint_size(c)));
        self.pending = rest;
        let mut sealings = Vec::with_capacity(mine.len() + 1);
        for stored in &mine {
            sealings.push(verify::open_checkpoint(stored, &self.key)?);
        }
        self.checked += mine.len();
        if let Some((_, trusted)) = self.trusted.take_if(|(size, _)| inside(*size)) {
            let opened = verify::open_checkpoint(&trusted, &self.key)?;
            sealings.push(Sealing::trusted(opened.checkpoint));
        }
        Ok(sealings)
    }

    /// Skips the checkpoints of a segment that is not here.
    fn skip(&mut self, index: u64, from: u64, to: u64) -> Result<(), HistoryError> {
        if let Some((size, _)) = self.trusted
            && within(size, from, Some(to))
        {
            return Err(HistoryError::TrustedOutside { size, index });
        }
        let before = self.pending.len();
        self.pending
            .retain(|c| !within(checkpoint_size(c), from, Some(to)));
        self.unchecked += before - self.pending.len();
        Ok(())
    }
}

/// Whether a checkpoint of `size` belongs to the segment of entries
/// `from..to` (to the end when `None`): a checkpoint seals its last entry's
/// segment; one of size 0 (an empty log's) the first segment.
fn within(size: u64, from: u64, to: Option<u64>) -> bool {
    (size > from || (size == 0 && from == 0)) && to.is_none_or(|to| size <= to)
}

/// A stored checkpoint's size, from its name (`NNNN.note`) or, failing
/// that, its unverified text; `u64::MAX` (checked last) when neither.
pub(crate) fn checkpoint_size(stored: &StoredCheckpoint) -> u64 {
    stored
        .name
        .strip_suffix(".note")
        .and_then(|n| n.parse().ok())
        .or_else(|| segment::unverified_size(&stored.note))
        .unwrap_or(u64::MAX)
}

/// Verifies the history in `sources` from the `pinned` key, and a
/// `trusted` checkpoint note (signed by the key of its time) when given.
/// The service may rotate meanwhile: a failure while the live log's seals
/// changed is tried again.
pub fn verify(
    sources: Sources<'_>,
    pinned: &NoteVerifier,
    trusted: Option<&str>,
) -> Result<History, HistoryError> {
    let seals = |live: Option<&Path>| {
        live.and_then(|l| std::fs::read_dir(l.join(segment::SEGMENTS)).ok())
            .map_or(0, |items| items.count())
    };
    let mut attempts = 0;
    loop {
        let before = seals(sources.live);
        match verify_once(sources, pinned, trusted) {
            Err(e) if attempts < 3 && seals(sources.live) != before => {
                attempts += 1;
                say_retrying(&e);
            }
            result => return result,
        }
    }
}

/// Says on stderr why a read is being tried again.
fn say_retrying(error: &HistoryError) {
    eprintln!("deepseek-audit: the log rotated while it was read ({error}); reading it again");
}

fn verify_once(
    sources: Sources<'_>,
    pinned: &NoteVerifier,
    trusted: Option<&str>,
) -> Result<History, HistoryError> {
    let mut found = Found::default();
    if let Some(live) = sources.live {
        found.gather(live, true)?;
    }
    for dir in sources.archives {
        found.gather(dir, false)?;
    }
    let trusted = trusted
        .map(|note| {
            let stored = StoredCheckpoint {
                name: "trusted".into(),
                note: note.to_owned(),
            };
            let size = segment::unverified_size(note)
                .ok_or_else(|| HistoryError::Trusted("not a signed checkpoint note".into()))?;
            Ok::<_, HistoryError>((size, stored))
        })
        .transpose()?;
    let mut walk = Walk {
        key: pinned.clone(),
        keys: vec![pinned.clone()],
        frontier: Frontier::default(),
        last: None,
        sealed: 0,
        checked: 0,
        unchecked: 0,
        pending: std::mem::take(&mut found.checkpoints),
        trusted,
    };
    let active_path = sources.live.map(|live| live.join(ENTRIES));
    let mut segments = Vec::new();
    let mut pieces = Vec::new();
    let mut rotation_pending = false;
    let last_index = found.seals.keys().next_back().copied();
    // Segment files past the last seal are no part of the history.
    if let Some((_, paths)) = found.data.range(last_index.map_or(0, |i| i + 1)..).next() {
        return Err(HistoryError::Unsealed {
            path: paths[0].clone(),
        });
    }
    for index in last_index.map_or(0..0, |last| 0..last + 1) {
        let (path, note) = found
            .seals
            .remove(&index)
            .ok_or(HistoryError::MissingSeal { index })?;
        let seal_error = |reason: String| HistoryError::Seal {
            path: path.clone(),
            reason,
        };
        let text = walk
            .key
            .open(&note)
            .map_err(|_| seal_error(format!("not signed by {}, the key of its time", walk.key)))?;
        let seal = Seal::parse(text).map_err(|e| seal_error(e.to_string()))?;
        if seal.index != index || seal.first != walk.frontier.size() {
            return Err(seal_error(format!(
                "says segment {} from entry {}, expected segment {index} from entry {}",
                seal.index,
                seal.first,
                walk.frontier.size()
            )));
        }
        let end = seal.frontier.size();
        let mut copies = found.data.remove(&index).unwrap_or_default();
        // A crash between the last seal and the rename: the active file is
        // still that segment.
        if copies.is_empty()
            && Some(index) == last_index
            && !found.archived.contains_key(&index)
            && let Some(active) = &active_path
        {
            copies.push(active.clone());
            rotation_pending = true;
        }
        let place = match copies.split_first() {
            Some((data, others)) => {
                let (len, sha256) = check_segment(&mut walk, data, &seal)?;
                for other in others {
                    let bytes = storage::read_regular(other, segment::MAX_SEGMENT_FILE)
                        .map_err(|e| io("read", other, e))?;
                    if digest(&bytes) != seal.sha256 {
                        return Err(HistoryError::Conflict {
                            a: data.clone(),
                            b: other.clone(),
                        });
                    }
                }
                pieces.push(Piece {
                    path: data.clone(),
                    start: walk.frontier.clone(),
                    seal: Some(note.clone()),
                    len,
                    sha256,
                });
                Place::Present(data.clone())
            }
            None => {
                let record = found.archived.remove(&index).ok_or(HistoryError::Missing {
                    index,
                    first: seal.first,
                    end,
                })?;
                walk.skip(index, seal.first, end)?;
                Place::Archived(record)
            }
        };
        walk.frontier = seal.frontier.clone();
        walk.last = Some(seal.last);
        walk.sealed = end;
        walk.checked += 1;
        if let Some(next) = &seal.next_key {
            let next = NoteVerifier::parse(next).map_err(|e| seal_error(e.to_string()))?;
            next.open(&note)
                .map_err(|_| seal_error(format!("a hand-over to {next} not signed by it")))?;
            walk.key = next.clone();
            walk.keys.push(next);
        }
        segments.push(SegmentReport {
            index,
            first: seal.first,
            entries: seal.entries(),
            place,
        });
    }
    let tail = Tail {
        index: last_index.map_or(0, |i| i + 1),
        frontier: walk.frontier.clone(),
        last: walk.last,
        pending: rotation_pending,
    };
    let mut active = None;
    if let Some(path) = active_path.filter(|_| !rotation_pending) {
        // Just after a rotation's rename, before the new file, there is
        // none: an empty active segment.
        let (bytes, exists) = match storage::read_regular(&path, u64::MAX) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && last_index.is_some() => {
                (Vec::new(), false)
            }
            read => (read.map_err(|e| io("read", &path, e))?, true),
        };
        let first = walk.frontier.size();
        let segment_error = |source| HistoryError::Segment {
            path: path.clone(),
            source,
        };
        let sealings = walk.sealings(first, None).map_err(segment_error)?;
        let end = verify::verify_segment(&bytes, &walk.frontier, walk.last, sealings)
            .map_err(segment_error)?;
        walk.sealed = walk.sealed.max(end.sealed);
        active = Some((first, end.frontier.size() - first));
        let start = std::mem::replace(&mut walk.frontier, end.frontier);
        if exists {
            pieces.push(Piece {
                path,
                start,
                seal: None,
                len: bytes.len(),
                sha256: digest(&bytes),
            });
        }
    } else if rotation_pending {
        active = Some((walk.frontier.size(), 0));
    }
    // What is left lies beyond the end: the log was cut short.
    if let Some(beyond) = walk.pending.first() {
        return Err(HistoryError::Segment {
            path: sources.live.map_or_else(PathBuf::new, |l| l.join(ENTRIES)),
            source: Tamper::Truncated {
                name: beyond.name.clone(),
                size: checkpoint_size(beyond),
                entries: walk.frontier.size(),
            },
        });
    }
    if let Some((size, _)) = walk.trusted {
        return Err(HistoryError::Trusted(format!(
            "it covers {size} entries but the history has only {}: the log was truncated",
            walk.frontier.size()
        )));
    }
    let entries = walk.frontier.size();
    Ok(History {
        segments,
        active,
        entries,
        checkpoints: walk.checked,
        unchecked: walk.unchecked,
        sealed: walk.sealed,
        unsealed: entries - walk.sealed,
        keys: walk.keys,
        pieces,
        tail,
    })
}

/// Verifies a present segment against its seal: the file's digest, then
/// its entries from the walk's state, with the checkpoints of its range.
/// Returns the length and digest of what was verified.
fn check_segment(walk: &mut Walk, data: &Path, seal: &Seal) -> Result<(usize, Hash), HistoryError> {
    let bytes =
        storage::read_regular(data, segment::MAX_SEGMENT_FILE).map_err(|e| io("read", data, e))?;
    let sha256 = digest(&bytes);
    let segment_error = |source| HistoryError::Segment {
        path: data.to_owned(),
        source,
    };
    let sealings = walk
        .sealings(seal.first, Some(seal.frontier.size()))
        .map_err(segment_error)?;
    let end = verify::verify_segment(&bytes, &walk.frontier, walk.last, sealings)
        .map_err(segment_error)?;
    if end.frontier != seal.frontier || end.last != Some(seal.last) || sha256 != seal.sha256 {
        return Err(HistoryError::Replaced {
            path: data.to_owned(),
            reason: format!(
                "its {} entries do not match the seal of segment {} ({} entries, SHA-256 {})",
                end.frontier.size() - seal.first,
                seal.index,
                seal.entries(),
                deepseek_integrity::digest::hex(&seal.sha256)
            ),
        });
    }
    Ok((bytes.len(), sha256))
}
