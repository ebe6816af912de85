//! Chat templates, rendered with minijinja the way transformers renders
//! them (`trim_blocks`, `lstrip_blocks`, Python string methods,
//! `raise_exception`, transformers' `tojson`).

use minijinja::value::{Kwargs, Serde, Value};
use minijinja::{Environment, ErrorKind, context};
use serde::Serialize;

use super::tools::{HistoryCall, ToolFormat};

/// One message of a conversation, as the template sees it. The tool fields
/// are left out when absent, as a client's message without them would be.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<HistoryCall>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// The template uses the `tools` variable.
    takes_tools: bool,
    /// The format its tool calls are written in, when it is one parsed.
    tool_format: Option<ToolFormat>,
}

/// Why a template could not be compiled or rendered; a render error
/// (`raise_exception`, an unsupported role) is the client's to fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(String);

fn message(e: &minijinja::Error) -> String {
    match (e.kind(), e.detail()) {
        (ErrorKind::InvalidOperation, Some(detail)) => detail.to_owned(),
        _ => e.to_string(),
    }
}

impl ChatTemplate {
    pub fn new(
        source: String,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| TemplateError(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |text: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, text))
            },
        );
        env.add_filter("tojson", tojson);
        let tool_format = ToolFormat::of_template(&source);
        env.add_template_owned("chat", source)
            .map_err(|e| TemplateError(format!("the chat template does not compile: {e}")))?;
        let takes_tools = env
            .get_template("chat")
            .map_err(|e| TemplateError(e.to_string()))?
            .undeclared_variables(false)
            .contains("tools");
        Ok(Self {
            env,
            bos_token: bos_token.unwrap_or_default(),
            eos_token: eos_token.unwrap_or_default(),
            takes_tools,
            tool_format,
        })
    }

    /// Whether the template uses `tools`, and the format of its calls
    /// when it is one this server parses.
    pub fn tool_support(&self) -> (bool, Option<ToolFormat>) {
        (self.takes_tools, self.tool_format)
    }

    /// The prompt for `messages`, ending where the assistant's answer
    /// starts. `tools` is none unless the request offers some, as
    /// transformers passes it.
    pub fn render(
        &self,
        messages: &[Message],
        tools: Option<Value>,
    ) -> Result<String, TemplateError> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| TemplateError(e.to_string()))?;
        template
            .render(context! {
                messages => Serde(messages),
                tools => tools,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
                add_generation_prompt => true,
            })
            .map_err(|e| TemplateError(message(&e)))
    }
}

/// transformers' `tojson`: Python's `json.dumps(value, ensure_ascii=False,
/// indent=indent)`, keys in their order, nothing escaped for HTML
/// (minijinja's own escapes `<`, `>`, `&` and `'`, which would change the
/// prompt of every template that writes JSON). Floats are written as Rust
/// writes them, which differs from Python only in exponents (`1e-7` for
/// `1e-07`).
fn tojson(value: &Value, indent: Option<usize>, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let indent = match indent {
        Some(indent) => Some(indent),
        None => kwargs.get::<Option<usize>>("indent")?,
    };
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let written = match indent {
        Some(width) => {
            let spaces = " ".repeat(width);
            let formatter = serde_json::ser::PrettyFormatter::with_indent(spaces.as_bytes());
            value.serialize(&mut serde_json::Serializer::with_formatter(
                &mut out, formatter,
            ))
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(
            &mut out, Spaced,
        )),
    };
    written.map_err(|e| {
        minijinja::Error::new(ErrorKind::InvalidOperation, "cannot serialize to JSON")
            .with_source(e)
    })?;
    Ok(Value::from_safe_string(String::from_utf8(out).map_err(
        |e| minijinja::Error::new(ErrorKind::InvalidOperation, "JSON is not UTF-8").with_source(e),
    )?))
}

/// Python's default JSON separators: `", "` and `": "`.
struct Spaced;

impl serde_json::ser::Formatter for Spaced {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::llm::test_support as fixture;

    fn fixture() -> (ChatTemplate, serde_json::Value) {
        (fixture::template(), fixture::json("expected.json"))
    }

    #[test]
    fn renders_byte_for_byte_as_transformers() {
        let (template, expected) = fixture();
        let mut chats = 0;
        for prompt in expected["prompts"].as_array().expect("prompts") {
            if prompt["kind"] != "chat" {
                continue;
            }
            let messages = fixture::messages(&prompt["messages"]);
            let rendered = template.render(&messages, None).expect("render");
            assert_eq!(rendered, prompt["prompt"].as_str().expect("prompt"));
            assert_eq!(rendered.matches("<｜begin▁of▁sentence｜>").count(), 1);
            chats += 1;
        }
        assert_eq!(chats, 3);
    }

    #[test]
    fn raise_exception_gives_the_templates_message() {
        let (template, _) = fixture();
        let err = template
            .render(
                &[Message {
                    role: "tool".to_owned(),
                    content: "x".to_owned(),
                    ..Message::default()
                }],
                None,
            )
            .expect_err("tool role");
        assert_eq!(
            err.to_string(),
            "Only system, user and assistant roles are supported."
        );
    }

    #[test]
    fn tojson_is_pythons_json_dumps_and_tools_are_detected() {
        let source =
            "{{ tools | tojson }}|{{ tools | tojson(indent=2) }}|{{ messages[0] | tojson }}";
        let template = ChatTemplate::new(source.to_owned(), None, None).expect("compiles");
        assert_eq!(template.tool_support(), (true, None));
        let tools: Value =
            serde_json::from_str(r#"[{"z": "<&'>", "a": [1, 2.5, null]}, {}]"#).expect("JSON");
        let rendered = template
            .render(
                &[Message {
                    role: "user".to_owned(),
                    content: "é\n".to_owned(),
                    ..Message::default()
                }],
                Some(tools),
            )
            .expect("render");
        assert_eq!(
            rendered,
            "[{\"z\": \"<&'>\", \"a\": [1, 2.5, null]}, {}]|[\n  {\n    \"z\": \"<&'>\",\n    \"a\": [\n      1,\n      2.5,\n      null\n    ]\n  },\n  {}\n]|{\"role\": \"user\", \"content\": \"é\\n\"}"
        );
        let (stock, _) = fixture();
        assert_eq!(stock.tool_support(), (false, None));
    }
}
