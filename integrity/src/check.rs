//! The check itself (the signed database against the system) and its
//! reports. `deepseek-integrity check` and `update` run it, and so does
//! `deepseek-audit integrity-check`, which records the result in the audit
//! log: the check the daily timer records is the one an operator runs.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde_json::json;

use crate::compare::{self, Differences};
use crate::config::{Config, ConfigError};
use crate::database::{self, DatabaseError};
use crate::entry::Entry;
use crate::exit::Exit;
use crate::scan::{self, ScanError};

/// What a check found.
#[derive(Debug)]
pub struct Checked {
    /// How many entries the database holds.
    pub recorded: usize,
    /// The system as scanned: what `update` signs.
    pub current: Vec<Entry>,
    pub differences: Differences,
}

/// Why a check could not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error("cannot install a signal handler: {0}")]
    Signal(std::io::Error),
}

impl CheckError {
    /// The exit code `check` ends with (docs/guide/exit-codes.md).
    pub fn exit(&self) -> Exit {
        match self {
            Self::Config(_) => Exit::Config,
            Self::Database(e) if e.is_signature() => Exit::Signature,
            Self::Database(_) => Exit::Database,
            Self::Scan(ScanError::Interrupted) => Exit::Interrupted,
            Self::Scan(_) | Self::Signal(_) => Exit::Io,
        }
    }
}

/// A flag that SIGINT and SIGTERM set; the scan then stops with
/// [`ScanError::Interrupted`] (exit 25) and nothing is written.
pub fn interrupt_on_signals() -> Result<Arc<AtomicBool>, CheckError> {
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&interrupted))
            .map_err(CheckError::Signal)?;
    }
    Ok(interrupted)
}

/// Loads the database and verifies its signature with the pinned verifier
/// key (before any entry is parsed), scans the system and compares.
pub fn check(
    config: &Config,
    options: &scan::Options,
    interrupted: &AtomicBool,
) -> Result<Checked, CheckError> {
    let recorded = database::load(&config.database, config.verifier())?;
    let current = scan::scan(config, options, interrupted)?;
    let differences = compare::compare(&recorded, &current);
    Ok(Checked {
        recorded: recorded.len(),
        current,
        differences,
    })
}

/// The exit code a report states: the summed code for `check`; `update`
/// accepts the differences, so it exits 0 whatever they are.
fn code(command: &str, d: &Differences) -> u8 {
    if command == "update" { 0 } else { d.code() }
}

fn verdict(d: &Differences) -> &'static str {
    if d.is_empty() {
        "no differences"
    } else {
        "differences found"
    }
}

/// The JSON report exactly as `--format json` prints it (pretty, ending in
/// a newline), so that its SHA-256 can be compared with a later run's.
pub fn json(command: &str, config: &Config, recorded: usize, d: &Differences) -> String {
    let pinned = config.verifier();
    let value = json!({
        "command": command,
        "verdict": verdict(d),
        "exit_code": code(command, d),
        "database": config.database,
        "signed_by": pinned.id(),
        "verifier_key": pinned.to_string(),
        "entries": recorded,
        "summary": {"added": d.added.len(), "removed": d.removed.len(), "changed": d.changed.len()},
        "added": d.added,
        "removed": d.removed,
        "changed": d.changed,
    });
    serde_json::to_string_pretty(&value).expect("serializable") + "\n"
}

/// The human report (AIDE-like): a summary line, then every added, removed
/// and changed entry, each change as `old -> new`.
pub fn human(command: &str, config: &Config, recorded: usize, d: &Differences) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "{command}: {}: {} added, {} removed, {} changed ({recorded} entries in {}, signed by {})",
        verdict(d),
        d.added.len(),
        d.removed.len(),
        d.changed.len(),
        config.database.display(),
        config.verifier().id()
    );
    for (title, entries) in [("Added", &d.added), ("Removed", &d.removed)] {
        if !entries.is_empty() {
            let _ = writeln!(out, "\n{title}:");
            for entry in entries.iter() {
                let _ = writeln!(out, "  {:<7} {}", entry.kind.name(), entry.path.display());
            }
        }
    }
    if !d.changed.is_empty() {
        let _ = writeln!(out, "\nChanged:");
        for changed in &d.changed {
            let _ = writeln!(out, "  {}", changed.path);
            for change in &changed.changes {
                let _ = writeln!(
                    out,
                    "      {:<9} {} -> {}",
                    change.attribute, change.old, change.new
                );
            }
        }
    }
    out
}

/// How `check` scans: `jobs` hashing threads (default: one per CPU), and a
/// progress bar on stderr for a human report on a terminal.
pub fn scan_options(jobs: Option<usize>, human: bool) -> scan::Options {
    use std::io::IsTerminal;
    scan::Options {
        jobs: jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        progress: human && std::io::stderr().is_terminal(),
    }
}
