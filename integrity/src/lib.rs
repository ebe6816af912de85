//! `deepseek-integrity`: AIDE-style integrity checking for the deepseek
//! appliance.
//!
//! Not implemented yet. Key generation, the signed database (`init`,
//! `update`, `show`) and `check` arrive with their own issue; until then the
//! binary only answers `--help` and `--version`, so that nothing on an
//! appliance can mistake it for a working integrity checker.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

/// The deepseek appliance's integrity checker (not yet implemented: this
/// build only prints --help and --version).
///
/// It will record the hashes and attributes of model files, binaries and
/// configuration in a signed database and check the system against it.
#[derive(Debug, Parser)]
#[command(name = "deepseek-integrity", version, about, long_about)]
struct Cli {}

/// The binary's entry point: parses the command line and exits 64 (EX_USAGE)
/// on anything but `--help` or `--version`.
pub fn main() -> ExitCode {
    match Cli::try_parse() {
        Ok(Cli {}) => {
            eprintln!(
                "deepseek-integrity: no command given; this build implements only --help and --version"
            );
            ExitCode::from(64)
        }
        Err(e) => {
            let _ = e.print();
            ExitCode::from(if e.use_stderr() { 64 } else { 0 })
        }
    }
}
