//! Command-line interface.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_CONFIG_PATH;

/// Serve ONNX models over a Unix socket (KServe v2 / Open Inference Protocol).
///
/// deepseekd listens only on a Unix socket: the one systemd passes
/// (socket activation) or `server.socket` from the configuration. Clients
/// are admitted by their kernel-reported uid and groups.
///
/// Exit codes: 0 ok, 1 shutdown grace period exceeded, 64 usage, 65 model
/// unloadable, 66 configuration unreadable, 69 ONNX Runtime unavailable,
/// 70 internal error, 71 socket error, 78 invalid configuration.
#[derive(Debug, Parser)]
#[command(name = "deepseekd", version, about, long_about)]
pub struct Cli {
    /// Configuration file (TOML; every key is documented in docs/config.md).
    #[arg(long, short = 'c', value_name = "PATH", default_value = DEFAULT_CONFIG_PATH, global = true)]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (the default).
    Serve,
    /// Validate the configuration and exit: 0 when valid, 78 when invalid,
    /// 66 when unreadable. Checks syntax, keys, groups, and that the runtime
    /// library and model files exist and are readable; loads nothing.
    CheckConfig,
}
