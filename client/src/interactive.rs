//! A session on a terminal: a line editor (rustyline, history in memory
//! only), the commands of commands.rs, multi-line input, and each answer
//! streamed with its reasoning apart.

use std::process::ExitCode;

use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;

use crate::api::ChatRequest;
use crate::commands::{self, Command, HELP};
use crate::conversation::Conversation;
use crate::exit;
use crate::input::{Lines, MAX_QUESTION_BYTES, Step};
use crate::render::{Layout, Reasoning, Renderer};
use crate::session::{Session, choose_model};
use crate::turn;

const PROMPT: &str = ">>> ";
const CONTINUED: &str = "... ";

/// The session's state beside its settings.
struct Chat<'a> {
    session: &'a mut Session,
    runtime: &'a tokio::runtime::Runtime,
    conversation: Conversation,
    reasoning: Reasoning,
}

pub(crate) fn run(session: &mut Session, runtime: &tokio::runtime::Runtime) -> ExitCode {
    let mut editor = match DefaultEditor::new() {
        Ok(editor) => editor,
        Err(e) => {
            eprintln!("deepseek: error: cannot set up the terminal: {e}");
            return ExitCode::from(exit::OS);
        }
    };
    let reasoning = session.reasoning.unwrap_or(Reasoning::Dim);
    let mut conversation = Conversation::default();
    conversation.set_system(session.system.clone());
    println!(
        "deepseek chat with {} on {}. /help lists the commands; Ctrl-D or /bye leaves.",
        session.model,
        session.daemon.socket().display()
    );
    let mut chat = Chat {
        session,
        runtime,
        conversation,
        reasoning,
    };
    let mut lines = Lines::default();
    loop {
        let prompt = if lines.is_continued() {
            CONTINUED
        } else {
            PROMPT
        };
        let line = match editor.readline(prompt) {
            Ok(line) => line,
            // Ctrl-C clears what is being typed; it never ends the session.
            Err(ReadlineError::Interrupted) => {
                if !lines.is_continued() {
                    println!("(Ctrl-D or /bye leaves)");
                }
                lines.reset();
                continue;
            }
            Err(ReadlineError::Eof) if lines.is_continued() => {
                lines.reset();
                continue;
            }
            Err(ReadlineError::Eof) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("deepseek: error: cannot read the terminal: {e}");
                return ExitCode::from(exit::IO);
            }
        };
        if !lines.is_continued() {
            if let Some(command) = commands::parse(&line) {
                let _ = editor.add_history_entry(line.trim());
                match command {
                    Ok(Command::Bye) => return ExitCode::SUCCESS,
                    Ok(command) => chat.command(command),
                    Err(message) => eprintln!("{message}"),
                }
                continue;
            }
            if line.trim().is_empty() {
                continue;
            }
        }
        match lines.push(&line) {
            Step::More => {}
            Step::TooLong => eprintln!(
                "the question is over the limit of {MAX_QUESTION_BYTES} bytes (1 MiB); nothing was sent"
            ),
            Step::Done(question) => {
                let _ = editor.add_history_entry(question.as_str());
                chat.ask(question);
            }
        }
    }
}

impl Chat<'_> {
    fn ask(&mut self, question: String) {
        let request = ChatRequest {
            model: &self.session.model,
            messages: self.conversation.outgoing(&question),
            stream: true,
            sampling: self.session.sampling,
        };
        let mut renderer = Renderer::new(self.reasoning, self.colour(), Layout::Terminal);
        let asked = self
            .runtime
            .block_on(turn::ask(&self.session.daemon, &request, &mut renderer));
        drop(request);
        match asked {
            // Stopped before any answer: the question is forgotten too.
            Ok(answer) if answer.interrupted && answer.content.is_empty() => {}
            Ok(answer) => {
                let dropped = self
                    .conversation
                    .push(question, answer.content, answer.reasoning);
                if dropped > 0 {
                    println!(
                        "(the {dropped} oldest turns were forgotten: the conversation is kept under 4 MiB)"
                    );
                }
            }
            Err(e) => {
                eprintln!("deepseek: error: {e}");
                if e.is_context_too_long() && self.conversation.turns() > 0 {
                    eprintln!(
                        "(/clear forgets the {} earlier turns)",
                        self.conversation.turns()
                    );
                }
            }
        }
        println!();
    }

    fn colour(&self) -> bool {
        use std::io::IsTerminal;
        self.session.colour && std::io::stdout().is_terminal()
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::ListModels => match self.models() {
                Ok(models) => {
                    for model in models {
                        let mark = if model == self.session.model {
                            "*"
                        } else {
                            " "
                        };
                        println!("{mark} {model}");
                    }
                }
                Err(e) => eprintln!("deepseek: error: {e}"),
            },
            Command::Model(name) => {
                match self
                    .models()
                    .and_then(|served| choose_model(Some(name), &served))
                {
                    Ok(model) => {
                        println!("now asking {model}");
                        self.session.model = model;
                    }
                    Err(e) => eprintln!("deepseek: error: {e}"),
                }
            }
            Command::ShowSystem => match self.conversation.system() {
                Some(text) => println!("{text}"),
                None => println!("(no system prompt; /system TEXT sets one)"),
            },
            Command::System(text) => {
                self.conversation.set_system(Some(text));
                println!("system prompt set");
            }
            Command::Clear => {
                self.conversation.clear();
                println!("conversation cleared");
            }
            Command::ClearSystem => {
                self.conversation.set_system(None);
                println!("system prompt removed");
            }
            Command::ShowThink => println!("reasoning: {}", self.reasoning.name()),
            Command::Think(reasoning) => {
                self.reasoning = reasoning;
                println!("reasoning: {}", reasoning.name());
            }
            Command::Save { path, force } => {
                match self.conversation.save(&self.session.model, &path, force) {
                    Ok(()) => println!(
                        "saved {} turns to {}",
                        self.conversation.turns(),
                        path.display()
                    ),
                    Err(e) => eprintln!("deepseek: error: {e}"),
                }
            }
            Command::Help => print!("{HELP}"),
            // The loop ends the session before it gets here.
            Command::Bye => {}
        }
    }

    /// The models served; Ctrl-C gives up waiting (tokio holds SIGINT from
    /// the first answer on, so nothing else would stop a daemon that does
    /// not answer).
    fn models(&self) -> Result<Vec<String>, crate::error::Error> {
        self.runtime.block_on(async {
            tokio::select! {
                served = self.session.daemon.models() => served,
                _ = tokio::signal::ctrl_c() => Err(crate::error::Error::Interrupted),
            }
        })
    }
}
