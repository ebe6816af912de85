//! Log segments and their seals. The log rotates: the active segment
//! (`entries.log`) is sealed and renamed to `segments/NNNNNNNN.log`, and a
//! new one starts. The tree and the entry chain run on across segments;
//! each seal is a signed checkpoint of the whole tree at the segment's end
//! with extension lines that make the segment verifiable alone: its index
//! and first entry, the file's SHA-256, the last leaf (the next segment's
//! first `prev`) and the tree's frontier (enough to compute every later
//! root without the earlier leaves). A hand-over seal names the next key
//! and carries its signature too.
//!
//! Seals stay in the live directory when their segment is archived, so the
//! chain of seals and keys is always whole from segment 0.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use deepseek_integrity::digest::{hex, unhex32};

use crate::checkpoint::Checkpoint;
use crate::merkle::{Frontier, Hash};
use deepseek_integrity::note::NoteVerifier;

/// The directory of sealed segments, in a live log or an archive.
pub(crate) const SEGMENTS: &str = "segments";
/// The directory of checkpoint notes, in a live log or an archive.
pub(crate) const CHECKPOINTS: &str = "checkpoints";
/// A seal, an archive record or a checkpoint is a few kilobytes; anything
/// larger is refused unread.
pub(crate) const MAX_SEAL_BYTES: u64 = 16 << 10;
/// The largest `segment_max_bytes`.
pub(crate) const MAX_SEGMENT_BYTES: u64 = 1 << 30;
/// The largest segment file verification reads: `MAX_SEGMENT_BYTES` and a
/// last batch over it. A larger one (on an archive medium, say) is refused
/// unread rather than filling memory.
pub(crate) const MAX_SEGMENT_FILE: u64 = 2 * MAX_SEGMENT_BYTES;

/// A segment's files, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The entries.
    Data,
    /// The signed seal.
    Seal,
    /// The record `log archive` leaves when it moves the entries out.
    Archived,
}

impl Kind {
    fn extension(self) -> &'static str {
        match self {
            Self::Data => "log",
            Self::Seal => "seal",
            Self::Archived => "archived",
        }
    }
}

/// `DIR/segments/NNNNNNNN.{log,seal,archived}`.
pub(crate) fn path(dir: &Path, index: u64, kind: Kind) -> PathBuf {
    dir.join(SEGMENTS)
        .join(format!("{index:08}.{}", kind.extension()))
}

/// A segment file's index and kind, from its name; `None` for anything
/// else (temporary files included).
pub(crate) fn parse_name(name: &str) -> Option<(u64, Kind)> {
    let (number, extension) = name.split_once('.')?;
    let index: u64 = number.parse().ok()?;
    // Only the name `path` gives: one file per index and kind.
    if format!("{index:08}") != number || index > MAX_INDEX {
        return None;
    }
    let kind = [Kind::Data, Kind::Seal, Kind::Archived]
        .into_iter()
        .find(|k| k.extension() == extension)?;
    Some((index, kind))
}

/// Far more segments or entries than any log reaches, and far from
/// overflowing: a seal claiming more is refused.
const MAX_INDEX: u64 = 1 << 40;
const MAX_ENTRIES: u64 = 1 << 56;

/// A seal: the checkpoint at the segment's end and what it adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seal {
    pub origin: String,
    pub index: u64,
    /// The segment's first entry.
    pub first: u64,
    /// SHA-256 of the segment's file.
    pub sha256: Hash,
    /// The leaf hash of its last entry.
    pub last: Hash,
    /// The tree after it (its size is the checkpoint's).
    pub frontier: Frontier,
    /// The key that signs from the next segment on (a hand-over).
    pub next_key: Option<String>,
}

