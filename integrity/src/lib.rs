//! `deepseek-integrity`: AIDE-style integrity checking for the appliance.
//! A signed, deterministic database of the hashes and attributes of model
//! files, binaries and configuration, and a fast parallel check against it.
//!
//! The daemon uses this library to refuse models that do not match the
//! database; the binary is a thin CLI over it.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod check;
pub mod compare;
pub mod config;
pub mod database;
pub mod digest;
pub mod entry;
pub mod exit;
#[doc(hidden)]
pub mod fuzz;
pub mod keys;
pub mod note;
pub mod scan;
pub mod store;
pub mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use config::{Config, DEFAULT_CONFIG_PATH};
use entry::Entry;
use exit::Exit;

/// Shown after `--help`; the same table is in docs/guide/exit-codes.md.
const EXIT_CODES: &str = "\
Exit codes (check; AIDE-compatible where they overlap):
  0   no differences (other commands: success)
  1-7 sum of: 1 entries added, 2 entries removed, 4 entries changed
  17  invalid configuration
  18  a file could not be read (I/O error)
  24  the database is missing or malformed
  25  interrupted
  26  the database signature is missing, invalid, or by another key;
      a bundle is not signed by a pinned release key
  27  a bundle is malformed or does not match its signed manifest
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
    /// Configuration file (docs/guide/integrity.md documents every key).
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
        /// Also write the verifier key to this file (mode 0644, never
        /// overwritten), for `verifier_key_file` in the configurations.
        #[arg(long, value_name = "PATH")]
        verifier_out: Option<PathBuf>,
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
    /// Signed bundles that carry models and software onto the appliance
    /// (docs/guide/bundles.md). Need no configuration.
    #[command(subcommand)]
    Bundle(bundle::cli::BundleCommand),
}

/// The command-line definition, from which the man pages are generated
/// (`cargo run -p xtask -- man`), so they never drift from `--help`.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
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
    if let Command::Bundle(command) = &cli.command {
        return bundle::cli::run(command, cli.format == Format::Json);
    }
    if let Command::Keygen { out, verifier_out } = &cli.command {
        return match keygen(out, verifier_out.as_deref()) {
            Ok(()) => 0,
            Err(e) => fail(Exit::Io, &e),
        };
    }
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => return fail(Exit::Config, &e),
    };
    let pinned = config.verifier();
    let interrupted = match check::interrupt_on_signals() {
        Ok(interrupted) => interrupted,
        Err(e) => return fail(e.exit(), &e),
    };
    let options = check::scan_options(cli.jobs, cli.format == Format::Human);
    // Each error with its exit code (check::CheckError::exit).
    let failed = |e: check::CheckError| fail(e.exit(), &e);
    let scan = || scan::scan(&config, &options, &interrupted).map_err(|e| failed(e.into()));
    let load = || database::load(&config.database, pinned).map_err(|e| failed(e.into()));
    let check = || check::check(&config, &options, &interrupted).map_err(failed);
    let sign_and_store = |entries: &[Entry]| -> Result<(), u8> {
        let key = keys::Signer25519::load(&config.signing_key).map_err(|e| fail(Exit::Io, &e))?;
        if &key.verifier() != pinned {
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
    // init and update sign a new database: one writer at a time.
    let _lock = match cli.command {
        Command::Init | Command::Update => match database::lock(&config.database) {
            Ok(lock) => Some(lock),
            Err(e) => return fail(Exit::Database, &e),
        },
        _ => None,
    };
    let result = match cli.command {
        Command::Keygen { .. } | Command::Bundle(_) => unreachable!("handled above"),
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
            let checked = check()?;
            report(cli.format, "check", &config, &checked);
            Ok(checked.differences.code())
        })(),
        Command::Update => (|| {
            let checked = check()?;
            report(cli.format, "update", &config, &checked);
            sign_and_store(&checked.current)?;
            report_written(cli.format, "update", &config, &checked.current);
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

/// `keygen`: the signing key, and the verifier key file when asked for.
fn keygen(
    out: &std::path::Path,
    verifier_out: Option<&std::path::Path>,
) -> Result<(), keys::KeyError> {
    let key = keys::Signer25519::generate(out)?;
    if let Some(path) = verifier_out {
        keys::write_verifier_file(path, &key.verifier().to_string(), out)?;
    }
    println!("wrote signing key {} (mode 0600)", out.display());
    if let Some(path) = verifier_out {
        println!("wrote verifier key {} (mode 0644)", path.display());
    }
    println!("verifier_key = \"{}\"", key.verifier());
    Ok(())
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
fn report(format: Format, command: &str, config: &Config, checked: &check::Checked) {
    let render = match format {
        Format::Json => check::json,
        Format::Human => check::human,
    };
    print!(
        "{}",
        render(command, config, checked.recorded, &checked.differences)
    );
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
