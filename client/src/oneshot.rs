//! One question from the command line or stdin, for scripts: the answer
//! alone on stdout, the reasoning on stderr only if asked.

use std::io::IsTerminal;
use std::process::ExitCode;

use crate::api::ChatRequest;
use crate::conversation::Conversation;
use crate::error::Error;
use crate::render::{Layout, Reasoning, Renderer};
use crate::session::Session;
use crate::turn;

pub(crate) fn run(
    session: &Session,
    question: &str,
    runtime: &tokio::runtime::Runtime,
) -> ExitCode {
    let mut conversation = Conversation::default();
    conversation.set_system(session.system.clone());
    let request = ChatRequest {
        model: &session.model,
        messages: conversation.outgoing(question),
        stream: true,
        sampling: session.sampling,
    };
    // Colour only marks the reasoning and notes, which go to stderr.
    let colour = session.colour && std::io::stderr().is_terminal();
    let reasoning = session.reasoning.unwrap_or(Reasoning::Hide);
    let mut renderer = Renderer::new(reasoning, colour, Layout::Split);
    match runtime.block_on(turn::ask(&session.daemon, &request, &mut renderer)) {
        Ok(answer) if answer.interrupted => Error::Interrupted.report(),
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => e.report(),
    }
}
