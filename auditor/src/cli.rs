//! The command line, as clap parses it and as the man pages show it.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::commands::{integrity_check, metrics, model, verify};
use crate::compliance;

/// The deepseek appliance's auditor: the signed, tamper-evident audit log.
#[derive(Debug, Parser)]
#[command(name = "deepseek-audit", version, about, long_about)]
pub(crate) struct Cli {
    /// Configuration file.
    #[arg(
        long,
        short = 'c',
        value_name = "PATH",
        default_value = "/etc/deepseek/audit.toml",
        global = true
    )]
    pub(crate) config: PathBuf,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
    #[command(after_help = verify::EXIT_CODES)]
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
    /// Collect the appliance's metrics for Prometheus: deepseekd's
    /// (`GET /metrics` on its socket) and the audit service's
    /// (`metrics_file`), as text files for node_exporter's textfile
    /// collector, or on standard output (docs/guide/metrics.md).
    ///
    /// The deepseek-metrics timer runs it every 15 s as root in the
    /// `deepseek` group (the daemon admits it like any client).
    #[command(after_help = metrics::EXIT_CODES)]
    Metrics {
        /// The daemon's socket.
        #[arg(
            long,
            value_name = "PATH",
            default_value = "/run/deepseek/deepseekd.sock"
        )]
        daemon_socket: PathBuf,
        /// Replace deepseekd.prom and deepseek-audit.prom in this directory
        /// (atomically, mode 0644) instead of printing, e.g.
        /// /var/lib/prometheus/node-exporter.
        #[arg(long, value_name = "DIR")]
        textfile_dir: Option<PathBuf>,
    },
    /// The model store: import signed model bundles, activate a version,
    /// roll back, remove, list (docs/guide/models.md).
    ///
    /// Run as root. Every change is recorded in the audit log (through the
    /// service at `socket` in audit.toml) before it takes effect, and
    /// undone if it cannot be; the signed integrity database takes each
    /// change in, signed with the integrity signing key.
    #[command(after_help = model::EXIT_CODES)]
    Model {
        #[command(flatten)]
        args: ModelArgs,
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Work with the log.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
}

/// What every `model` command reads.
#[derive(Debug, clap::Args)]
pub(crate) struct ModelArgs {
    /// deepseek-integrity's configuration: the database, its signing key,
    /// and the rule that must record the store (docs/guide/integrity.md).
    #[arg(long, value_name = "PATH", default_value = deepseek_integrity::config::DEFAULT_CONFIG_PATH, global = true)]
    pub(crate) integrity_config: PathBuf,
    /// The store's root.
    #[arg(long, value_name = "DIR", default_value = deepseek_integrity::store::layout::DEFAULT_ROOT, global = true)]
    pub(crate) store: PathBuf,
    /// A release key file that imported and activated versions must be
    /// signed by, instead of every `*.pub` in /etc/deepseek/release-keys;
    /// repeat for several.
    #[arg(long, value_name = "FILE", global = true)]
    pub(crate) key: Vec<PathBuf>,
    /// Hashing threads (default: one per CPU).
    #[arg(long, value_name = "N", global = true)]
    pub(crate) jobs: Option<usize>,
    /// How long the auditor may take to acknowledge a record.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, global = true)]
    pub(crate) timeout: u64,
    /// Print `list` as JSON.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ModelCommand {
    /// Verify a model bundle against the pinned release keys as it streams
    /// in, store it as ROOT/NAME/VERSION (its name and version are the
    /// bundle's), record it in the signed integrity database, then remove
    /// the oldest versions beyond --keep (never the active one).
    Import {
        /// The bundle (`deepseek-integrity bundle create --kind model`).
        bundle: PathBuf,
        /// Also activate the imported version.
        #[arg(long)]
        activate: bool,
        /// Versions of the model to keep, the new one included.
        #[arg(long, value_name = "N", default_value_t = deepseek_integrity::store::layout::DEFAULT_KEEP,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new()
                  .range(1..=deepseek_integrity::store::layout::MAX_KEEP as u64))]
        keep: usize,
        /// With --activate: restart deepseekd.service to serve it.
        #[arg(long, requires = "activate")]
        restart: bool,
    },
    /// Make VERSION the version of NAME that deepseekd serves.
    Activate {
        name: String,
        version: String,
        /// Restart deepseekd.service to serve it.
        #[arg(long)]
        restart: bool,
    },
    /// Re-activate the version that was active before the active one.
    Rollback {
        name: String,
        /// Restart deepseekd.service to serve it.
        #[arg(long)]
        restart: bool,
    },
    /// Remove a version that is not active.
    Remove { name: String, version: String },
    /// Show every stored version: which is active, whether the signed
    /// database records it, its signer and bundle digest.
    List,
}

/// Where a log command reads the history: the live log of the
/// configuration's `log_dir`, and archives.
#[derive(Debug, clap::Args)]
pub(crate) struct Sources {
    /// The first pinned verifier key (default: the configuration's
    /// verifier_key or verifier_key_file).
    #[arg(long, value_name = "KEY")]
    pub(crate) key: Option<String>,
    /// An archive directory (`log archive --to`) whose segments join the
    /// live ones; repeat for several.
    #[arg(long, value_name = "DIR")]
    pub(crate) archive: Vec<PathBuf>,
    /// Read only the archives, not the live log: with `--key`, no
    /// configuration is needed (an archive checked on another machine).
    #[arg(long, requires = "archive")]
    pub(crate) archive_only: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum LogCommand {
    /// Verify the whole history: every segment found (live and in the
    /// archives given) against its seal, the entry chain and the tree
    /// across segments, every checkpoint with the key of its time
    /// (following hand-overs from the first pinned key), and say which
    /// segments were checked and where the others went.
    Verify {
        /// A checkpoint kept elsewhere (e.g. from syslog) that the log must extend.
        #[arg(long, value_name = "FILE")]
        trusted_checkpoint: Option<PathBuf>,
        #[command(flatten)]
        sources: Sources,
    },
    /// Move sealed segments whose newest entry is older than
    /// `retention_days` to DIR (removable media), oldest first. Each is
    /// copied with every seal before it, synced, and verified there before
    /// it leaves the live log, which keeps its seal and a record of where
    /// it went. Run as root or the audit user; the service may be running.
    Archive {
        /// The archive directory (created if missing, mode 0700): not the
        /// live log nor inside it, and with no `..` (exit 64).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Keep this many days live instead of `retention_days`.
        #[arg(long, value_name = "DAYS")]
        keep_days: Option<u64>,
    },
    /// Print the entries, one line each (time, event, peer, model, status;
    /// `exit=N` for an integrity check), of a history that verifies.
    Show {
        #[command(flatten)]
        sources: Sources,
    },
    /// Print the entries as a JSON array, for other tools.
    Export {
        #[arg(long, default_value = "json", value_parser = ["json"])]
        format: String,
        #[command(flatten)]
        sources: Sources,
    },
    /// Print an inclusion proof of entry SEQ against the seal of its
    /// segment or, in the active segment, the latest checkpoint: the
    /// entry, the signed checkpoint and the proof hashes, as JSON that `log
    /// check-proof` verifies without access to the log.
    Prove {
        seq: u64,
        #[command(flatten)]
        sources: Sources,
    },
    /// Verify a proof printed by `log prove` with only the verifier key.
    CheckProof {
        /// The proof file (`-` for standard input).
        file: PathBuf,
        /// The verifier key of the checkpoint's time (default: the
        /// configuration's verifier_key or verifier_key_file).
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
    },
}
