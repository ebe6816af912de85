//! Splitting DeepSeek-R1 style output into `reasoning_content` and
//! `content` while it streams.
//!
//! The R1 chat template ends the prompt with "<think>\n", so the model's
//! output starts inside the reasoning and only closes it with "</think>";
//! like vLLM's deepseek_r1 parser we therefore start in reasoning. Some
//! checkpoints still emit their own "<think>" first, which is stripped.
//! Tags can arrive cut across decoded pieces, so any tail that could still
//! become one is held back: the split never depends on the chunking.

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// Streams one completion's text into reasoning and content.
#[derive(Debug)]
pub(crate) struct ReasoningSplitter {
    state: State,
    /// The prompt opened the reasoning: text that does not start with
    /// `<think>` is reasoning all the same (else it is the answer).
    opened: bool,
    /// Text not yet decided: a possible start of "<think>\n" or of "</think>".
    held: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Everything is content (no reasoning tags in this tokenizer).
    Disabled,
    /// At the very start: a leading "<think>" (and one "\n") may follow.
    Start,
    /// Inside the reasoning, before "</think>".
    Reasoning,
    /// After "</think>": the rest is content, verbatim.
    Content,
}

/// The newly decided pieces of one step (either may be empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Split {
    pub(crate) reasoning: String,
    pub(crate) content: String,
}

impl ReasoningSplitter {
    /// `enabled`: the tokenizer has <think> and </think>. `opened`: the
    /// prompt ends in an open `<think>` (the R1 template ends it with
    /// "<think>\n"), so the output starts INSIDE reasoning, as vLLM's
    /// deepseek_r1 parser assumes; otherwise only a leading "<think>" opens
    /// it (a template that closes or never opens it). Disabled: everything
    /// is content.
    pub(crate) fn new(enabled: bool, opened: bool) -> Self {
        Self {
            opened,
            state: if enabled {
                State::Start
            } else {
                State::Disabled
            },
            held: String::new(),
        }
    }

    /// Feeds the next piece of decoded text; returns what is now decided.
    pub(crate) fn push(&mut self, text: &str) -> Split {
        let mut out = Split::default();
        match self.state {
            State::Disabled | State::Content => out.content.push_str(text),
            State::Start => {
                self.held.push_str(text);
                self.leave_start(false, &mut out);
            }
            State::Reasoning => {
                self.held.push_str(text);
                self.scan_reasoning(&mut out);
            }
        }
        out
    }

    /// Flushes what was held back, to reasoning if it is still open, else
    /// to content.
    pub(crate) fn finish(&mut self) -> Split {
        let mut out = Split::default();
        if self.state == State::Start {
            self.leave_start(true, &mut out);
        }
        let held = std::mem::take(&mut self.held);
        match self.state {
            State::Start | State::Reasoning => out.reasoning.push_str(&held),
            State::Disabled | State::Content => out.content.push_str(&held),
        }
        out
    }

    /// True once "</think>" was seen (so the caller can tell "no </think>
    /// at all" → content null).
    pub(crate) fn closed(&self) -> bool {
        self.state == State::Content
    }

    /// Strips a leading "<think>" plus at most one "\n" once that is
    /// decided, then continues in reasoning. `last`: no more text comes.
    fn leave_start(&mut self, last: bool, out: &mut Split) {
        let held = self.held.as_str();
        let skip = if let Some(rest) = held.strip_prefix(OPEN) {
            if rest.is_empty() && !last {
                return; // a "\n" may still follow
            }
            OPEN.len() + usize::from(rest.starts_with('\n'))
        } else if OPEN.starts_with(held) && !last {
            return; // still a possible "<think>"
        } else {
            0
        };
        self.held.drain(..skip);
        if skip == 0 && !self.opened {
            self.state = State::Content;
            out.content.push_str(&std::mem::take(&mut self.held));
            return;
        }
        self.state = State::Reasoning;
        self.scan_reasoning(out);
    }

    /// Emits reasoning up to "</think>" (dropping the tag, switching to
    /// content) or up to a tail that could still become "</think>".
    fn scan_reasoning(&mut self, out: &mut Split) {
        if let Some(at) = self.held.find(CLOSE) {
            out.reasoning.push_str(&self.held[..at]);
            out.content.push_str(&self.held[at + CLOSE.len()..]);
            self.held.clear();
            self.state = State::Content;
            return;
        }
        let keep = partial_tail(&self.held, CLOSE);
        let cut = self.held.len() - keep;
        out.reasoning.push_str(&self.held[..cut]);
        self.held.drain(..cut);
    }
}

