//! What the unit tests share: the tiny-r1 fixture and its recorded
//! outputs, and the chunkings the streaming property tests try.

use std::path::PathBuf;

use serde_json::Value;

use super::template::{ChatTemplate, Message};
use super::tokenizer::Tokenizer;

pub(crate) fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/llm/tiny-r1")
}

/// `dir()/name`, parsed.
pub(crate) fn json(name: &str) -> Value {
    let bytes = std::fs::read(dir().join(name)).expect("fixture file");
    serde_json::from_slice(&bytes).expect("fixture JSON")
}

/// The fixture's chat template, from `tokenizer_config.json`.
pub(crate) fn template() -> ChatTemplate {
    let config = json("tokenizer_config.json");
    let text = |key: &str| config[key].as_str().map(str::to_owned);
    ChatTemplate::new(
        text("chat_template").expect("template"),
        text("bos_token"),
        text("eos_token"),
    )
    .expect("compiles")
}

/// The fixture's `tokenizer.json`, loaded.
pub(crate) fn tokenizer() -> Tokenizer {
    let bytes = std::fs::read(dir().join("tokenizer.json")).expect("tokenizer.json");
    Tokenizer::from_bytes(&bytes).expect("tokenizer")
}

/// A chat's messages as `expected.json` lists them.
pub(crate) fn messages(value: &Value) -> Vec<Message> {
    value
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| Message {
            role: m["role"].as_str().expect("role").to_owned(),
            content: m["content"].as_str().expect("content").to_owned(),
            ..Message::default()
        })
        .collect()
}

/// Token ids as `expected.json` lists them.
pub(crate) fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| u32::try_from(v.as_u64().expect("id")).expect("u32"))
        .collect()
}

/// `text` cut before the characters at the indices `cuts` (those past the
/// end ignored): the chunkings the streaming property tests try.
pub(crate) fn split_at_chars<'a>(text: &'a str, cuts: &[usize]) -> Vec<&'a str> {
    let mut bounds: Vec<usize> = cuts
        .iter()
        .filter_map(|&c| text.char_indices().nth(c).map(|(i, _)| i))
        .collect();
    bounds.push(0);
    bounds.push(text.len());
    bounds.sort_unstable();
    bounds.dedup();
    bounds.windows(2).map(|w| &text[w[0]..w[1]]).collect()
}
