//! `deepseek`: the appliance's terminal client. `deepseek chat` talks to
//! deepseekd's OpenAI-compatible API over its Unix socket, as a session on
//! a terminal or one question for a script (docs/guide/chat.md).
//!
//! The library is the binary's; its one public item besides `main` is the
//! command-line definition, for the man pages.
#![forbid(unsafe_code)]

mod api;
mod cli;
mod commands;
mod conversation;
mod error;
mod exit;
mod http;
mod input;
mod interactive;
mod oneshot;
mod render;
mod sanitize;
mod session;
mod sse;
mod turn;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

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
    let Command::Chat(args) = cli.command;
    // One thread: the client waits on one connection at a time.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("deepseek: error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::OS);
        }
    };
    let question = match session::question(&args.question) {
        Ok(question) => question,
        Err(e) => return e.report(),
    };
    let mut session = match runtime.block_on(session::Session::start(args)) {
        Ok(session) => session,
        Err(e) => return e.report(),
    };
    match question {
        Some(question) => oneshot::run(&session, &question, &runtime),
        None => interactive::run(&mut session, &runtime),
    }
}
