//! `deepseek-audit`: the privilege-separated auditor of the deepseek
//! appliance.
//!
//! Not implemented yet. The audit service (`serve`), key generation and the
//! compliance check (`verify`) arrive with their own issues; until then the
//! binary only answers `--help` and `--version`, so that nothing on an
//! appliance can mistake it for a working auditor.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

/// The deepseek appliance's auditor (not yet implemented: this build only
/// prints --help and --version).
///
/// It will keep the signed, tamper-evident log of every inference request
/// and run the compliance check `deepseek-audit verify`.
#[derive(Debug, Parser)]
#[command(name = "deepseek-audit", version, about, long_about)]
struct Cli {}

/// The binary's entry point: parses the command line and exits 64 (EX_USAGE)
/// on anything but `--help` or `--version`.
pub fn main() -> ExitCode {
    match Cli::try_parse() {
        Ok(Cli {}) => {
            eprintln!(
                "deepseek-audit: no command given; this build implements only --help and --version"
            );
            ExitCode::from(64)
        }
        Err(e) => {
            let _ = e.print();
            ExitCode::from(if e.use_stderr() { 64 } else { 0 })
        }
    }
}
