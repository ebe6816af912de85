//! Tool calls out of a model's answer while it streams: text flows on as
//! content until the format's start marker, which may arrive cut across
//! pieces (a tail that could begin it is held back, as the reasoning
//! splitter holds back tags); from the marker on, the text is kept and
//! read as calls at the end. What is kept is bounded by the generation's
//! `max_tokens` (each token's text is at most the vocabulary's longest).
//!
//! Text that is not well-formed calls of the functions offered (JSON that
//! does not parse, an unknown function, a call cut off by `max_tokens`)
//! is returned as content, not as an error, as vLLM does: the client sees
//! what the model wrote.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::tools::{
    Calls, DEEPSEEK_CALL_BEGIN, DEEPSEEK_CALL_END, DEEPSEEK_CALLS_BEGIN, DEEPSEEK_CALLS_END,
    DEEPSEEK_SEP, FunctionCall, HERMES_BEGIN, HERMES_END, ToolFormat,
};

/// Parses one answer's calls as it streams.
#[derive(Debug)]
pub(crate) struct CallParser {
    parsing: Calls,
    /// Content not yet released: a tail that could begin the start marker.
    held: String,
    /// From the start marker on, once it came.
    calls: Option<String>,
}

impl CallParser {
    /// A forced choice's answer is all calls: kept whole from the start.
    pub(crate) fn new(parsing: Calls) -> Self {
        let calls = matches!(parsing, Calls::Forced(_)).then(String::new);
        Self {
            parsing,
            held: String::new(),
            calls,
        }
    }

    /// Feeds the next piece of content; returns the content released now.
    pub(crate) fn push(&mut self, text: &str) -> String {
        if let Some(calls) = &mut self.calls {
            calls.push_str(text);
            return String::new();
        }
        self.held.push_str(text);
        let start = match &self.parsing {
            Calls::Parse(parsing) => parsing.format.start(),
            // Kept from the start ([`CallParser::new`]); never reached.
            Calls::Forced(_) => {
                self.calls = Some(std::mem::take(&mut self.held));
                return String::new();
            }
        };
        if let Some(at) = self.held.find(start) {
            self.calls = Some(self.held.split_off(at));
            return std::mem::take(&mut self.held);
        }
        // Keep the longest tail that is a prefix of the marker.
        let keep = (1..start.len().min(self.held.len() + 1))
            .rev()
            .find(|&n| {
                let from = self.held.len() - n;
                self.held.is_char_boundary(from) && start.starts_with(&self.held[from..])
            })
            .unwrap_or(0);
        let rest = self.held.split_off(self.held.len() - keep);
        std::mem::replace(&mut self.held, rest)
    }

    /// The content still held and the calls, at the end of the answer.
    /// No calls unless every one parsed; then what was kept is content.
    pub(crate) fn finish(self) -> (String, Vec<FunctionCall>) {
        let Some(text) = self.calls else {
            return (self.held, Vec::new());
        };
        let parsing = match self.parsing {
            Calls::Parse(parsing) => parsing,
            // Constrained, so it parses unless max_tokens cut it short.
            Calls::Forced(forced) => {
                return match forced.calls(&text) {
                    Ok(calls) => (String::new(), calls),
                    Err(_) => (text, Vec::new()),
                };
            }
        };
        let parsed = match parsing.format {
            ToolFormat::DeepSeek => deepseek(&text),
            ToolFormat::Hermes => hermes(&text),
        };
        match parsed {
            Some((calls, rest)) if calls.iter().all(|c| parsing.names.contains(&c.name)) => {
                (rest, calls)
            }
            _ => (text, Vec::new()),
        }
    }
}

/// The arguments, if they are a JSON object, as written.
fn arguments(text: &str) -> Option<String> {
    let text = text.trim();
    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text).ok()?;
    Some(text.to_owned())
}

