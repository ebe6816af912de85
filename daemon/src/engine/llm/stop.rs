//! Stop strings, cut exactly where they start even when the match spans
//! several decoded tokens.
//!
//! Decoded text arrives in arbitrary pieces, so a stop string may begin in
//! one piece and end several pieces later. The matcher holds back any tail
//! that could still grow into a match and only emits text that no stop
//! string can begin in. The result does not depend on how the text was cut:
//! the emitted text is always the text before the earliest occurrence of
//! any stop string, even when a shorter stop string completes first inside
//! a longer one that started earlier.

/// Streams text through a set of stop strings.
#[derive(Debug)]
pub(crate) struct StopMatcher {
    stops: Vec<String>,
    /// Text not yet emitted: it may still be the start of a match.
    pending: String,
    /// The longest stop string in bytes; no useful tail is longer.
    max_len: usize,
    /// Set once a stop matched (or `finish` ran): nothing more is emitted.
    done: bool,
}

/// What a [`StopMatcher::push`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StopOutcome {
    /// Text that is safe to emit now (may be empty: a suffix is held back
    /// because it could be the start of a stop string).
    Continue(String),
    /// A stop string matched: this is the text before the earliest match;
    /// generation ends; nothing after it is ever emitted.
    Stopped(String),
}

impl StopMatcher {
    /// Empty strings are ignored (they would match before any text); with
    /// no stop strings the matcher passes text straight through.
    pub(crate) fn new(stops: Vec<String>) -> Self {
        let mut stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
        stops.sort_unstable();
        stops.dedup();
        let max_len = stops.iter().map(String::len).max().unwrap_or(0);
        Self {
            stops,
            pending: String::new(),
            max_len,
            done: false,
        }
    }

    /// Feeds the next piece of decoded text. After `Stopped`, every later
    /// call answers `Stopped("")`.
    pub(crate) fn push(&mut self, text: &str) -> StopOutcome {
        if self.done {
            return StopOutcome::Stopped(String::new());
        }
        if self.stops.is_empty() {
            return StopOutcome::Continue(text.to_owned());
        }
        self.pending.push_str(text);
        let matched = self.earliest_match();
        // A stop string that starts before the match found may still
        // complete with text to come; until then the match cannot be final.
        if let Some(hold) = self.hold_from(matched.unwrap_or(self.pending.len() + 1)) {
            let rest = self.pending.split_off(hold);
            return StopOutcome::Continue(std::mem::replace(&mut self.pending, rest));
        }
        match matched {
            Some(at) => {
                self.done = true;
                self.pending.truncate(at);
                StopOutcome::Stopped(std::mem::take(&mut self.pending))
            }
            None => StopOutcome::Continue(std::mem::take(&mut self.pending)),
        }
    }

    /// End of generation without a match: the held-back text. (A match
    /// that was only held because a longer stop string might still have
    /// completed is cut here too.)
    pub(crate) fn finish(&mut self) -> String {
        if self.done {
            return String::new();
        }
        self.done = true;
        if let Some(at) = self.earliest_match() {
            self.pending.truncate(at);
        }
        std::mem::take(&mut self.pending)
    }

    /// The byte offset in `pending` where the earliest stop string starts.
    fn earliest_match(&self) -> Option<usize> {
        self.stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
    }

