//! `deepseek-integrity`: AIDE-style integrity checking for the appliance.
//! A signed, deterministic database of the hashes and attributes of model
//! files, binaries and configuration, and a fast parallel check against it.
//!
//! The daemon uses this library to refuse models that do not match the
//! database; the binary is a thin CLI over it.
#![forbid(unsafe_code)]

pub mod compare;
pub mod config;
pub mod database;
pub mod digest;
pub mod entry;
pub mod exit;
pub mod keys;
pub mod scan;
pub mod verify;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

use compare::Differences;
use config::{Config, DEFAULT_CONFIG_PATH};
use entry::Entry;
use exit::Exit;

/// Shown after `--help`; the same table is in docs/exit-codes.md.
const EXIT_CODES: &str = "\
Exit codes (check; AIDE-compatible where they overlap):
  0   no differences (other commands: success)
  1-7 sum of: 1 entries added, 2 entries removed, 4 entries changed
  17  invalid configuration
  18  a file could not be read (I/O error)
  24  the database is missing or malformed
  25  interrupted
  26  the database signature is missing, invalid, or by another key
  64  bad command line";

/// Record and check the integrity of model files, binaries and
/// configuration against an Ed25519-signed database.
///
/// Run `keygen` once, put the printed verifier key in the configuration,
/// `init` after installing, `check` as often as you like (it never writes),
/// and `update` to accept reviewed changes.
#[derive(Debug, Parser)]
#[command(name = "deepseek-integrity", version, about, long_about, after_help = EXIT_CODES)]
pub struct Cli {
    /// Configuration file (docs/integrity.md documents every key).
    #[arg(long, short = 'c', value_name = "PATH", default_value = DEFAULT_CONFIG_PATH, global = true)]
    pub config: PathBuf,
    /// Report format.
    #[arg(long, value_enum, default_value_t = Format::Human, global = true)]
    pub format: Format,
    /// Hashing threads (default: one per CPU).
    #[arg(long, value_name = "N", global = true)]
    pub jobs: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a signing key (mode 0600) and print its verifier key for
    /// `verifier_key` in the configuration. Needs no configuration.
    Keygen {
        /// Where to write the key.
        #[arg(
            long,
            value_name = "PATH",
            default_value = "/etc/deepseek/integrity.key"
        )]
        out: PathBuf,
    },
    /// Scan the system and write the first signed database.
    Init,
    /// Compare the system with the database and report; never writes.
    Check,
    /// Report like `check`, then accept the current state: re-sign and
    /// replace the database atomically.
    Update,
    /// Print the database's entries after verifying its signature.
    Show,
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { Exit::Usage as u8 } else { 0 });
        }
    };
    ExitCode::from(run(&cli))
}

fn fail(exit: Exit, error: &dyn std::fmt::Display) -> u8 {
    eprintln!("deepseek-integrity: error: {error}");
    exit as u8
}