/// DeepSeek's calls, and the text after them (nothing when it is
/// whitespace). The closing `<｜tool▁calls▁end｜>` may be missing (an end
/// of sequence right after the last call).
fn deepseek(text: &str) -> Option<(Vec<FunctionCall>, String)> {
    let mut rest = text.strip_prefix(DEEPSEEK_CALLS_BEGIN)?;
    let mut calls = Vec::new();
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix(DEEPSEEK_CALLS_END) {
            rest = after;
            break;
        }
        if rest.is_empty() {
            break;
        }
        let body = rest.strip_prefix(DEEPSEEK_CALL_BEGIN)?;
        let (call, after) = body.split_once(DEEPSEEK_CALL_END)?;
        rest = after;
        let (kind, call) = call.split_once(DEEPSEEK_SEP)?;
        if kind.trim() != "function" {
            return None;
        }
        let (name, args) = call.split_once('\n')?;
        let args = args.trim();
        let args = args
            .strip_prefix("```json")
            .and_then(|a| a.strip_suffix("```"))
            .unwrap_or(args);
        calls.push(FunctionCall {
            name: name.trim().to_owned(),
            arguments: arguments(args)?,
        });
    }
    (!calls.is_empty()).then(|| (calls, trailing(rest)))
}

/// Hermes' calls, and the text after them.
fn hermes(text: &str) -> Option<(Vec<FunctionCall>, String)> {
    #[derive(Deserialize)]
    struct Call {
        name: String,
        #[serde(default)]
        arguments: Option<Box<RawValue>>,
    }
    let mut rest = text;
    let mut calls = Vec::new();
    while let Some(body) = rest.trim_start().strip_prefix(HERMES_BEGIN) {
        let (call, after) = body.split_once(HERMES_END)?;
        rest = after;
        let call: Call = serde_json::from_str(call.trim()).ok()?;
        calls.push(FunctionCall {
            name: call.name,
            arguments: match call.arguments {
                Some(raw) => arguments(raw.get())?,
                None => "{}".to_owned(),
            },
        });
    }
    (!calls.is_empty()).then(|| (calls, trailing(rest)))
}

