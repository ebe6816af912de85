//! `deepseek-audit log`: verify, show, export, prove and check-proof, all
//! reading the log in place (the service may be running), with the
//! archives given, and writing nothing.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::checkpoint::Checkpoint;
use crate::entry::{self, Entry};
use crate::exit::{self, fail};
use crate::history::{self, History, HistoryError, Place, Sources};
use crate::merkle;
use crate::proof::InclusionProof;
use crate::service::{ServiceConfig, VerifierError};
use crate::storage::{self, StorageError};
use deepseek_integrity::note::NoteVerifier;

/// Where the log commands read the history from: the configuration (for
/// the live directory and the pinned key) unless `--key` and
/// `--archive-only` make it unnecessary, and the archives given.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reading<'a> {
    pub config: &'a Path,
    pub key: Option<&'a str>,
    pub archives: &'a [PathBuf],
    pub archive_only: bool,
}

/// Why a log command could not read a verified history.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error(transparent)]
    Config(#[from] crate::service::ConfigError),
    #[error(transparent)]
    Verifier(#[from] VerifierError),
    #[error("{}: {source}", path.display())]
    Trusted {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    History(#[from] HistoryError),
}

impl ReadError {
    pub(crate) fn code(&self) -> u8 {
        match self {
            Self::Config(_) | Self::Verifier(_) => exit::CONFIG,
            Self::Trusted { .. }
            | Self::History(HistoryError::Storage(_) | HistoryError::Changed(_)) => exit::IO,
            Self::History(_) => exit::NOT_VERIFIED,
        }
    }
}

impl Reading<'_> {
    /// The pinned key and the live directory.
    pub(crate) fn setup(&self) -> Result<(NoteVerifier, Option<PathBuf>), ReadError> {
        if self.archive_only
            && let Some(key) = self.key
        {
            return Ok((NoteVerifier::parse(key).map_err(VerifierError::from)?, None));
        }
        let config = ServiceConfig::load(self.config)?;
        let live = (!self.archive_only).then(|| config.log_dir.clone());
        Ok((config.verifier_or(self.key)?, live))
    }

    /// The verified history, with a trusted checkpoint note when given.
    pub(crate) fn history(&self, trusted: Option<&Path>) -> Result<History, ReadError> {
        let (pinned, live) = self.setup()?;
        let trusted = trusted
            .map(|path| {
                storage::read_note(path).map_err(|source| ReadError::Trusted {
                    path: path.to_owned(),
                    source,
                })
            })
            .transpose()?;
        let sources = Sources {
            live: live.as_deref(),
            archives: self.archives,
        };
        Ok(history::verify(sources, &pinned, trusted.as_deref())?)
    }
}

/// `log verify`: every segment found, the tree, every checkpoint with the
/// key of its time and, when given, a checkpoint kept elsewhere; then
/// what was checked, segment by segment.
pub(crate) fn verify_log(reading: &Reading<'_>, trusted: Option<&Path>) -> ExitCode {
    let v = match reading.history(trusted) {
        Ok(history) => history,
        Err(e) => return fail(e.code(), &e),
    };
    for segment in &v.segments {
        let range = format!(
            "segment {} (entries {}..{}, {})",
            segment.index,
            segment.first,
            segment.first + segment.entries,
            segment.entries
        );
        match &segment.place {
            Place::Present(path) => println!("{range}: verified in {}", path.display()),
            Place::Archived(record) => println!("{range}: not here, {record}"),
        }
    }
    if let Some((first, entries)) = v.active {
        println!(
            "active segment (entries {first}..{}, {entries}): verified",
            first + entries
        );
    }
    let keys: Vec<String> = v.keys.iter().map(ToString::to_string).collect();
    println!("keys, first to current: {}", keys.join(" -> "));
    let unchecked = if v.unchecked > 0 {
        format!(" ({} more with entries not here)", v.unchecked)
    } else {
        String::new()
    };
    println!(
        "log verified: {} entries, {} checkpoints{unchecked}, sealed up to {}, unsealed tail {}",
        v.entries, v.checkpoints, v.sealed, v.unsealed
    );
    ExitCode::SUCCESS
}

/// `log show` (one line per entry) or `log export` (a JSON array), from a
/// history that verifies, one segment at a time.
pub(crate) fn show(reading: &Reading<'_>, export: bool) -> ExitCode {
    let history = match reading.history(None) {
        Ok(history) => history,
        Err(e) => return fail(e.code(), &e),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut first = true;
    if export {
        let _ = out.write_all(b"[");
    }
    for piece in &history.pieces {
        let bytes = match piece.read() {
            Ok(bytes) => bytes,
            Err(e) => {
                let e = ReadError::from(e);
                return fail(e.code(), &e);
            }
        };
        for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            // Verified just now: every line decodes.
            let Ok(entry) = Entry::decode(line) else {
                return fail(
                    exit::NOT_VERIFIED,
                    &HistoryError::Changed(piece.path.clone()),
                );
            };
            let written = if export {
                let separator = if std::mem::take(&mut first) {
                    "\n"
                } else {
                    ",\n"
                };
                let json = serde_json::to_string_pretty(&entry).expect("entries serialize");
                write!(out, "{separator}{json}")
            } else {
                writeln!(out, "{}", show_line(&entry).trim_end())
            };
            if written.is_err() {
                // The reader went away (a closed pipe): nothing to add.
                return ExitCode::SUCCESS;
            }
        }
    }
    if export {
        let _ = out.write_all(if first { b"]\n" } else { b"\n]\n" });
    }
    let _ = out.flush();
    ExitCode::SUCCESS
}

/// Time, event, peer, model and status (`exit=N` for an integrity check).
fn show_line(e: &Entry) -> String {
    let peer = e
        .peer
        .as_ref()
        .map_or_else(String::new, |p| format!("uid={} pid={}", p.uid, p.pid));
    // An integrity check has no status: its exit code instead.
    let status = e.status.map_or_else(
        || {
            e.details
                .get("exit_code")
                .filter(|_| e.event == entry::Event::IntegrityCheck)
                .map_or_else(String::new, |c| format!("exit={c}"))
        },
        |s| s.to_string(),
    );
    format!(
        "{:>8} {}.{:09} {:<18} {:<18} {:<12} {}",
        e.seq,
        e.time_ns / 1_000_000_000,
        e.time_ns % 1_000_000_000,
        serde_json::to_value(e.event)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        peer,
        e.model.clone().unwrap_or_default(),
        status
    )
}

/// `log prove`: the proof of entry `seq`, as JSON on stdout.
pub(crate) fn prove(reading: &Reading<'_>, seq: u64) -> ExitCode {
    match proof_json(reading, seq) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(ProveError::Read(e)) => fail(e.code(), &e),
        Err(e) => fail(exit::NOT_VERIFIED, &e),
    }
}

/// Why `log prove` printed no proof.
#[derive(Debug, thiserror::Error)]
enum ProveError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("no segment here holds entry {0} (pass its archive with --archive)")]
    NoEntry(u64),
    #[error("entry {0} is not sealed by a checkpoint yet")]
    Unsealed(u64),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// The inclusion proof of entry `seq` against the seal of its segment or,