    /// The start of the longest tail of `pending`, beginning before
    /// `before`, that is a proper prefix of some stop string.
    fn hold_from(&self, before: usize) -> Option<usize> {
        let len = self.pending.len();
        let first = len.saturating_sub(self.max_len.saturating_sub(1));
        (first..len.min(before))
            .filter(|&i| self.pending.is_char_boundary(i))
            .find(|&i| {
                let tail = &self.pending[i..];
                self.stops
                    .iter()
                    .any(|s| s.len() > tail.len() && s.starts_with(tail))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn matcher(stops: &[&str]) -> StopMatcher {
        StopMatcher::new(stops.iter().map(|s| (*s).to_owned()).collect())
    }

    fn cont(s: &str) -> StopOutcome {
        StopOutcome::Continue(s.to_owned())
    }

    fn stopped(s: &str) -> StopOutcome {
        StopOutcome::Stopped(s.to_owned())
    }

    /// Streams `pieces` and returns everything emitted, and whether it stopped.
    fn stream(m: &mut StopMatcher, pieces: &[&str]) -> (String, bool) {
        let mut out = String::new();
        for p in pieces {
            match m.push(p) {
                StopOutcome::Continue(t) => out.push_str(&t),
                StopOutcome::Stopped(t) => {
                    out.push_str(&t);
                    return (out, true);
                }
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn fixture_pushes() {
        let mut m = matcher(&[" worter"]);
        assert_eq!(m.push("R"), cont("R"));
        assert_eq!(m.push(" o"), cont(" o"));
        assert_eq!(m.push("<｜Assistant｜>"), cont("<｜Assistant｜>"));
        assert_eq!(m.push("|"), cont("|"));
        assert_eq!(m.push("ti"), cont("ti"));
        assert_eq!(m.push("G"), cont("G"));
        assert_eq!(m.push(" wor"), cont(""));
        assert_eq!(m.push("ter"), stopped(""));
        assert_eq!(m.push("more"), stopped(""));
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn multibyte_stop_across_pushes() {
        let mut m = matcher(&["<｜Assistant｜>"]);
        assert_eq!(m.push("Hi <"), cont("Hi "));
        assert_eq!(m.push("｜Assist"), cont(""));
        assert_eq!(m.push("ant｜"), cont(""));
        assert_eq!(m.push(">tail"), stopped(""));
        let mut m = matcher(&["<｜Assistant｜>"]);
        assert_eq!(m.push("a<｜"), cont("a"));
        assert_eq!(m.push("x"), cont("<｜x"));
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn match_inside_one_push() {
        let mut m = matcher(&["STOP"]);
        assert_eq!(m.push("abcSTOPdef"), stopped("abc"));
    }

    #[test]
    fn held_tail_is_flushed_at_finish() {
        let mut m = matcher(&["worter"]);
        assert_eq!(m.push("a wor"), cont("a "));
        assert_eq!(m.finish(), "wor");
    }

    #[test]
    fn no_stops_pass_through() {
        let mut m = matcher(&["", ""]);
        assert_eq!(m.push("abc"), cont("abc"));
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn one_char_at_a_time() {
        let text = "x｜y ab｜｜c done";
        let pieces: Vec<String> = text.chars().map(String::from).collect();
        let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
        let mut m = matcher(&["｜｜c"]);
        assert_eq!(stream(&mut m, &pieces), ("x｜y ab".to_owned(), true));
    }

    #[test]
    fn the_earliest_start_wins_over_the_first_completed() {
        // "bc" completes first, but "abcd" started earlier.
        let mut m = matcher(&["abcd", "bc"]);
        assert_eq!(m.push("xab"), cont("x"));
        assert_eq!(m.push("c"), cont(""));
        assert_eq!(m.push("d"), stopped(""));
        // When the longer one fails, the shorter match stands.
        let mut m = matcher(&["abcd", "bc"]);
        assert_eq!(m.push("xabc"), cont("x"));
        assert_eq!(m.push("e"), stopped("a"));
        // And at the end of generation too.
        let mut m = matcher(&["abcd", "bc"]);
        assert_eq!(m.push("xabc"), cont("x"));
        assert_eq!(m.finish(), "a");
    }

    #[test]
    fn overlapping_self_prefix() {
        let mut m = matcher(&["aab"]);
        assert_eq!(
            stream(&mut m, &["a", "a", "a", "b", "z"]),
            ("a".to_owned(), true)
        );
    }

    /// Text from a small alphabet (with multi-byte chars) so stops recur.
    fn text_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                Just("a"),
                Just("b"),
                Just(" "),
                Just("｜"),
                Just("é"),
                Just("<"),
                Just("🦀"),
            ],
            0..40,
        )
        .prop_map(|v| v.concat())
    }

    fn char_slice(text: &str, from: usize, len: usize) -> String {
        text.chars().skip(from).take(len).collect()
    }

    proptest! {
        #[test]
        fn chunking_never_changes_the_output(
            text in text_strategy(),
            stop_specs in prop::collection::vec(
                (any::<bool>(), 0usize..40, 1usize..6, text_strategy()),
                1..4,
            ),
            cuts in prop::collection::vec(0usize..40, 0..12),
        ) {
            let n_chars = text.chars().count();
            let stops: Vec<String> = stop_specs
                .into_iter()
                .map(|(from_text, at, len, other)| {
                    if from_text && n_chars > 0 {
                        char_slice(&text, at % n_chars, len)
                    } else {
                        char_slice(&other, 0, len)
                    }
                })
                .collect();
            let first = stops
                .iter()
                .filter(|s| !s.is_empty())
                .filter_map(|s| text.find(s.as_str()))
                .min();
            let expected = &text[..first.unwrap_or(text.len())];

            let pieces = crate::engine::llm::test_support::split_at_chars(&text, &cuts);

            let mut m = StopMatcher::new(stops);
            let (out, was_stopped) = stream(&mut m, &pieces);
            prop_assert_eq!(out.as_str(), expected);
            // A stop reported while streaming is always a real one.
            if was_stopped {
                prop_assert!(first.is_some());
            }
        }
    }
}
