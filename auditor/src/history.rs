//! The whole history of a log: its sealed segments, wherever they are (the
//! live directory, archives), and the active segment, verified as one
//! tree. The walk starts from the first pinned key and follows the
//! hand-over seals, so every checkpoint is checked with the key of its
//! time. A segment in no directory given is accepted only when `log
//! archive` recorded where it went; a removed or replaced one is named.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::checkpoint::Checkpoint;
use crate::merkle::{Frontier, Hash};
use crate::note::NoteVerifier;
use crate::segment::{self, Kind, Seal};
use crate::storage::{self, ENTRIES, StorageError};
use crate::verify::{self, Sealing, StoredCheckpoint, Tamper};

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
}

/// An entry file of the history that was verified.
#[derive(Debug, Clone)]
pub struct Piece {
    pub path: PathBuf,
    /// The tree before its first entry.
    pub(crate) start: Frontier,
    /// Its seal's note; `None` for the active segment.
    pub seal: Option<String>,
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
    #[error("{}: {length} bytes, over the {limit} this file can have", path.display())]
    TooLarge {
        path: PathBuf,
        length: u64,
        limit: u64,
    },
}

/// The files of every source, gathered by segment index.
#[derive(Debug, Default)]
struct Found {
    seals: BTreeMap<u64, (PathBuf, String)>,
    data: BTreeMap<u64, PathBuf>,
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

/// Reads a file whole, refusing one over `limit` bytes unread.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, HistoryError> {
    let length = std::fs::metadata(path)
        .map_err(|e| io("read", path, e))?
        .len();
    if length > limit {
        return Err(HistoryError::TooLarge {
            path: path.to_owned(),
            length,
            limit,
        });
    }
    std::fs::read(path).map_err(|e| io("read", path, e))
}

/// A seal or an archive record, as text.
fn read_small(path: &Path) -> Result<String, HistoryError> {
    String::from_utf8(read_bounded(path, segment::MAX_SEAL_BYTES)?).map_err(|_| {
        HistoryError::Seal {
            path: path.to_owned(),
            reason: "not UTF-8 text".into(),
        }
    })
}

impl Found {
    fn gather(&mut self, dir: &Path) -> Result<(), HistoryError> {
        let segments = dir.join(segment::SEGMENTS);
        let items = match std::fs::read_dir(&segments) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io("read", &segments, e)),
            Ok(items) => Some(items),
        };
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
                Kind::Data => {
                    self.data.entry(index).or_insert(path);
                }
                Kind::Archived => {
                    let record = read_small(&path)?;
                    self.archived.insert(index, record.trim().to_owned());
                }
            }
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
        let inside = |size: u64| (size > from || size == 0) && to.is_none_or(|to| size <= to);
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
            && size > from
            && size <= to
        {
            return Err(HistoryError::TrustedOutside { size, index });
        }
        let before = self.pending.len();
        self.pending.retain(|c| {
            let size = checkpoint_size(c);
            size <= from || size > to
        });
        self.unchecked += before - self.pending.len();
        Ok(())
    }
}

/// A stored checkpoint's size, from its name (`NNNN.note`) or, failing
/// that, its unverified text; `u64::MAX` (checked last) when neither.
fn checkpoint_size(stored: &StoredCheckpoint) -> u64 {
    stored
        .name
        .strip_suffix(".note")
        .and_then(|n| n.parse().ok())
        .or_else(|| {
            segment::unverified_text(&stored.note)
                .and_then(|t| Checkpoint::parse(t).ok())
                .map(|c| c.size)
        })
        .unwrap_or(u64::MAX)
}

/// Verifies the history in `sources` from the `pinned` key, and a
/// `trusted` checkpoint note (signed by the key of its time) when given.
pub fn verify(
    sources: Sources<'_>,
    pinned: &NoteVerifier,
    trusted: Option<&str>,
) -> Result<History, HistoryError> {
    let mut found = Found::default();
    for dir in sources
        .live
        .iter()
        .copied()
        .chain(sources.archives.iter().map(PathBuf::as_path))
    {
        found.gather(dir)?;
    }
    let trusted = trusted
        .map(|note| {
            let stored = StoredCheckpoint {
                name: "trusted".into(),
                note: note.to_owned(),
            };
            let size = segment::unverified_text(note)
                .and_then(|t| Checkpoint::parse(t).ok())
                .map(|c| c.size)
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
    let mut segments = Vec::new();
    let mut pieces = Vec::new();
    let last_index = found.seals.keys().next_back().copied();
    for index in 0..=last_index.unwrap_or(0) {
        if last_index.is_none() {
            break;
        }
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
        let place = match found.data.remove(&index) {
            Some(data) => {
                check_segment(&mut walk, &data, &seal)?;
                pieces.push(Piece {
                    path: data.clone(),
                    start: walk.frontier.clone(),
                    seal: Some(note.clone()),
                });
                Place::Present(data)
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
    let mut active = None;
    if let Some(live) = sources.live {
        let path = live.join(ENTRIES);
        let bytes = std::fs::read(&path).map_err(|e| io("read", &path, e))?;
        let first = walk.frontier.size();
        let sealings = walk
            .sealings(first, None)
            .map_err(|source| HistoryError::Segment {
                path: path.clone(),
                source,
            })?;
        let end = verify::verify_segment(&bytes, &walk.frontier, walk.last, sealings).map_err(
            |source| HistoryError::Segment {
                path: path.clone(),
                source,
            },
        )?;
        walk.sealed = walk.sealed.max(end.sealed);
        active = Some((first, end.frontier.size() - first));
        pieces.push(Piece {
            path,
            start: std::mem::replace(&mut walk.frontier, end.frontier),
            seal: None,
        });
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
    })
}

/// Verifies a present segment against its seal: the file's digest, then
/// its entries from the walk's state, with the checkpoints of its range.
fn check_segment(walk: &mut Walk, data: &Path, seal: &Seal) -> Result<(), HistoryError> {
    let bytes = read_bounded(data, segment::MAX_SEGMENT_FILE)?;
    let digest: Hash = <sha2::Sha256 as sha2::Digest>::digest(&bytes).into();
    let segment_error = |source| HistoryError::Segment {
        path: data.to_owned(),
        source,
    };
    let sealings = walk
        .sealings(seal.first, Some(seal.frontier.size()))
        .map_err(segment_error)?;
    let end = verify::verify_segment(&bytes, &walk.frontier, walk.last, sealings)
        .map_err(segment_error)?;
    if end.frontier != seal.frontier || end.last != Some(seal.last) || digest != seal.sha256 {
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
    Ok(())
}