/// in the active segment, the latest checkpoint that covers it, from a
/// history that verifies.
fn proof_json(reading: &Reading<'_>, seq: u64) -> Result<String, ProveError> {
    let history = reading.history(None)?;
    let piece = history
        .pieces
        .iter()
        .rev()
        .find(|piece| piece.start.size() <= seq)
        .ok_or(ProveError::NoEntry(seq))?;
    let bytes = piece.read().map_err(ReadError::from)?;
    let lines: Vec<&[u8]> = bytes
        .strip_suffix(b"\n")
        .unwrap_or(&bytes)
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let entry = lines
        .get(usize::try_from(seq - piece.start.size()).unwrap_or(usize::MAX))
        .ok_or(ProveError::NoEntry(seq))?;
    let leaves: Vec<merkle::Hash> = lines.iter().map(|l| merkle::leaf_hash(l)).collect();
    let end = piece.start.size() + leaves.len() as u64;
    let note = match &piece.seal {
        Some(seal) => Some((end, seal.clone())),
        // The active segment (in the live log, whose directory holds it):
        // the latest checkpoint of it, signed by the current key.
        None => {
            let key = history.keys.last().expect("the pinned key at least");
            let stored = match piece.path.parent() {
                Some(live) => storage::read_checkpoints(live)?,
                None => Vec::new(),
            };
            stored
                .into_iter()
                .filter_map(|c| {
                    let checkpoint = Checkpoint::parse(key.open(&c.note).ok()?).ok()?;
                    Some((checkpoint.size, c.note))
                })
                .filter(|(size, _)| *size > seq && *size <= end)
                .max_by_key(|(size, _)| *size)
        }
    };
    let (size, note) = note.ok_or(ProveError::Unsealed(seq))?;
    let tree = merkle::Partial {
        start: &piece.start,
        leaves: &leaves,
    };
    let path = tree
        .inclusion_proof(seq, size)
        .expect("the entry and the checkpoint are in the segment");
    let proof = InclusionProof::new(entry, seq, &path, &note);
    Ok(serde_json::to_string_pretty(&proof)?)
}

/// `log check-proof`: needs only the verifier key (`--key`, else the
/// configuration's), not the log.
pub(crate) fn check_proof(config_path: &Path, file: &Path, key: Option<&str>) -> ExitCode {
    let read = if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map(|_| text)
    } else {
        std::fs::read_to_string(file)
    };
    let text = match read {
        Ok(text) => text,
        Err(e) => {
            return fail(
                exit::NOT_VERIFIED,
                &format!("cannot read {}: {e}", file.display()),
            );
        }
    };
    let verifier = match key {
        Some(key) => NoteVerifier::parse(key).map_err(|e| fail(exit::CONFIG, &e)),
        None => ServiceConfig::load(config_path)
            .map_err(|e| fail(exit::CONFIG, &e))
            .and_then(|c| c.verifier_or(None).map_err(|e| fail(exit::CONFIG, &e))),
    };
    let verifier = match verifier {
        Ok(verifier) => verifier,
        Err(code) => return code,
    };
    let proof = match serde_json::from_str::<InclusionProof>(&text) {
        Ok(proof) => proof,
        Err(e) => return fail(exit::NOT_VERIFIED, &e),
    };
    match proof.check(&verifier) {
        Ok(checkpoint) => {
            println!(
                "entry {} is included in the {} entries of {} signed by {}",
                proof.seq,
                checkpoint.size,
                checkpoint.origin,
                verifier.name()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(exit::NOT_VERIFIED, &e),
    }
}
