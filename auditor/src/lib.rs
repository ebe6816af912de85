//! `deepseek-audit`: the privilege-separated auditor of the deepseek
//! appliance. It keeps the tamper-evident log of every inference request
//! (an RFC 6962 Merkle tree over canonical entries, sealed by signed
//! checkpoints) and verifies it.
#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod client;
pub mod compliance;
pub mod entry;
#[doc(hidden)]
pub mod fuzz;
pub mod integrity_check;
pub mod keys;
pub mod merkle;
pub mod note;
pub mod proof;
pub mod service;
pub mod storage;
pub mod verify;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::{Parser, Subcommand};

/// The deepseek appliance's auditor: the signed, tamper-evident audit log.
#[derive(Debug, Parser)]
#[command(name = "deepseek-audit", version, about, long_about)]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        short = 'c',
        value_name = "PATH",
        default_value = "/etc/deepseek/audit.toml",
        global = true
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the checkpoint signing key (mode 0600) and print its verifier key.
    Keygen {
        /// The key's name, also the checkpoints' origin line.
        #[arg(long)]
        name: String,
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        /// Also write the verifier key to this file (mode 0644, never
        /// overwritten), for `verifier_key_file` in the configuration.
        #[arg(long, value_name = "PATH")]
        verifier_out: Option<PathBuf>,
    },
    /// Run the audit service.
    Serve,
    /// The compliance check: air gap, integrity, audit log and the daemon's
    /// hardening, each with the evidence read (docs/guide/compliance.md).
    ///
    /// Changes nothing and needs no network. Run it as root, or as the
    /// audit user (then the checks that need root are reported `notchecked`).
    #[command(after_help = VERIFY_EXIT_CODES)]
    Verify {
        /// The profile: which checks run, the other components'
        /// configurations, thresholds.
        #[arg(long, value_name = "PATH", default_value = compliance::profile::DEFAULT_PROFILE_PATH)]
        profile: PathBuf,
        /// Report format; text uses colour only on a terminal.
        #[arg(long, value_enum, default_value_t = compliance::format::Format::Text)]
        format: compliance::format::Format,
        /// Print the check catalog (ID, title, NIST SP 800-53 controls) and exit.
        #[arg(long)]
        list: bool,
        /// The daemon's pid, instead of finding it (pidfile, systemd unit,
        /// the process holding its socket).
        #[arg(long, value_name = "PID")]
        pid: Option<i32>,
    },
    /// Run the integrity check (`deepseek-integrity check`: the signed
    /// database, verified with the pinned key, against the system), print
    /// its report, and record the result in the audit log.
    ///
    /// For the daily timer, run as root. The `integrity_check` entry holds
    /// the exit code, the counts and the changed, removed and added paths,
    /// or, when the check could not run, its error (docs/guide/audit.md). The
    /// record goes through the service at `socket` in audit.toml, which
    /// must allow this user (uid 0 in allowed_uids for root).
    #[command(after_help = integrity_check::EXIT_CODES)]
    IntegrityCheck {
        /// deepseek-integrity's configuration (docs/guide/integrity.md).
        #[arg(long, value_name = "PATH", default_value = deepseek_integrity::config::DEFAULT_CONFIG_PATH)]
        integrity_config: PathBuf,
        /// Report format, as deepseek-integrity's; the entry records the
        /// SHA-256 of the JSON report whichever is printed.
        #[arg(long, value_enum, default_value_t = deepseek_integrity::Format::Human)]
        format: deepseek_integrity::Format,
        /// Hashing threads (default: one per CPU).
        #[arg(long, value_name = "N")]
        jobs: Option<usize>,
        /// How long the auditor may take to acknowledge the record.
        #[arg(long, value_name = "SECONDS", default_value_t = 30)]
        timeout: u64,
    },
    /// Work with the log.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Verify the entries, the tree and every checkpoint.
    Verify {
        /// The verifier key (default: the configuration's verifier_key or verifier_key_file).
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
        /// A checkpoint kept elsewhere (e.g. from syslog) that the log must extend.
        #[arg(long, value_name = "FILE")]
        trusted_checkpoint: Option<PathBuf>,
    },
    /// Print the entries, one line each (time, event, peer, model, status;
    /// `exit=N` for an integrity check).
    Show,
    /// Print the entries as a JSON array, for other tools.
    Export {
        #[arg(long, default_value = "json", value_parser = ["json"])]
        format: String,
    },
    /// Print an inclusion proof of entry SEQ against the latest checkpoint:
    /// the entry, the signed checkpoint and the proof hashes, as JSON that
    /// `log check-proof` verifies without access to the log.
    Prove { seq: u64 },
    /// Verify a proof printed by `log prove` with only the verifier key.
    CheckProof {
        /// The proof file (`-` for standard input).
        file: PathBuf,
        /// The verifier key (default: the configuration's verifier_key or verifier_key_file).
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
    },
}

