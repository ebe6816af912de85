//! Multi-line input at the prompt: a line ending in `\` goes on to the
//! next line, and a `"""` opens a block that the next `"""` closes (as in
//! `ollama run`). Bounded by [`MAX_QUESTION_BYTES`].

/// The longest question, typed or read from stdin.
pub(crate) const MAX_QUESTION_BYTES: usize = 1 << 20;

const BLOCK: &str = "\"\"\"";

/// The question being typed, line by line.
#[derive(Debug, Default)]
pub(crate) struct Lines {
    text: String,
    in_block: bool,
    started: bool,
}

/// What a line did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The question goes on: read another line.
    More,
    /// The question is complete.
    Done(String),
    /// Over [`MAX_QUESTION_BYTES`]; what was typed is discarded.
    TooLong,
}

impl Lines {
    /// Whether a question is under way, so the prompt is the continuation one.
    pub(crate) fn is_continued(&self) -> bool {
        self.started
    }

    pub(crate) fn push(&mut self, line: &str) -> Step {
        let step = self.take(line);
        if self.text.len() > MAX_QUESTION_BYTES {
            *self = Self::default();
            return Step::TooLong;
        }
        step
    }

    fn take(&mut self, line: &str) -> Step {
        if self.in_block {
            if let Some(last) = line.strip_suffix(BLOCK) {
                self.text.push_str(last);
                return self.finish();
            }
            self.text.push_str(line);
            self.text.push('\n');
            return Step::More;
        }
        if !self.started
            && let Some(first) = line.strip_prefix(BLOCK)
        {
            self.started = true;
            if let Some(whole) = first.strip_suffix(BLOCK) {
                self.text.push_str(whole);
                return self.finish();
            }
            self.in_block = true;
            if !first.is_empty() {
                self.text.push_str(first);
                self.text.push('\n');
            }
            return Step::More;
        }
        if let Some(continued) = line.strip_suffix('\\') {
            self.started = true;
            self.text.push_str(continued);
            self.text.push('\n');
            return Step::More;
        }
        self.text.push_str(line);
        self.finish()
    }

    fn finish(&mut self) -> Step {
        let text = std::mem::take(&mut self.text);
        *self = Self::default();
        Step::Done(text)
    }

    /// Forgets a question under way (Ctrl-C).
    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(lines: &[&str]) -> Vec<Step> {
        let mut input = Lines::default();
        lines.iter().map(|l| input.push(l)).collect()
    }

    #[test]
    fn one_line_is_one_question() {
        assert_eq!(feed(&["hello"]), [Step::Done("hello".into())]);
    }

    #[test]
    fn a_backslash_continues() {
        assert_eq!(
            feed(&["one \\", "two\\", "three"]),
            [
                Step::More,
                Step::More,
                Step::Done("one \ntwo\nthree".into())
            ]
        );
    }

    #[test]
    fn triple_quotes_make_a_block() {
        assert_eq!(
            feed(&["\"\"\"", "line one \\", "", "line three\"\"\""]),
            [
                Step::More,
                Step::More,
                Step::More,
                Step::Done("line one \\\n\nline three".into())
            ]
        );
        assert_eq!(
            feed(&["\"\"\"first", "\"\"\""]),
            [Step::More, Step::Done("first\n".into())]
        );
        assert_eq!(feed(&["\"\"\"inline\"\"\""]), [Step::Done("inline".into())]);
    }

    #[test]
    fn too_much_is_refused_and_forgotten() {
        let mut input = Lines::default();
        let line = format!("{}\\", "x".repeat(MAX_QUESTION_BYTES / 3));
        assert_eq!(input.push(&line), Step::More);
        assert_eq!(input.push(&line), Step::More);
        assert_eq!(input.push(&line), Step::TooLong);
        assert!(!input.is_continued());
        assert_eq!(input.push("ok"), Step::Done("ok".into()));
    }
}
