//! Chat templates, rendered with minijinja the way transformers renders
//! them (`trim_blocks`, `lstrip_blocks`, Python string methods,
//! `raise_exception`).

use minijinja::value::Serde;
use minijinja::{Environment, ErrorKind, context};
use serde::Serialize;

/// One message of a conversation, as the template sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
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
        env.add_template_owned("chat", source)
            .map_err(|e| TemplateError(format!("the chat template does not compile: {e}")))?;
        Ok(Self {
            env,
            bos_token: bos_token.unwrap_or_default(),
            eos_token: eos_token.unwrap_or_default(),
        })
    }

    /// The prompt for `messages`, ending where the assistant's answer starts.
    pub fn render(&self, messages: &[Message]) -> Result<String, TemplateError> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| TemplateError(e.to_string()))?;
        template
            .render(context! {
                messages => Serde(messages),
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
                add_generation_prompt => true,
            })
            .map_err(|e| TemplateError(message(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::llm::test_support as fixture;
    use serde_json::Value;

    fn fixture() -> (ChatTemplate, Value) {
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
            let rendered = template.render(&messages).expect("render");
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
            .render(&[Message {
                role: "tool".to_owned(),
                content: "x".to_owned(),
            }])
            .expect_err("tool role");
        assert_eq!(
            err.to_string(),
            "Only system, user and assistant roles are supported."
        );
    }
}
