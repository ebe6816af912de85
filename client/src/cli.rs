//! The command line, as clap parses it and as the man pages show it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::exit;
use crate::render::Reasoning;

/// Where the packaged daemon listens (systemd/deepseekd.socket).
pub(crate) const DEFAULT_SOCKET: &str = "/run/deepseek/deepseekd.sock";

/// Talk to the deepseek appliance's chat models from a terminal, over the
/// daemon's Unix socket.
///
/// For a member of the deepseek group (or a uid the daemon allows); no
/// root, no network. Nothing of a conversation is written anywhere unless
/// asked for (/save).
#[derive(Debug, Parser)]
#[command(name = "deepseek", version, about, long_about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Chat with a model: a session on a terminal, or one question for a
    /// script.
    ///
    /// With a QUESTION, or with stdin not a terminal (the question is then
    /// all of stdin, at most 1 MiB), the answer is printed to stdout and the
    /// command exits. Otherwise it is a session: the answers stream in, the
    /// model's reasoning apart from them, the conversation is remembered
    /// until /clear or the end of the session, and /help lists the
    /// commands. End a line with \ to go on to the next, or put the text
    /// between """ and """. Ctrl-C stops an answer (the daemon stops
    /// generating it) or clears the line; Ctrl-D or /bye leaves.
    ///
    /// The model's text is shown with its control characters made visible
    /// (^[ for ESC), so that no answer can drive the terminal.
    #[command(after_help = exit::EXIT_CODES)]
    Chat(ChatArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ChatArgs {
    /// deepseekd's socket.
    #[arg(long, value_name = "PATH", env = "DEEPSEEK_SOCKET", default_value = DEFAULT_SOCKET)]
    pub(crate) socket: PathBuf,
    /// The model to ask; by default the daemon's only chat model (an error
    /// lists them when it serves several).
    #[arg(long, short = 'm', value_name = "NAME", env = "DEEPSEEK_MODEL")]
    pub(crate) model: Option<String>,
    /// The system prompt.
    #[arg(long, value_name = "TEXT")]
    pub(crate) system: Option<String>,
    /// The most tokens of each answer, reasoning included; by default the
    /// rest of the model's context.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_tokens: Option<u32>,
    /// Sampling temperature, 0 (always the likeliest token) to 2; by
    /// default the model's.
    #[arg(long, value_name = "T")]
    pub(crate) temperature: Option<f32>,
    /// Seed of the sampling, for answers that can be reproduced.
    #[arg(long, value_name = "N")]
    pub(crate) seed: Option<u64>,
    /// How the model's reasoning is shown. In a session: dim by default.
    /// For one question: hide by default; show and dim write it to stderr.
    #[arg(long, value_enum, value_name = "HOW")]
    pub(crate) reasoning: Option<Reasoning>,
    /// No colour (neither is there when NO_COLOR is set, or the output is
    /// not a terminal).
    #[arg(long)]
    pub(crate) no_color: bool,
    /// The question (its words joined with spaces). Without one, a session
    /// on a terminal, or the question read from stdin.
    #[arg(value_name = "QUESTION")]
    pub(crate) question: Vec<String>,
}