/// Shown after `verify --help`; the same table is in docs/guide/exit-codes.md.
const VERIFY_EXIT_CODES: &str = "\
Exit codes (the OpenSCAP convention):
  0   every selected check passed (or does not apply here)
  1   verify itself failed: unreadable or invalid profile, output not written
  2   a check failed, or could not be decided (error, notchecked)
  64  bad command line";

fn fail(code: u8, error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("deepseek-audit: error: {error}");
    ExitCode::from(code)
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
            return ExitCode::from(if e.use_stderr() { 64 } else { 0 });
        }
    };
    match cli.command {
        Command::Keygen {
            name,
            out,
            verifier_out,
        } => {
            let mut seed = [0u8; 32];
            if let Err(e) = getrandom::getrandom(&mut seed) {
                return fail(71, &e);
            }
            match keys::generate(&name, &out, verifier_out.as_deref(), seed) {
                Ok(signer) => {
                    println!("verifier_key = \"{}\"", signer.verifier());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(74, &e),
            }
        }
        Command::Verify {
            profile,
            format,
            list,
            pid,
        } => verify(&cli.config, &profile, format, list, pid),
        Command::IntegrityCheck {
            integrity_config,
            format,
            jobs,
            timeout,
        } => integrity_check::run(
            &cli.config,
            &integrity_check::Options {
                integrity_config: &integrity_config,
                format,
                jobs,
                timeout: std::time::Duration::from_secs(timeout),
            },
        ),
        Command::Serve => {
            let config = match service::ServiceConfig::load(&cli.config) {
                Ok(config) => config,
                Err(e) => return fail(78, &e),
            };
            let allowed = match config.allowed_peers(&cli.config) {
                Ok(allowed) => allowed,
                Err(e) => return fail(78, &e),
            };
            let signer = match keys::load(&config.signing_key) {
                Ok(signer) => signer,
                Err(e) => return fail(78, &e),
            };
            // The log is verified before the socket is bound: a client that
            // connects is recorded at once (under socket activation, its
            // connection waits in the backlog until then).
            let opened = match service::open(&config, &signer) {
                Ok(opened) => opened,
                Err(e) => return fail(74, &e),
            };
            let listener = match listen(&config) {
                Ok(listener) => listener,
                Err(e) => return fail(71, &e),
            };
            let stop = Arc::new(AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
                    return fail(71, &e);
                }
            }
            match service::serve(&config, opened, allowed, signer, listener, stop) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(74, &e),
            }
        }
        Command::Log {
            command:
                LogCommand::Verify {
                    key,
                    trusted_checkpoint,
                },
        } => {
            let config = match service::ServiceConfig::load(&cli.config) {
                Ok(config) => config,
                Err(e) => return fail(78, &e),
            };
            let verifier = match verifier_of(key, &config) {
                Ok(verifier) => verifier,
                Err(e) => return fail(78, &e),
            };
            let (log, checkpoints) = match storage::read_log(&config.log_dir) {
                Ok(read) => read,
                Err(e) => return fail(74, &e),
            };
            let trusted = match trusted_checkpoint.map(|path| {
                let note = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let text = verifier
                    .open(&note)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                checkpoint::Checkpoint::parse(text).map_err(|e| format!("{}: {e}", path.display()))
            }) {
                Some(Ok(c)) => Some(c),
                Some(Err(e)) => return fail(2, &e),
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
                Err(e) => fail(2, &e),
            }
        }
        Command::Log {
            command: LogCommand::Show,
        }
        | Command::Log {
            command: LogCommand::Export { .. },
        } => {
            let export = matches!(
                cli.command,
                Command::Log {
                    command: LogCommand::Export { .. }
                }
            );
            let config = match service::ServiceConfig::load(&cli.config) {
                Ok(config) => config,
                Err(e) => return fail(78, &e),
            };
            let (log, _) = match storage::read_log(&config.log_dir) {
                Ok(read) => read,
                Err(e) => return fail(74, &e),
            };
            let mut entries = Vec::new();
            for (index, line) in log
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .enumerate()
            {
                match entry::Entry::decode(line) {
                    Ok(entry) => entries.push(entry),
                    Err(e) => return fail(2, &format!("line {}: {e}", index + 1)),
                }
            }
            if export {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&entries).expect("entries serialize")
                );
            } else {
                for e in &entries {
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
                    let line = format!(
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
                    );
                    println!("{}", line.trim_end());
                }
            }
            ExitCode::SUCCESS
        }
        Command::Log {
            command: LogCommand::Prove { seq },
        } => {
            let config = match service::ServiceConfig::load(&cli.config) {
                Ok(config) => config,
                Err(e) => return fail(78, &e),
            };
            match prove(&config, seq) {
                Ok(json) => {
                    println!("{json}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(2, &e),
            }
        }
        Command::Log {
            command: LogCommand::CheckProof { file, key },
        } => {
            let read = if file.as_os_str() == "-" {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map(|_| text)
            } else {
                std::fs::read_to_string(&file)
            };
            let text = match read {
                Ok(text) => text,
                Err(e) => return fail(2, &format!("cannot read {}: {e}", file.display())),
            };
            let verifier = match key
                .map(|k| note::NoteVerifier::parse(&k).map_err(|e| e.to_string()))
                .unwrap_or_else(|| {
                    service::ServiceConfig::load(&cli.config)
                        .map_err(|e| e.to_string())
                        .and_then(|c| verifier_of(None, &c))
                }) {
                Ok(verifier) => verifier,
                Err(e) => return fail(78, &e),
            };
            match serde_json::from_str::<proof::InclusionProof>(&text)
                .map_err(|e| e.to_string())
                .and_then(|p| {
                    p.check(&verifier)
                        .map(|c| (p.seq, c))
                        .map_err(|e| e.to_string())
                }) {
                Ok((seq, checkpoint)) => {
                    println!(
                        "entry {seq} is included in the {} entries of {} signed by {}",
                        checkpoint.size,
                        checkpoint.origin,
                        verifier.name()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(2, &e),
            }
        }
    }
}

/// The socket systemd passed (`deepseek-audit.socket`, `LISTEN_FDS`), or
/// one bound at `socket`, replacing a stale socket but never anything else
/// (and never a live one).
fn listen(config: &service::ServiceConfig) -> Result<std::os::unix::net::UnixListener, String> {
    let mut passed = listenfd::ListenFd::from_env();
    if passed.len() > 0 {
        return passed
            .take_unix_listener(0)
            .map_err(|e| format!("the socket systemd passed (LISTEN_FDS) is unusable: {e}"))?
            .ok_or_else(|| "the socket systemd passed (LISTEN_FDS) was already taken".to_owned());
    }
    if let Some(dir) = config.socket.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let stale = std::fs::symlink_metadata(&config.socket)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        && std::os::unix::net::UnixStream::connect(&config.socket).is_err();
    if stale {
        let _ = std::fs::remove_file(&config.socket);
    }
    std::os::unix::net::UnixListener::bind(&config.socket)
        .map_err(|e| format!("cannot listen on {}: {e}", config.socket.display()))
}

/// `deepseek-audit verify`: exit 0, 1 or 2 as documented in VERIFY_EXIT_CODES.
fn verify(
    audit_config: &std::path::Path,
    profile_path: &std::path::Path,
    format: compliance::format::Format,
    list: bool,
    pid: Option<i32>,
) -> ExitCode {
    use compliance::format::{self, Format};
    use std::io::{IsTerminal, Write};
    let output = if list {
        let catalog = compliance::catalog();
        match format {
            Format::Json => format::catalog_json(&catalog),
            _ => format::catalog_text(&catalog),
        }
    } else {
        let profile = match compliance::Profile::load(profile_path) {
            Ok(profile) => profile,
            Err(e) => return fail(1, &e),
        };
        let context = compliance::Context::new(
            profile,
            profile_path.to_owned(),
            audit_config.to_owned(),
            pid,
        );
        let report = compliance::run(&context);
        let text = match format {
            Format::Text => format::text(&report, std::io::stdout().is_terminal()),
            Format::Json => format::json(&report),
            Format::Sarif => format::sarif(&report),
            Format::Junit => match format::junit(&report) {
                Ok(xml) => xml,
                Err(e) => return fail(1, &format!("cannot write the JUnit report: {e}")),
            },
        };
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
        {
            return fail(1, &format!("cannot write the report: {e}"));
        }
        return ExitCode::from(report.exit_code());
    };
    print!("{output}");
    ExitCode::SUCCESS
}

pub(crate) fn verifier_of(
    key: Option<String>,
    config: &service::ServiceConfig,
) -> Result<note::NoteVerifier, String> {
    match key {
        Some(key) => note::NoteVerifier::parse(&key).map_err(|e| e.to_string()),
        None => config.verifier.clone().ok_or_else(|| {
            "no verifier key: pass --key or set verifier_key or verifier_key_file".to_owned()
        }),
    }
}

fn prove(config: &service::ServiceConfig, seq: u64) -> Result<String, String> {
    let verifier = verifier_of(None, config)?;
    let (log, checkpoints) = storage::read_log(&config.log_dir).map_err(|e| e.to_string())?;
    verify::verify(&log, &checkpoints, &verifier, None).map_err(|e| e.to_string())?;
    let lines: Vec<&[u8]> = log
        .strip_suffix(b"\n")
        .unwrap_or(&log)
        .split(|&b| b == b'\n')
        .collect();
    let entry = lines
        .get(usize::try_from(seq).unwrap_or(usize::MAX))
        .ok_or(format!("the log has no entry {seq}"))?;
    let leaves: Vec<merkle::Hash> = lines.iter().map(|l| merkle::leaf_hash(l)).collect();
    let sealing = checkpoints
        .iter()
        .filter_map(|c| {
            Some((
                checkpoint::Checkpoint::parse(verifier.open(&c.note).ok()?).ok()?,
                c,
            ))
        })
        .filter(|(c, _)| c.size > seq)
        .max_by_key(|(c, _)| c.size)
        .ok_or(format!("entry {seq} is not sealed by a checkpoint yet"))?;
    let proof = proof::InclusionProof::build(entry, seq, &leaves, sealing.0.size, &sealing.1.note);
    serde_json::to_string_pretty(&proof).map_err(|e| e.to_string())
}

/// Lower-case hex of a hash (on every append and every verified entry, so
/// without a formatter call per byte).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// Parses 64 lower-case hex digits.
pub fn unhex32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = digit(bytes[2 * i])? << 4 | digit(bytes[2 * i + 1])?;
    }
    Some(out)
}