/// Why a seal's text is not a seal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed seal: {0}")]
pub(crate) struct SealError(&'static str);

impl Seal {
    /// Entries in the segment.
    pub(crate) fn entries(&self) -> u64 {
        self.frontier.size() - self.first
    }

    pub(crate) fn checkpoint(&self) -> Checkpoint {
        let frontier: Vec<String> = self
            .frontier
            .hashes()
            .iter()
            .map(|h| BASE64.encode(h))
            .collect();
        let mut extensions = vec![
            format!("segment {} {}", self.index, self.first),
            format!("sha256 {}", hex(&self.sha256)),
            format!("last {}", hex(&self.last)),
            format!("frontier {}", frontier.join(" ")),
        ];
        extensions.extend(self.next_key.iter().map(|k| format!("next-key {k}")));
        Checkpoint {
            origin: self.origin.clone(),
            size: self.frontier.size(),
            root: self.frontier.root(),
            extensions,
        }
    }

    /// The note text to sign.
    pub(crate) fn text(&self) -> String {
        self.checkpoint().text()
    }

    /// Reads a seal from a (verified) note's text. The root must be the
    /// frontier's, and the segment not empty.
    pub(crate) fn parse(text: &str) -> Result<Self, SealError> {
        let checkpoint = Checkpoint::parse(text).map_err(|_| SealError("not a checkpoint"))?;
        let mut lines = checkpoint.extensions.iter();
        let mut field = |name: &'static str| {
            lines
                .next()
                .and_then(|l| l.strip_prefix(name))
                .and_then(|l| l.strip_prefix(' '))
                .ok_or(SealError(name))
        };
        let (index, first) = field("segment")?
            .split_once(' ')
            .and_then(|(i, f)| Some((i.parse().ok()?, f.parse().ok()?)))
            .ok_or(SealError("segment: expected the index and the first entry"))?;
        let sha256 = unhex32(field("sha256")?).ok_or(SealError("sha256: not 64 hex digits"))?;
        let last = unhex32(field("last")?).ok_or(SealError("last: not 64 hex digits"))?;
        let hashes = field("frontier")?
            .split(' ')
            .map(|h| BASE64.decode(h).ok().and_then(|b| Hash::try_from(b).ok()))
            .collect::<Option<Vec<Hash>>>()
            .ok_or(SealError("frontier: not base64 hashes"))?;
        let frontier = Frontier::from_parts(checkpoint.size, hashes)
            .ok_or(SealError("frontier: not one hash per bit of the size"))?;
        let next_key = match lines.next() {
            None => None,
            Some(line) => {
                let key = line
                    .strip_prefix("next-key ")
                    .ok_or(SealError("an unknown extension line"))?;
                NoteVerifier::parse(key).map_err(|_| SealError("next-key: not a verifier key"))?;
                Some(key.to_owned())
            }
        };
        if lines.next().is_some() {
            return Err(SealError("an unknown extension line"));
        }
        if frontier.root() != checkpoint.root {
            return Err(SealError("the root is not the frontier's"));
        }
        if first >= checkpoint.size {
            return Err(SealError("an empty segment"));
        }
        if index > MAX_INDEX || checkpoint.size > MAX_ENTRIES {
            return Err(SealError("an index or a size out of range"));
        }
        Ok(Self {
            origin: checkpoint.origin,
            index,
            first,
            sha256,
            last,
            frontier,
            next_key,
        })
    }
}

/// The text of a note before its signatures, unverified: to read where a
/// log stands before its history is verified.
pub(crate) fn unverified_text(note: &str) -> Option<&str> {
    note.rfind("\n\n").map(|split| &note[..=split])
}

/// The tree size a checkpoint note claims, unverified: to know which key
/// and which segment to check it with.
pub(crate) fn unverified_size(note: &str) -> Option<u64> {
    unverified_text(note)
        .and_then(|text| Checkpoint::parse(text).ok())
        .map(|checkpoint| checkpoint.size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_round_trips_and_malformed_ones_are_refused() {
        let mut frontier = Frontier::default();
        (0..11u8).for_each(|i| frontier.push([i; 32]));
        let seal = Seal {
            origin: "deepseek-audit/test".into(),
            index: 2,
            first: 7,
            sha256: [1; 32],
            last: [10; 32],
            frontier,
            next_key: None,
        };
        let text = seal.text();
        assert_eq!(Seal::parse(&text), Ok(seal.clone()));
        assert_eq!(seal.entries(), 4);
        let bad_root = text.replacen(
            &BASE64.encode(seal.frontier.root()),
            &BASE64.encode([0; 32]),
            1,
        );
        assert_eq!(
            Seal::parse(&bad_root),
            Err(SealError("the root is not the frontier's"))
        );
        let short = text.replacen(
            &format!(" {}", BASE64.encode(seal.frontier.hashes()[2])),
            "",
            1,
        );
        assert!(Seal::parse(&short).is_err());
        assert!(Seal::parse(&format!("{text}extra\n")).is_err());
        assert!(Seal::parse(&text.replace("segment 2 7", "segment 2 11")).is_err());
        assert_eq!(parse_name("00000002.seal"), Some((2, Kind::Seal)));
        assert_eq!(parse_name(".00000002.seal.new"), None);
        assert_eq!(parse_name("2.log"), None);
    }
}
