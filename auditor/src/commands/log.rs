//! `deepseek-audit log`: verify, show, export, prove and check-proof, all
//! reading the log in place (the service may be running) and writing
//! nothing.

use std::path::Path;
use std::process::ExitCode;

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::entry::{self, Entry};
use crate::exit::{self, fail};
use crate::merkle;
use crate::note::{NoteError, NoteVerifier};
use crate::proof::InclusionProof;
use crate::service::{ServiceConfig, VerifierError};
use crate::storage::{self, StorageError};
use crate::verify::{self, Tamper};

/// `log verify`: the entries, the tree, every checkpoint and, when given,
/// a checkpoint kept elsewhere.
pub(crate) fn verify_log(
    config_path: &Path,
    key: Option<&str>,
    trusted: Option<&Path>,
) -> ExitCode {
    let config = match ServiceConfig::load(config_path) {
        Ok(config) => config,
        Err(e) => return fail(exit::CONFIG, &e),
    };
    let verifier = match config.verifier_or(key) {
        Ok(verifier) => verifier,
        Err(e) => return fail(exit::CONFIG, &e),
    };
    let (log, checkpoints) = match storage::read_log(&config.log_dir) {
        Ok(read) => read,
        Err(e) => return fail(exit::IO, &e),
    };
    let trusted = match trusted.map(|path| (path, trusted_checkpoint(path, &verifier))) {
        Some((_, Ok(checkpoint))) => Some(checkpoint),
        Some((path, Err(e))) => {
            return fail(exit::NOT_VERIFIED, &format!("{}: {e}", path.display()));
        }
        None => None,
    };
    match verify::verify(&log, &checkpoints, &verifier, trusted.as_ref()) {
        Ok(v) => {
            println!(
                "log verified: {} entries, {} checkpoints, sealed up to {}, unsealed tail {}",
                v.entries, v.checkpoints, v.sealed, v.unsealed
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(exit::NOT_VERIFIED, &e),
    }
}

/// Why `--trusted-checkpoint` cannot be used (shown after the file's name).
#[derive(Debug, thiserror::Error)]
enum TrustedError {
    #[error(transparent)]
    Read(#[from] std::io::Error),
    #[error(transparent)]
    Note(#[from] NoteError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

fn trusted_checkpoint(path: &Path, verifier: &NoteVerifier) -> Result<Checkpoint, TrustedError> {
    let note = std::fs::read_to_string(path)?;
    Ok(Checkpoint::parse(verifier.open(&note)?)?)
}

/// `log show` (one line per entry) or `log export` (a JSON array).
pub(crate) fn show(config_path: &Path, export: bool) -> ExitCode {
    let config = match ServiceConfig::load(config_path) {
        Ok(config) => config,
        Err(e) => return fail(exit::CONFIG, &e),
    };
    let (log, _) = match storage::read_log(&config.log_dir) {
        Ok(read) => read,
        Err(e) => return fail(exit::IO, &e),
    };
    let mut entries = Vec::new();
    for (index, line) in log
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        match Entry::decode(line) {
            Ok(entry) => entries.push(entry),
            Err(e) => return fail(exit::NOT_VERIFIED, &format!("line {}: {e}", index + 1)),
        }
    }
    if export {
        println!(
            "{}",
            serde_json::to_string_pretty(&entries).expect("entries serialize")
        );
    } else {
        for e in &entries {
            println!("{}", show_line(e).trim_end());
        }
    }
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
pub(crate) fn prove(config_path: &Path, seq: u64) -> ExitCode {
    let config = match ServiceConfig::load(config_path) {
        Ok(config) => config,
        Err(e) => return fail(exit::CONFIG, &e),
    };
    match proof_json(&config, seq) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(exit::NOT_VERIFIED, &e),
    }
}

/// Why `log prove` printed no proof.
#[derive(Debug, thiserror::Error)]
enum ProveError {
    #[error(transparent)]
    Verifier(#[from] VerifierError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Tamper(#[from] Tamper),
    #[error("the log has no entry {0}")]
    NoEntry(u64),
    #[error("entry {0} is not sealed by a checkpoint yet")]
    Unsealed(u64),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// The inclusion proof of entry `seq` against the latest checkpoint that
/// seals it, as JSON, from a log that verifies.
fn proof_json(config: &ServiceConfig, seq: u64) -> Result<String, ProveError> {
    let verifier = config.verifier_or(None)?;
    let (log, checkpoints) = storage::read_log(&config.log_dir)?;
    verify::verify(&log, &checkpoints, &verifier, None)?;
    let lines: Vec<&[u8]> = log
        .strip_suffix(b"\n")
        .unwrap_or(&log)
        .split(|&b| b == b'\n')
        .collect();
    let entry = lines
        .get(usize::try_from(seq).unwrap_or(usize::MAX))
        .ok_or(ProveError::NoEntry(seq))?;
    let leaves: Vec<merkle::Hash> = lines.iter().map(|l| merkle::leaf_hash(l)).collect();
    let sealing = checkpoints
        .iter()
        .filter_map(|c| Some((Checkpoint::parse(verifier.open(&c.note).ok()?).ok()?, c)))
        .filter(|(c, _)| c.size > seq)
        .max_by_key(|(c, _)| c.size)
        .ok_or(ProveError::Unsealed(seq))?;
    let proof = InclusionProof::build(entry, seq, &leaves, sealing.0.size, &sealing.1.note);
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
