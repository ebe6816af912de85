//! The daemon's exit codes, sysexits-style so that systemd units and scripts
//! can tell a bad configuration from a missing runtime. Documented in
//! `docs/guide/exit-codes.md`; keep the two in step.
#![forbid(unsafe_code)]

use std::process::ExitCode;

/// Why the daemon stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Clean shutdown, or `check-config` found nothing wrong.
    Ok = 0,
    /// SIGTERM's grace period ran out with requests still running.
    ShutdownTimedOut = 1,
    /// Bad command line (EX_USAGE).
    Usage = 64,
    /// A model does not match the signed integrity database (or the database
    /// is missing or its signature invalid), is not a loadable ONNX model, or
    /// failed its warm-up run (EX_DATAERR).
    Model = 65,
    /// The configuration file is missing or unreadable (EX_NOINPUT).
    NoConfig = 66,
    /// ONNX Runtime (or the CUDA provider a model requires) is missing,
    /// unloadable or the wrong version, or the auditor is unreachable or did
    /// not record the start with `audit.required` (EX_UNAVAILABLE).
    Runtime = 69,
    /// An internal error, such as failing to start the async runtime (EX_SOFTWARE).
    Software = 70,
    /// The listening socket, or systemd's notification socket, could not be
    /// set up (EX_OSERR).
    Socket = 71,
    /// A lockdown step (user switch, capabilities, no_new_privs, Landlock,
    /// seccomp) could not be applied (EX_NOPERM).
    Sandbox = 77,
    /// The configuration is invalid (EX_CONFIG).
    Config = 78,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}
