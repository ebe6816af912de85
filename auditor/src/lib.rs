//! `deepseek-audit`: the privilege-separated auditor of the deepseek
//! appliance. It keeps the tamper-evident log of every inference request
//! (an RFC 6962 Merkle tree over canonical entries, sealed by signed
//! checkpoints) and verifies it.
//!
//! The public modules are what the daemon (`entry`, the `service` wire
//! types), the benchmarks and the fuzz targets use; the rest is the
//! binary's.
#![forbid(unsafe_code)]

mod checkpoint;
mod cli;
mod client;
mod commands;
mod compliance;
pub mod entry;
mod exit;
#[doc(hidden)]
pub mod fuzz;
pub mod history;
mod keys;
mod merkle;
pub mod metrics;
mod proof;
mod segment;
pub mod service;
pub mod storage;
pub mod userns;
pub mod verify;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, LogCommand, ModelCommand};

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
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    match cli.command {
        Command::Keygen {
            name,
            out,
            verifier_out,
        } => commands::keygen::run(&name, &out, verifier_out.as_deref()),
        Command::Serve => commands::serve::run(&cli.config),
        Command::Verify {
            profile,
            format,
            list,
            pid,
        } => commands::verify::run(&cli.config, &profile, format, list, pid),
        Command::IntegrityCheck {
            integrity_config,
            format,
            jobs,
            timeout,
        } => commands::integrity_check::run(
            &cli.config,
            &commands::integrity_check::Options {
                integrity_config: &integrity_config,
                format,
                jobs,
                timeout: std::time::Duration::from_secs(timeout),
            },
        ),
        Command::Model { args, command } => {
            use commands::model::Action;
            let (action, restart) = match command {
                ModelCommand::Import {
                    bundle,
                    activate,
                    keep,
                    restart,
                } => (
                    Action::Import {
                        bundle,
                        activate,
                        keep,
                    },
                    restart,
                ),
                ModelCommand::Activate {
                    name,
                    version,
                    restart,
                } => (Action::Activate { name, version }, restart),
                ModelCommand::Rollback { name, restart } => (Action::Rollback { name }, restart),
                ModelCommand::Remove { name, version } => (Action::Remove { name, version }, false),
                ModelCommand::List => (Action::List, false),
            };
            commands::model::run(
                &cli.config,
                &action,
                &commands::model::Options {
                    integrity_config: &args.integrity_config,
                    store: &args.store,
                    keys: &args.key,
                    jobs: args.jobs,
                    timeout: std::time::Duration::from_secs(args.timeout),
                    restart,
                    json: args.json,
                },
            )
        }
        Command::Metrics {
            daemon_socket,
            textfile_dir,
        } => commands::metrics::run(&cli.config, &daemon_socket, textfile_dir.as_deref()),
        Command::Log { command } => {
            fn reading<'a>(
                config: &'a std::path::Path,
                sources: &'a cli::Sources,
            ) -> commands::log::Reading<'a> {
                commands::log::Reading {
                    config,
                    key: sources.key.as_deref(),
                    archives: &sources.archive,
                    archive_only: sources.archive_only,
                }
            }
            let config = cli.config.as_path();
            match &command {
                LogCommand::Verify {
                    trusted_checkpoint,
                    sources,
                } => commands::log::verify_log(
                    &reading(config, sources),
                    trusted_checkpoint.as_deref(),
                ),
                LogCommand::Archive { to, keep_days } => {
                    commands::archive::run(&cli.config, to, *keep_days)
                }
                LogCommand::Show { sources } => {
                    commands::log::show(&reading(config, sources), false)
                }
                LogCommand::Export { sources, .. } => {
                    commands::log::show(&reading(config, sources), true)
                }
                LogCommand::Prove { seq, sources } => {
                    commands::log::prove(&reading(config, sources), *seq)
                }
                LogCommand::CheckProof { file, key } => {
                    commands::log::check_proof(&cli.config, file, key.as_deref())
                }
            }
        }
    }
}