/// Runs one command and returns its exit code.
pub fn run(cli: &Cli) -> u8 {
    if let Command::Keygen { out } = &cli.command {
        return match keys::Signer25519::generate(out) {
            Ok(key) => {
                println!("wrote signing key {} (mode 0600)", out.display());
                println!("verifier_key = \"{}\"", key.verifier());
                0
            }
            Err(e) => fail(Exit::Io, &e),
        };
    }
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => return fail(Exit::Config, &e),
    };
    let pinned = keys::VerifierKey::parse(&config.verifier_key).expect("validated at load");
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&interrupted)) {
            return fail(Exit::Io, &format!("cannot install a signal handler: {e}"));
        }
    }
    let options = scan::Options {
        jobs: cli
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        progress: std::io::stderr().is_terminal() && cli.format == Format::Human,
    };
    let scan = || {
        scan::scan(&config, &options, &interrupted).map_err(|e| match e {
            scan::ScanError::Interrupted => fail(Exit::Interrupted, &e),
            _ => fail(Exit::Io, &e),
        })
    };
    let load = || {
        database::load(&config.database, &pinned).map_err(|e| {
            fail(
                if e.is_signature() {
                    Exit::Signature
                } else {
                    Exit::Database
                },
                &e,
            )
        })
    };
    let sign_and_store = |entries: &[Entry]| -> Result<(), u8> {
        let key = keys::Signer25519::load(&config.signing_key).map_err(|e| fail(Exit::Io, &e))?;
        if key.verifier() != pinned {
            return Err(fail(
                Exit::Signature,
                &format!(
                    "signing key {} is not the pinned verifier_key {}",
                    config.signing_key.display(),
                    pinned
                ),
            ));
        }
        database::store(&config.database, &database::encode(entries, &key))
            .map_err(|e| fail(Exit::Io, &e))
    };
    let result = match cli.command {
        Command::Keygen { .. } => unreachable!("handled above"),
        Command::Init => (|| {
            if config.database.exists() {
                return Err(fail(
                    Exit::Database,
                    &format!(
                        "{} exists; use `update` to replace it after review",
                        config.database.display()
                    ),
                ));
            }
            let entries = scan()?;
            sign_and_store(&entries)?;
            report_written(cli.format, "init", &config, &entries);
            Ok(0)
        })(),
        Command::Check => (|| {
            let recorded = load()?;
            let current = scan()?;
            let differences = compare::compare(&recorded, &current);
            report(
                cli.format,
                "check",
                &config,
                &pinned,
                recorded.len(),
                &differences,
            );
            Ok(differences.code())
        })(),
        Command::Update => (|| {
            let recorded = load()?;
            let current = scan()?;
            let differences = compare::compare(&recorded, &current);
            report(
                cli.format,
                "update",
                &config,
                &pinned,
                recorded.len(),
                &differences,
            );
            sign_and_store(&current)?;
            report_written(cli.format, "update", &config, &current);
            Ok(0)
        })(),
        Command::Show => (|| {
            let recorded = load()?;
            show(cli.format, &recorded);
            Ok(0)
        })(),
    };
    result.unwrap_or_else(|code| code)
}

fn report_written(format: Format, command: &str, config: &Config, entries: &[Entry]) {
    if format == Format::Human {
        println!(
            "{command}: wrote {} with {} entries, signed",
            config.database.display(),
            entries.len()
        );
    }
}

/// The report, human (AIDE-like) or JSON.
fn report(
    format: Format,
    command: &str,
    config: &Config,
    pinned: &keys::VerifierKey,
    recorded: usize,
    d: &Differences,
) {
    // `update` accepts the differences, so it exits 0 whatever they are.
    let code = if command == "update" { 0 } else { d.code() };
    let verdict = if d.is_empty() {
        "no differences"
    } else {
        "differences found"
    };
    match format {
        Format::Json => {
            let value = json!({
                "command": command,
                "verdict": verdict,
                "exit_code": code,
                "database": config.database,
                "signed_by": pinned.id(),
                "verifier_key": pinned.to_string(),
                "entries": recorded,
                "summary": {"added": d.added.len(), "removed": d.removed.len(), "changed": d.changed.len()},
                "added": d.added,
                "removed": d.removed,
                "changed": d.changed,
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&value).expect("serializable")
            );
        }
        Format::Human => {
            println!(
                "{command}: {verdict}: {} added, {} removed, {} changed ({recorded} entries in {}, signed by {})",
                d.added.len(),
                d.removed.len(),
                d.changed.len(),
                config.database.display(),
                pinned.id()
            );
            for (title, entries) in [("Added", &d.added), ("Removed", &d.removed)] {
                if !entries.is_empty() {
                    println!("\n{title}:");
                    for entry in entries.iter() {
                        println!("  {:<7} {}", entry.kind.name(), entry.path.display());
                    }
                }
            }
            if !d.changed.is_empty() {
                println!("\nChanged:");
                for changed in &d.changed {
                    println!("  {}", changed.path);
                    for change in &changed.changes {
                        println!(
                            "      {:<9} {} -> {}",
                            change.attribute, change.old, change.new
                        );
                    }
                }
            }
        }
    }
}

fn show(format: Format, entries: &[Entry]) {
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(entries).expect("serializable")
        ),
        Format::Human => {
            for entry in entries {
                let digest = entry
                    .attrs
                    .sha256
                    .map(|d| format!("sha256={}", digest::hex(&d)))
                    .or_else(|| {
                        entry
                            .attrs
                            .chunked
                            .map(|d| format!("chunked={}", digest::hex(&d)))
                    })
                    .unwrap_or_default();
                let line = format!("{:<7} {} {digest}", entry.kind.name(), entry.path.display());
                println!("{}", line.trim_end());
            }
        }
    }
}