fn trailing(rest: &str) -> String {
    if rest.trim().is_empty() {
        String::new()
    } else {
        rest.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::llm::test_support::split_at_chars;
    use crate::engine::llm::tools::{Forced, Tool, ToolConstraint, ToolParsing};

    fn parser(format: ToolFormat) -> CallParser {
        CallParser::new(Calls::Parse(ToolParsing {
            format,
            names: vec!["get_weather".to_owned(), "add".to_owned()],
        }))
    }

    #[test]
    fn a_forced_choice_reads_the_whole_answer_as_its_calls() {
        let tools = [Tool {
            name: "add".to_owned(),
            description: None,
            parameters: None,
        }];
        let forced = |choice| {
            CallParser::new(Calls::Forced(
                ToolConstraint::new(&tools, choice).expect("schema"),
            ))
        };
        let mut parser = forced(Forced::Function("add".to_owned()));
        assert_eq!(parser.push("{\"a\": "), "");
        assert_eq!(parser.push("1}"), "");
        let (content, calls) = parser.finish();
        assert_eq!(content, "");
        assert_eq!(
            calls,
            [FunctionCall {
                name: "add".to_owned(),
                arguments: "{\"a\":1}".to_owned()
            }]
        );
        let mut parser = forced(Forced::Required);
        parser.push("[{\"name\": \"add\", \"parameters\": {}}]");
        assert_eq!(parser.finish().1.len(), 1);
        // Cut short by max_tokens: what was written is content.
        let mut parser = forced(Forced::Function("add".to_owned()));
        parser.push("{\"a\": ");
        assert_eq!(parser.finish(), ("{\"a\": ".to_owned(), Vec::new()));
    }

    /// Content released while streaming `pieces`, then at the end, and the calls.
    fn run(format: ToolFormat, pieces: &[&str]) -> (String, String, Vec<FunctionCall>) {
        let mut parser = parser(format);
        let streamed: String = pieces.iter().map(|p| parser.push(p)).collect();
        let (rest, calls) = parser.finish();
        (streamed, rest, calls)
    }

    fn call(name: &str, arguments: &str) -> FunctionCall {
        FunctionCall {
            name: name.to_owned(),
            arguments: arguments.to_owned(),
        }
    }

    const DEEPSEEK: &str = "Let me check.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>add\n```json\n{\"a\": 1, \"b\": [2]}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";

    #[test]
    fn deepseek_calls_are_parsed_however_the_text_is_cut() {
        let want = vec![
            call("get_weather", r#"{"city": "Paris"}"#),
            call("add", r#"{"a": 1, "b": [2]}"#),
        ];
        let chars = DEEPSEEK.chars().count();
        for step in [1, 2, 3, 5, 7, 11, chars] {
            let cuts: Vec<usize> = (step..chars).step_by(step).collect();
            let pieces = split_at_chars(DEEPSEEK, &cuts);
            let (streamed, rest, calls) = run(ToolFormat::DeepSeek, &pieces);
            assert_eq!(streamed, "Let me check.", "step {step}");
            assert_eq!(rest, "", "step {step}");
            assert_eq!(calls, want, "step {step}");
        }
    }

    #[test]
    fn content_flows_until_the_marker_and_a_false_start_is_released() {
        let mut parser = parser(ToolFormat::DeepSeek);
        assert_eq!(parser.push("a <｜tool"), "a ");
        assert_eq!(parser.push("▁x"), "<｜tool▁x");
        assert_eq!(parser.push(" <"), " ");
        let (rest, calls) = parser.finish();
        assert_eq!((rest.as_str(), calls.len()), ("<", 0));
    }

    #[test]
    fn a_missing_closing_marker_and_no_fence_are_accepted() {
        let text = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>add\n{\"a\":1}<｜tool▁call▁end｜>";
        let (streamed, rest, calls) = run(ToolFormat::DeepSeek, &[text]);
        assert_eq!((streamed.as_str(), rest.as_str()), ("", ""));
        assert_eq!(calls, [call("add", r#"{"a":1}"#)]);
    }

    #[test]
    fn malformed_calls_are_content() {
        let begin = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>";
        for text in [
            // Bad JSON, arguments not an object, an unknown function, cut off.
            format!("{begin}add\n```json\n{{\"a\":\n```<｜tool▁call▁end｜>"),
            format!("{begin}add\n```json\n[1]\n```<｜tool▁call▁end｜>"),
            format!("{begin}rm_rf\n```json\n{{}}\n```<｜tool▁call▁end｜>"),
            format!("{begin}add\n```json\n{{\"a\": 1"),
            "<｜tool▁calls▁begin｜>".to_owned(),
            format!("{begin}add<｜tool▁call▁end｜>"),
        ] {
            let (streamed, rest, calls) = run(ToolFormat::DeepSeek, &["ok ", &text]);
            assert_eq!(streamed, "ok ");
            assert_eq!(rest, text);
            assert!(calls.is_empty(), "{text}");
        }
    }

    #[test]
    fn text_after_the_calls_is_content() {
        let text = format!("{DEEPSEEK} done");
        let (_, rest, calls) = run(ToolFormat::DeepSeek, &[&text]);
        assert_eq!((rest.as_str(), calls.len()), (" done", 2));
    }

    #[test]
    fn hermes_calls_are_parsed_however_the_text_is_cut() {
        let text = "Sure.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"add\"}\n</tool_call>\n";
        let chars = text.chars().count();
        for step in [1, 2, 3, 4, chars] {
            let cuts: Vec<usize> = (step..chars).step_by(step).collect();
            let (streamed, rest, calls) = run(ToolFormat::Hermes, &split_at_chars(text, &cuts));
            assert_eq!(streamed, "Sure.\n", "step {step}");
            assert_eq!(rest, "", "step {step}");
            assert_eq!(
                calls,
                [
                    call("get_weather", r#"{"city": "Paris"}"#),
                    call("add", "{}")
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn malformed_hermes_calls_are_content() {
        for text in [
            "<tool_call>{\"name\": \"add\", \"arguments\": 3}</tool_call>",
            "<tool_call>{\"name\": \"nope\"}</tool_call>",
            "<tool_call>{\"name\": \"add\"",
            "<tool_call>not json</tool_call>",
        ] {
            let (streamed, rest, calls) = run(ToolFormat::Hermes, &[text]);
            assert_eq!((streamed.as_str(), rest.as_str()), ("", text));
            assert!(calls.is_empty(), "{text}");
        }
    }

    #[test]
    fn without_a_marker_everything_is_content() {
        let (streamed, rest, calls) = run(ToolFormat::Hermes, &["plain ", "answer <tool"]);
        assert_eq!(format!("{streamed}{rest}"), "plain answer <tool");
        assert!(calls.is_empty());
    }
}
