//! Writing an answer as it streams: the reasoning apart from the answer
//! (dimmed, shown or hidden), every piece made safe for the terminal.

use std::io::{self, Write};

use crate::sanitize::for_terminal;

/// How the model's reasoning (`reasoning_content`) is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Reasoning {
    /// As the answer is, between "Thinking..." and "...done thinking.".
    Show,
    /// The same, dimmed (plain where colour is off).
    Dim,
    /// Not at all.
    Hide,
}

impl std::str::FromStr for Reasoning {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "show" => Ok(Self::Show),
            "dim" => Ok(Self::Dim),
            "hide" => Ok(Self::Hide),
            _ => Err(()),
        }
    }
}

impl Reasoning {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Show => "show",
            Self::Dim => "dim",
            Self::Hide => "hide",
        }
    }
}

const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

/// Where the reasoning goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// A session: reasoning and answer on stdout, the reasoning framed.
    Terminal,
    /// A script: the answer alone on stdout, the reasoning (if shown) on
    /// stderr.
    Split,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Nothing,
    Reasoning,
    Answer,
}

/// One answer being written.
#[derive(Debug)]
pub(crate) struct Renderer {
    reasoning: Reasoning,
    colour: bool,
    layout: Layout,
    part: Part,
    /// Whether what was last written to stdout, and to stderr, ended a line.
    stdout_at_line_start: bool,
    stderr_at_line_start: bool,
}

impl Renderer {
    pub(crate) fn new(reasoning: Reasoning, colour: bool, layout: Layout) -> Self {
        Self {
            reasoning,
            colour,
            layout,
            part: Part::Nothing,
            stdout_at_line_start: true,
            stderr_at_line_start: true,
        }
    }

    pub(crate) fn reasoning(&mut self, text: &str) -> io::Result<()> {
        if self.reasoning == Reasoning::Hide {
            return Ok(());
        }
        let dim = self.colour && self.reasoning == Reasoning::Dim;
        let mut piece = String::new();
        if self.part == Part::Nothing && self.layout == Layout::Terminal {
            piece.push_str("Thinking...\n");
        }
        self.part = Part::Reasoning;
        piece.push_str(&for_terminal(text));
        match self.layout {
            Layout::Terminal => self.write(Sink::Stdout, &piece, dim),
            Layout::Split => self.write(Sink::Stderr, &piece, dim),
        }
    }

    pub(crate) fn answer(&mut self, text: &str) -> io::Result<()> {
        if self.part == Part::Reasoning {
            self.end_reasoning()?;
        }
        self.part = Part::Answer;
        self.out(&for_terminal(text))
    }

    /// Closes the reasoning's frame (a session) or line (stderr).
    fn end_reasoning(&mut self) -> io::Result<()> {
        let dim = self.colour && self.reasoning == Reasoning::Dim;
        match self.layout {
            Layout::Terminal => {
                if !self.stdout_at_line_start {
                    self.write(Sink::Stdout, "\n", false)?;
                }
                self.write(Sink::Stdout, "...done thinking.\n", dim)?;
                self.write(Sink::Stdout, "\n", false)
            }
            Layout::Split if !self.stderr_at_line_start => self.write(Sink::Stderr, "\n", false),
            Layout::Split => Ok(()),
        }
    }

    /// Ends the answer: its last line, and `note` (why it ended early) on
    /// a line of its own.
    pub(crate) fn finish(&mut self, note: Option<&str>) -> io::Result<()> {
        if self.part == Part::Reasoning && self.layout == Layout::Split {
            self.end_reasoning()?;
        }
        if !self.stdout_at_line_start {
            self.write(Sink::Stdout, "\n", false)?;
        }
        if let Some(note) = note {
            let sink = match self.layout {
                Layout::Terminal => Sink::Stdout,
                Layout::Split => Sink::Stderr,
            };
            self.write(sink, &format!("({note})\n"), self.colour)?;
        }
        Ok(())
    }

    fn out(&mut self, text: &str) -> io::Result<()> {
        self.write(Sink::Stdout, text, false)
    }

    /// Writes `text` (already safe) to `sink`, dimmed if `dim`, at once.
    fn write(&mut self, sink: Sink, text: &str, dim: bool) -> io::Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let bytes = if dim {
            format!("{DIM}{text}{RESET}")
        } else {
            text.to_owned()
        };
        let (mut writer, at_line_start): (Box<dyn Write>, _) = match sink {
            Sink::Stdout => (
                Box::new(io::stdout().lock()),
                &mut self.stdout_at_line_start,
            ),
            Sink::Stderr => (
                Box::new(io::stderr().lock()),
                &mut self.stderr_at_line_start,
            ),
        };
        writer.write_all(bytes.as_bytes())?;
        writer.flush()?;
        *at_line_start = text.ends_with('\n');
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Sink {
    Stdout,
    Stderr,
}
