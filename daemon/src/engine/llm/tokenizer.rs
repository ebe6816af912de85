//! The model's `tokenizer.json`, loaded offline with the `tokenizers` crate,
//! and streaming detokenization that never hands a client half a character.

use std::sync::Arc;

use tokenizers::Tokenizer as HfTokenizer;

/// Why text could not be turned into tokens or back.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TokenizerError(String);

/// A loaded tokenizer; cheap to share.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: Arc<HfTokenizer>,
}

impl Tokenizer {
    /// Parses `tokenizer.json`. The crate's rayon parallelism is switched off
    /// (process-wide): a request is one sequence, and threads started after
    /// the lockdown buy nothing.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TokenizerError> {
        tokenizers::utils::parallelism::set_parallelism(false);
        let inner = HfTokenizer::from_bytes(bytes).map_err(|e| TokenizerError(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Token ids of `text`. Chat prompts pass `add_special_tokens = false`
    /// (the template writes BOS itself); completions pass `true` (BOS from
    /// the post-processor), as transformers does.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        self.inner
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError(e.to_string()))
    }

    /// Text of `ids` without special tokens (BOS, EOS, pad).
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| TokenizerError(e.to_string()))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Tokens the tokenizer can produce: logits of ids at or above this
    /// (a graph's vocabulary is often padded) are never sampled.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// A detokenizer for one generation.
    pub fn stream(&self) -> TextStream<'_> {
        TextStream {
            tokenizer: self,
            stream: self.inner.decode_stream(true),
            ids: Vec::new(),
            emitted: 0,
            broken: false,
        }
    }
}

/// Streaming detokenization: text is released only once it ends on a whole
/// character, and what is released always joins to `decode(all ids)`.
pub struct TextStream<'t> {
    tokenizer: &'t Tokenizer,
    stream: tokenizers::tokenizer::DecodeStream<
        't,
        tokenizers::ModelWrapper,
        tokenizers::NormalizerWrapper,
        tokenizers::PreTokenizerWrapper,
        tokenizers::PostProcessorWrapper,
        tokenizers::DecoderWrapper,
    >,
    ids: Vec<u32>,
    /// Bytes of text released so far.
    emitted: usize,
    /// The incremental decoder gave up (a decoder that rewrites earlier
    /// text); from then on text is released by full decodes.
    broken: bool,
}

impl std::fmt::Debug for TextStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextStream")
            .field("ids", &self.ids.len())
            .field("emitted", &self.emitted)
            .finish_non_exhaustive()
    }
}

impl TextStream<'_> {
    /// Adds one id; returns the text it completes, possibly empty.
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        self.ids.push(id);
        if !self.broken {
            match self.stream.step(id) {
                Ok(Some(text)) => {
                    self.emitted += text.len();
                    return Ok(text);
                }
                Ok(None) => return Ok(String::new()),
                Err(e) => {
                    tracing::debug!(error = %e, "incremental decoding fell back to full decodes");
                    self.broken = true;
                }
            }
        }
        let text = self.tokenizer.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        Ok(self.take_from(text))
    }

    /// The text still held back at the end (an incomplete character comes
    /// out as U+FFFD, as every decoder renders it).
    pub fn finish(&mut self) -> Result<String, TokenizerError> {
        let text = self.tokenizer.decode(&self.ids)?;
        Ok(self.take_from(text))
    }

    fn take_from(&mut self, text: String) -> String {
        let rest = text.get(self.emitted..).unwrap_or_default().to_owned();
        self.emitted = text.len().max(self.emitted);
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::llm::test_support::{self as fixture, ids};
    use serde_json::Value;

    fn fixture() -> (Tokenizer, Value) {
        let bytes = std::fs::read(fixture::dir().join("tokenizer.json")).expect("tokenizer.json");
        let tokenizer = Tokenizer::from_bytes(&bytes).expect("tokenizer");
        (tokenizer, fixture::json("expected.json"))
    }

    #[test]
    fn encodes_and_decodes_as_transformers_does() {
        let (tokenizer, expected) = fixture();
        for prompt in expected["prompts"].as_array().expect("prompts") {
            let add_special = prompt["add_special_tokens"].as_bool().expect("flag");
            let text = prompt["prompt"].as_str().expect("prompt");
            assert_eq!(
                tokenizer.encode(text, add_special).expect("encode"),
                ids(&prompt["prompt_ids"]),
                "{}",
                prompt["name"]
            );
            let greedy = ids(&prompt["greedy"]["ids"]);
            assert_eq!(
                tokenizer.decode(&greedy).expect("decode"),
                prompt["greedy"]["text_skip_special_tokens"]
                    .as_str()
                    .expect("text")
            );
        }
    }

    #[test]
    fn the_stream_never_splits_a_character() {
        let (tokenizer, expected) = fixture();
        for prompt in expected["prompts"].as_array().expect("prompts") {
            let all = ids(&prompt["prompt_ids"]);
            let mut stream = tokenizer.stream();
            let mut chunks = Vec::new();
            for &id in &all {
                chunks.push(stream.push(id).expect("push"));
            }
            chunks.push(stream.finish().expect("finish"));
            assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')), "{chunks:?}");
            assert_eq!(chunks.concat(), tokenizer.decode(&all).expect("decode"));
        }
    }

    #[test]
    fn special_tokens_are_known() {
        let (tokenizer, _) = fixture();
        assert_eq!(tokenizer.token_to_id("<think>"), Some(382));
        assert_eq!(tokenizer.token_to_id("</think>"), Some(383));
        assert_eq!(tokenizer.vocab_size(), 384);
    }
}
