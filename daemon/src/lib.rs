//! `deepseekd`: loads ONNX models into ONNX Runtime and serves them to local
//! clients over a Unix socket, speaking KServe v2 and the OpenAI API over
//! HTTP/1.1.
//!
//! The layers, and the request flows through them, are drawn in
//! docs/development/code-structure.md: `service` starts and stops the daemon,
//! `server` speaks the protocols over the `engine`, `audit` is the
//! connection to the auditor and what is written to it, `sandbox` is the
//! lockdown, and `sys` holds the only `unsafe` code.

pub(crate) mod audit;
mod cli;
pub mod config;
pub mod engine;
pub(crate) mod entropy;
mod exit;
#[doc(hidden)]
pub mod fuzz;
mod logging;
pub(crate) mod metrics;
mod notify;
pub mod sandbox;
pub(crate) mod server;
mod service;
#[expect(
    unsafe_code,
    reason = "sys/ is the one module that may hold unsafe code, every block with a SAFETY comment"
)]
mod sys;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};
use exit::Exit;

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
            let usage = e.use_stderr();
            // --help and --version print and succeed; mistakes are EX_USAGE.
            let _ = e.print();
            return if usage { Exit::Usage } else { Exit::Ok }.into();
        }
    };
    let exit = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => service::serve(&cli.config),
        Command::CheckConfig => service::check::check_config(&cli.config),
        Command::PrintPolicy => match service::check::load_config(&cli.config) {
            Ok(config) => {
                print!("{}", sandbox::describe(&config));
                Exit::Ok
            }
            Err(exit) => exit,
        },
    };
    exit.into()
}
