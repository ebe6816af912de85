//! Exit codes (sysexits where one fits; docs/guide/exit-codes.md) and the one
//! way an error reaches the user.

use std::process::ExitCode;

/// EX_USAGE: a bad command line.
pub(crate) const USAGE: u8 = 64;
/// EX_UNAVAILABLE: `metrics` could not read a source.
pub(crate) const UNAVAILABLE: u8 = 69;
/// EX_OSERR: no randomness, no socket, no signal handler.
pub(crate) const OS: u8 = 71;
/// EX_IOERR: the log or a key file cannot be read or written.
pub(crate) const IO: u8 = 74;
/// EX_CONFIG: `audit.toml`, its keys or a `--key` are unusable.
pub(crate) const CONFIG: u8 = 78;
/// `log verify`, `show`, `prove`, `check-proof`: the log or proof does not
/// verify, or cannot be read as one, or holds no proof of that entry.
pub(crate) const NOT_VERIFIED: u8 = 2;

/// Prints `error` as every subcommand does, and returns `code`.
pub(crate) fn fail(code: u8, error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("deepseek-audit: error: {error}");
    ExitCode::from(code)
}
