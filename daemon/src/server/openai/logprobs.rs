//! The engine's per-token logprobs in OpenAI's two shapes: chat's
//! `{"content": [{token, logprob, bytes, top_logprobs}]}` and the legacy
//! completion's `{tokens, token_logprobs, top_logprobs, text_offset}`.
//! A token's text is the token decoded alone; `bytes` are that text's
//! UTF-8 bytes.
//!
//! Written straight into the answer as it is serialized, a token at a
//! time: as a `serde_json::Value` tree, 20 alternatives of a token would
//! take some 10 KB, so a long whole answer would hold several times its
//! own size.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use super::wire::Endpoint;
use crate::engine::llm::logprobs::TokenLogprob;
use crate::engine::llm::tokenizer::Tokenizer;

/// What OpenAI sends for a token too unlikely to have a finite logprob:
/// JSON has no -inf.
const UNLIKELY: f64 = -9999.0;

fn number(logprob: f32) -> f64 {
    let logprob = f64::from(logprob);
    // NaN fails the comparison too.
    if logprob >= UNLIKELY {
        logprob
    } else {
        UNLIKELY
    }
}

/// `tokens`' logprobs in `endpoint`'s shape, serialized on demand.
#[derive(Debug)]
pub(super) struct Logprobs<'a> {
    endpoint: Endpoint,
    tokenizer: &'a Tokenizer,
    tokens: &'a [TokenLogprob],
    /// The legacy `text_offset` of the first token: a stream's chunks go
    /// on from the one before.
    offset: usize,
}

impl<'a> Logprobs<'a> {
    pub(super) fn new(
        endpoint: Endpoint,
        tokenizer: &'a Tokenizer,
        tokens: &'a [TokenLogprob],
        offset: usize,
    ) -> Self {
        Self {
            endpoint,
            tokenizer,
            tokens,
            offset,
        }
    }

    /// The legacy `text_offset` after the last token, where the next
    /// chunk's starts.
    pub(super) fn end_offset(&self) -> usize {
        self.offsets()
            .last()
            .map_or(self.offset, |(at, text)| at + text.chars().count())
    }

    /// Each token's text and `text_offset`: the characters of the tokens
    /// before it, as they are decoded alone.
    fn offsets(&self) -> impl Iterator<Item = (usize, String)> + '_ {
        self.tokens.iter().scan(self.offset, |at, token| {
            let text = self.tokenizer.token_text(token.id);
            let here = *at;
            *at += text.chars().count();
            Some((here, text))
        })
    }

    fn chat_token(&self, token: &TokenLogprob) -> ChatToken {
        let entry = |id, logprob| {
            let text = self.tokenizer.token_text(id);
            ChatToken {
                bytes: text.clone().into_bytes(),
                logprob: number(logprob),
                token: text,
                top_logprobs: None,
            }
        };
        ChatToken {
            top_logprobs: Some(
                token
                    .top
                    .iter()
                    .map(|&(id, logprob)| entry(id, logprob))
                    .collect(),
            ),
            ..entry(token.id, token.logprob)
        }
    }

    /// A legacy `top_logprobs` object: the alternatives and the chosen
    /// token, so up to `logprobs + 1` keys, as OpenAI documents; of two
    /// with the same text, the likelier (the first) is kept.
    fn legacy_top(&self, token: &TokenLogprob) -> BTreeMap<String, f64> {
        let mut top = BTreeMap::new();
        for &(id, logprob) in token.top.iter().chain([(token.id, token.logprob)].iter()) {
            top.entry(self.tokenizer.token_text(id))
                .or_insert(number(logprob));
        }
        top
    }
}

/// A chat logprob entry, keys in the order the rest of the answer's have;
/// the alternatives have no `top_logprobs` of their own.
#[derive(Debug, Serialize)]
struct ChatToken {
    bytes: Vec<u8>,
    logprob: f64,
    token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_logprobs: Option<Vec<ChatToken>>,
}

/// A JSON array of what `F` yields, made while it is written.
struct Lazy<F>(F);

impl<F, I> Serialize for Lazy<F>
where
    F: Fn() -> I,
    I: Iterator,
    I::Item: Serialize,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq((self.0)())
    }
}

impl Serialize for Logprobs<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        match self.endpoint {
            Endpoint::Chat => map.serialize_entry(
                "content",
                &Lazy(|| self.tokens.iter().map(|t| self.chat_token(t))),
            )?,
            Endpoint::Completions => {
                map.serialize_entry("text_offset", &Lazy(|| self.offsets().map(|(at, _)| at)))?;
                map.serialize_entry(
                    "token_logprobs",
                    &Lazy(|| self.tokens.iter().map(|t| number(t.logprob))),
                )?;
                map.serialize_entry("tokens", &Lazy(|| self.offsets().map(|(_, text)| text)))?;
                map.serialize_entry(
                    "top_logprobs",
                    &Lazy(|| self.tokens.iter().map(|t| self.legacy_top(t))),
                )?;
            }
        }
        map.end()
    }
}
