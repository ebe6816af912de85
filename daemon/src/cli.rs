//! Command-line interface.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_CONFIG_PATH;

/// Shown after `--help`; the same table is in docs/guide/exit-codes.md.
const EXIT_CODES: &str = "\
Exit codes:
  0   stopped cleanly, or check-config found the configuration valid
  1   SIGTERM's grace period ended with requests still running
  64  bad command line
  65  a model does not match the signed integrity database (or the database is missing or
      its signature invalid), cannot be loaded by ONNX Runtime, or failed its warm-up run
  66  the configuration file is missing or unreadable
  69  ONNX Runtime, or the CUDA provider a model needs, is missing or the wrong version; or
      the auditor is unreachable or did not record the start (audit.required = true)
  70  internal error
  71  the listening socket, or systemd's NOTIFY_SOCKET, could not be set up
  77  a lockdown step (user, capabilities, no_new_privs, Landlock, seccomp) failed
  78  invalid configuration";

/// Serve ONNX models over a Unix socket (KServe v2 / Open Inference Protocol).
///
/// deepseekd listens only on a Unix socket: the one systemd passes
/// (socket activation) or `server.socket` from the configuration. Clients
/// are admitted by their kernel-reported uid and groups.
#[derive(Debug, Parser)]
#[command(name = "deepseekd", version, about, long_about, after_help = EXIT_CODES)]
pub(crate) struct Cli {
    /// Configuration file (TOML; every key is documented in docs/guide/config.md).
    #[arg(long, short = 'c', value_name = "PATH", default_value = DEFAULT_CONFIG_PATH, global = true)]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the daemon in the foreground (the default).
    Serve,
    /// Validate the configuration and exit: 0 when valid, 78 when invalid,
    /// 66 when unreadable. Checks syntax, keys, groups, and that the runtime
    /// library and model files exist and are readable; loads nothing.
    CheckConfig,
    /// Print the Landlock rules and seccomp filters this configuration gets.
    PrintPolicy,
}