/// The length of the longest tail of `text` that is a proper prefix of
/// `tag` (an ASCII tag, so every such tail starts on a char boundary).
fn partial_tail(text: &str, tag: &str) -> usize {
    (1..tag.len().min(text.len() + 1))
        .rev()
        .find(|&n| text.ends_with(&tag[..n]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split(reasoning: &str, content: &str) -> Split {
        Split {
            reasoning: reasoning.to_owned(),
            content: content.to_owned(),
        }
    }

    /// [`run_with`] after a prompt that opened the reasoning.
    fn run(enabled: bool, pieces: &[&str]) -> (Split, bool) {
        run_with(ReasoningSplitter::new(enabled, true), pieces)
    }

    /// Pushes every piece into `s`, then finishes; concatenates what came
    /// out.
    fn run_with(mut s: ReasoningSplitter, pieces: &[&str]) -> (Split, bool) {
        let mut all = Split::default();
        let mut outs: Vec<Split> = pieces.iter().map(|p| s.push(p)).collect();
        outs.push(s.finish());
        for p in outs {
            all.reasoning.push_str(&p.reasoning);
            all.content.push_str(&p.content);
        }
        let closed = s.closed();
        (all, closed)
    }

    #[test]
    fn the_output_starts_inside_reasoning() {
        assert_eq!(run(true, &["abc</think>xyz"]), (split("abc", "xyz"), true));
    }

    #[test]
    fn a_leading_think_and_one_newline_are_stripped() {
        let want = (split("abc", "xyz"), true);
        assert_eq!(run(true, &["<think>\nabc</think>xyz"]), want);
        assert_eq!(run(true, &["<thi", "nk>\nabc</think>xyz"]), want);
        assert_eq!(run(true, &["<think>", "\n", "abc</think>xyz"]), want);
        assert_eq!(run(true, &["<think>\n\nabc</think>"]).0, split("\nabc", ""));
    }

    #[test]
    fn a_prompt_that_does_not_open_the_reasoning_starts_in_the_answer() {
        let run = |pieces: &[&str]| run_with(ReasoningSplitter::new(true, false), pieces).0;
        assert_eq!(run(&["{\"a\"", ": 1}"]), split("", "{\"a\": 1}"));
        assert_eq!(run(&["<th", "ink>\nwhy</think>so"]), split("why", "so"));
        assert_eq!(run(&["<th"]), split("", "<th"));
    }

    #[test]
    fn content_after_the_close_is_verbatim() {
        assert_eq!(
            run(true, &["<think>abc</think>\n\nxyz"]),
            (split("abc", "\n\nxyz"), true)
        );
        assert_eq!(
            run(true, &["a</think>b<think>c</think>d"]).0,
            split("a", "b<think>c</think>d")
        );
    }

    #[test]
    fn no_close_is_all_reasoning() {
        assert_eq!(run(true, &["abc", " def"]), (split("abc def", ""), false));
        assert_eq!(run(true, &["<thi"]), (split("<thi", ""), false));
        assert_eq!(run(true, &["<think>"]), (split("", ""), false));
        assert_eq!(run(true, &["x </th"]), (split("x </th", ""), false));
    }

    #[test]
    fn a_split_close_never_leaks() {
        let mut s = ReasoningSplitter::new(true, true);
        assert_eq!(s.push("abc</th"), split("abc", ""));
        assert!(!s.closed());
        assert_eq!(s.push("ink>xyz"), split("", "xyz"));
        assert!(s.closed());
        assert_eq!(s.push("</think>"), split("", "</think>"));
        assert_eq!(s.finish(), split("", ""));
    }

    #[test]
    fn a_false_start_is_released() {
        let mut s = ReasoningSplitter::new(true, true);
        assert_eq!(s.push("<th"), split("", ""));
        assert_eq!(s.push("e"), split("<the", ""));
        let mut s = ReasoningSplitter::new(true, true);
        assert_eq!(s.push("</"), split("", ""));
        assert_eq!(s.push("x"), split("</x", ""));
    }

    #[test]
    fn disabled_is_all_content() {
        assert_eq!(
            run(false, &["<think>\na", "</think>b"]),
            (split("", "<think>\na</think>b"), false)
        );
    }

    fn text_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                Just("<think>"),
                Just("</think>"),
                Just("<"),
                Just("</"),
                Just("think"),
                Just(">"),
                Just("\n"),
                Just("a"),
                Just("｜"),
            ],
            0..12,
        )
        .prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn chunking_never_changes_the_split(
            enabled in any::<bool>(),
            text in text_strategy(),
            cuts in prop::collection::vec(0usize..80, 0..10),
        ) {
            let pieces = crate::engine::llm::test_support::split_at_chars(&text, &cuts);
            let whole = run(enabled, &[text.as_str()]);
            prop_assert_eq!(run(enabled, &pieces), whole.clone());
            // Nothing is lost except the tags that were consumed.
            let (s, closed) = whole;
            prop_assert!(s.reasoning.len() + s.content.len() <= text.len());
            prop_assert_eq!(closed, enabled && text.contains(CLOSE));
        }
    }
}
