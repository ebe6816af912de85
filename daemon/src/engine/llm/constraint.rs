//! Structured output: the answer is held to a JSON schema while it is
//! decoded, by masking at each step the tokens that cannot continue valid
//! JSON, not by checking and retrying afterwards
//! (docs/development/llm-serving.md, "Structured output").
//!
//! llguidance does the work: a [`Grammars`] per model (the tokenizer's
//! token bytes in a trie), a schema compiled per request into a
//! [`Constraint`], whose mask each [`super::generation::Generation::step`]
//! applies before sampling. For a model that reasons (`<think>` ...
//! `</think>`), the reasoning is free and the constraint starts with the
//! token after `</think>`; until then only the end of the answer is masked,
//! so that it cannot end before its JSON.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::{Value, json};

/// The most bytes of llguidance's message a client is shown: it may quote
/// the schema.
const MAX_MESSAGE_BYTES: usize = 1024;

/// `patternProperties` entries in a whole schema. llguidance checks the
/// patterns of an object pairwise for disjointness, at a cost that grows
/// faster than the square of their number (200 took 0.9 s, 400 took 13 s
/// and 800 over 5 minutes of one CPU, in a 10 KB schema), off any limit it
/// has; 32 take some 10 ms.
pub(crate) const MAX_PATTERN_PROPERTIES: usize = 32;
/// `properties` entries in a whole schema: compiling optional properties
/// costs about the square of their number (4,500 took 2.7 s), and an
/// object of more than some 500 optional ones fails at its first token
/// anyway (llguidance's `max_items_in_row`).
pub(crate) const MAX_PROPERTIES: usize = 1024;

/// Why a schema cannot constrain this model's output.
#[derive(Debug, thiserror::Error)]
pub enum ConstraintError {
    /// The tokenizer's tokens could not be read as bytes (not byte-level
    /// BPE): the model cannot be constrained at all.
    #[error("structured output is not available for this model: {0}")]
    Unavailable(String),
    /// The client's schema did not compile (an unsupported keyword, an
    /// unsatisfiable schema, or one over the grammar limits).
    #[error("the JSON schema cannot be enforced: {0}")]
    Schema(String),
    /// The mask could not be computed mid-generation (a step over the
    /// parser's limits).
    #[error("the output constraint failed at a step: {0}")]
    Step(String),
}

/// What compiles a request's schema for one model: built once at load.
pub(crate) struct Grammars {
    factory: Result<ParserFactory, String>,
    /// The `</think>` token: the constraint waits for it when the model
    /// reasons.
    think_end: Option<u32>,
}

impl fmt::Debug for Grammars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grammars")
            .field("available", &self.factory.is_ok())
            .field("think_end", &self.think_end)
            .finish()
    }
}

/// The JSON layout every constrained answer gets: `", "` and `": "`
/// (Python's `json.dumps`), no other whitespace. Free whitespace would let a
/// model pad its answer without bound.
fn layout() -> Value {
    json!({
        "whitespace_flexible": false,
        "item_separator": ", ",
        "key_separator": ": ",
        "lenient": false,
    })
}

impl Grammars {
    /// `tokenizer_json`: the model's `tokenizer.json`; `vocab`: the ids the
    /// sampler draws from; `stop_ids`: the model's end tokens, which the
    /// grammar must never take for text; `think_end`: `</think>`'s id when
    /// the model reasons.
    pub(crate) fn new(
        tokenizer_json: &[u8],
        vocab: usize,
        stop_ids: &HashSet<u32>,
        think_end: Option<u32>,
    ) -> Self {
        let factory = token_env(tokenizer_json, vocab, stop_ids).and_then(|env| {
            let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
            factory.quiet();
            *factory.limits_mut() = ParserLimits {
                // Errors name the schema's fault, not the parser's state.
                verbose_errors: false,
                ..ParserLimits::default()
            };
            Ok(factory)
        });
        if let Err(reason) = &factory {
            tracing::warn!(reason, "structured output is unavailable for this model");
        }
        Self { factory, think_end }
    }

    /// Compiles `schema` for one generation; `reasons`: the output starts
    /// inside the model's reasoning.
    pub(crate) fn compile(
        &self,
        mut schema: Value,
        reasons: bool,
    ) -> Result<Constraint, ConstraintError> {
        let factory = self
            .factory
            .as_ref()
            .map_err(|reason| ConstraintError::Unavailable(reason.clone()))?;
        check_size(&schema)?;
        match schema.as_object_mut() {
            // Ours, whatever the client wrote there.
            Some(object) => object.insert("x-guidance".to_owned(), layout()),
            None => {
                return Err(ConstraintError::Schema(
                    "a JSON schema is an object".to_owned(),
                ));
            }
        };
        let parser = factory
            .create_parser(TopLevelGrammar::from_json_schema(schema))
            .map_err(|e| ConstraintError::Schema(cut(&e.to_string())))?;
        let mut matcher = Matcher::new(Ok(parser));
        if let Some(error) = matcher.get_error() {
            return Err(ConstraintError::Schema(cut(&error)));
        }
        // The first mask, here rather than on the engine's thread: a schema
        // whose JSON cannot even begin (`{"$ref": "#"}`) or that is over
        // the parser's limits from its first token is the client's 400,
        // not a failed generation.
        let first = matcher
            .compute_mask_or_eos()
            .map_err(|e| ConstraintError::Schema(cut(&e.to_string())))?;
        Ok(Constraint {
            first: Some(first),
            matcher,
            waiting: if reasons { self.think_end } else { None },
            eos: factory.tok_env().tok_trie().eos_token(),
        })
    }
}

/// Refuses a schema with more `patternProperties` or `properties` than
/// llguidance compiles in reasonable time ([`MAX_PATTERN_PROPERTIES`],
/// [`MAX_PROPERTIES`]). Every object of the document counts, whether or not
/// it sits where a schema is read: an overcount errs on the safe side.
fn check_size(schema: &Value) -> Result<(), ConstraintError> {
    let (mut patterns, mut properties) = (0usize, 0usize);
    let mut stack = vec![schema];
    while let Some(value) = stack.pop() {
        match value {
            Value::Object(object) => {
                for (key, item) in object {
                    match (key.as_str(), item) {
                        ("patternProperties", Value::Object(map)) => patterns += map.len(),
                        ("properties", Value::Object(map)) => properties += map.len(),
                        _ => {}
                    }
                    stack.push(item);
                }
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    if patterns > MAX_PATTERN_PROPERTIES {
        return Err(ConstraintError::Schema(format!(
            "the schema has {patterns} patternProperties, at most {MAX_PATTERN_PROPERTIES} are allowed"
        )));
    }
    if properties > MAX_PROPERTIES {
        return Err(ConstraintError::Schema(format!(
            "the schema has {properties} properties, at most {MAX_PROPERTIES} are allowed"
        )));
    }
    Ok(())
}

fn cut(message: &str) -> String {
    deepseek_audit::entry::cut(message, MAX_MESSAGE_BYTES)
}

/// The tokenizer as llguidance sees it: each token's bytes, the end tokens
/// marked special so that no grammar takes them for text.
fn token_env(
    tokenizer_json: &[u8],
    vocab: usize,
    stop_ids: &HashSet<u32>,
) -> Result<TokEnv, String> {
    let json: Value = serde_json::from_slice(tokenizer_json).map_err(|e| e.to_string())?;
    // llguidance's reader asserts on byte-fallback vocabularies it does not
    // expect; only byte-level BPE (the decoder this daemon serves) is read.
    if json["decoder"]["type"] != "ByteLevel" {
        return Err(format!(
            "the tokenizer's decoder is {}, not ByteLevel",
            json["decoder"]["type"]
        ));
    }
    let mut words =
        llguidance::token_bytes_from_tokenizer_json(&json).map_err(|e| e.to_string())?;
    if words.len() > vocab {
        return Err(format!(
            "tokenizer.json lists {} tokens, the tokenizer {vocab}",
            words.len()
        ));
    }
    words.resize(vocab, Vec::new());
    for &id in stop_ids {
        if let Some(word) = words.get_mut(id as usize)
            && word.first() != Some(&TokTrie::SPECIAL_TOKEN_MARKER)
        {
            word.insert(0, TokTrie::SPECIAL_TOKEN_MARKER);
        }
    }
    let eos = stop_ids
        .iter()
        .copied()
        .min()
        .ok_or("the model has no end-of-sequence token")?;
    let info = TokRxInfo::new(vocab as u32, eos);
    let trie = TokTrie::from(&info, &words);
    Ok(Arc::new(ApproximateTokEnv::new(trie)))
}

/// One generation's constraint: where its JSON stands.
pub struct Constraint {
    /// The mask of the first token of the JSON, computed at compile.
    first: Option<SimpleVob>,
    matcher: Matcher,
    /// `</think>`, while the reasoning is still open.
    waiting: Option<u32>,
    /// The end token the grammar knows; every stop id stands for it.
    eos: u32,
}

impl fmt::Debug for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Constraint")
            .field("waiting", &self.waiting)
            .field("stopped", &self.matcher.is_stopped())
            .finish_non_exhaustive()
    }
}

impl Constraint {
    /// Sets to −∞ the logits of the tokens that cannot come next: while
    /// the reasoning is open, only the stop tokens; after it, every token
    /// the grammar refuses, and the stop tokens until the JSON is complete.
    pub(crate) fn mask(
        &mut self,
        logits: &mut [f32],
        stop_ids: &HashSet<u32>,
    ) -> Result<(), ConstraintError> {
        if self.waiting.is_some() {
            for &id in stop_ids {
                if let Some(logit) = logits.get_mut(id as usize) {
                    *logit = f32::NEG_INFINITY;
                }
            }
            return Ok(());
        }
        let allowed = match self.first.take() {
            Some(first) => first,
            None => self
                .matcher
                .compute_mask_or_eos()
                .map_err(|e| ConstraintError::Step(cut(&e.to_string())))?,
        };
        let end = allowed.is_allowed(self.eos);
        // The stop tokens' own logits, kept for when the JSON may end.
        let ends: Vec<(usize, f32)> = stop_ids
            .iter()
            .filter_map(|&id| Some((id as usize, *logits.get(id as usize)?)))
            .collect();
        let known = allowed.len().min(logits.len());
        let (inside, beyond) = logits.split_at_mut(known);
        for (id, logit) in (0u32..).zip(inside.iter_mut()) {
            if !allowed.is_allowed(id) {
                *logit = f32::NEG_INFINITY;
            }
        }
        beyond.fill(f32::NEG_INFINITY);
        for (id, logit) in ends {
            logits[id] = if end { logit } else { f32::NEG_INFINITY };
        }
        if !logits.iter().any(|l| *l > f32::NEG_INFINITY) {
            return Err(ConstraintError::Step(
                "no token the model can produce continues the JSON".to_owned(),
            ));
        }
        Ok(())
    }

    /// The reasoning closed on text (a `</think>` spelled in ordinary
    /// tokens, which the splitter reads): the JSON starts with the next
    /// token. Text the same token carried past `</think>` is not held to the
    /// schema.
    pub(crate) fn end_wait(&mut self) {
        self.waiting = None;
    }

    /// Takes the sampled token (not a stop token) into the constraint.
    pub(crate) fn accept(&mut self, id: u32) -> Result<(), ConstraintError> {
        if let Some(think_end) = self.waiting {
            if id == think_end {
                self.waiting = None;
            }
            return Ok(());
        }
        self.matcher
            .consume_token(id)
            .map_err(|e| ConstraintError::Step(cut(&e.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::llm::test_support as fixture;
    use crate::engine::llm::tokenizer::Tokenizer;

    /// The fixture's EOS.
    const EOS: u32 = 1;

    fn grammars() -> (Grammars, Tokenizer) {
        let bytes = std::fs::read(fixture::dir().join("tokenizer.json")).expect("tokenizer.json");
        let tokenizer = fixture::tokenizer();
        let think_end = tokenizer.token_to_id("</think>");
        let grammars = Grammars::new(
            &bytes,
            tokenizer.vocab_size(),
            &HashSet::from([EOS]),
            think_end,
        );
        (grammars, tokenizer)
    }

    /// Walks the constraint with pseudo-random logits (a fixed LCG), taking
    /// the highest allowed token each step, until a stop token; returns the
    /// ids before it.
    fn walk(constraint: &mut Constraint, vocab: usize, seed: u64, steps: usize) -> Vec<u32> {
        let stop = HashSet::from([EOS]);
        let mut state = seed;
        let mut ids = Vec::new();
        for _ in 0..steps {
            let mut logits: Vec<f32> = (0..vocab)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (state >> 40) as f32 / (1u64 << 24) as f32
                })
                .collect();
            constraint.mask(&mut logits, &stop).expect("mask");
            let id = (0u32..)
                .zip(&logits)
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(id, _)| id)
                .expect("a token");
            if id == EOS {
                return ids;
            }
            constraint.accept(id).expect("accept");
            ids.push(id);
        }
        panic!("no end within {steps} steps: {ids:?}");
    }

    /// The layout is fixed: outside strings, one space after each `,` and
    /// `:`, no other whitespace.
    fn assert_layout(text: &str) {
        let (mut in_string, mut escaped, mut previous) = (false, false, ' ');
        for c in text.chars() {
            if in_string {
                in_string = escaped || c != '"';
                escaped = !escaped && c == '\\';
            } else if c == '"' {
                in_string = true;
            } else if c.is_whitespace() {
                assert!(c == ' ' && matches!(previous, ',' | ':'), "{text}");
            } else {
                assert!(!matches!(previous, ',' | ':'), "{text}");
            }
            previous = if in_string { '"' } else { c };
        }
    }

    #[test]
    fn random_logits_held_to_a_schema_give_json_that_matches_it() {
        let (grammars, tokenizer) = grammars();
        let schema = json!({
            "type": "object",
            "properties": {
                "kind": {"enum": ["a", "b"]},
                "n": {"type": "integer", "minimum": 0, "maximum": 9},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2},
            },
            "required": ["kind", "n", "tags"],
            "additionalProperties": false,
        });
        for seed in 0..20 {
            let mut constraint = grammars.compile(schema.clone(), false).expect("compiles");
            let ids = walk(&mut constraint, tokenizer.vocab_size(), seed, 400);
            let text = tokenizer.decode(&ids).expect("decode");
            let value: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(
                ["a", "b"].contains(&value["kind"].as_str().expect("kind")),
                "{text}"
            );
            assert!(value["n"].as_u64().expect("n") <= 9, "{text}");
            let tags = value["tags"].as_array().expect("tags");
            assert!(
                tags.len() <= 2
                    && tags
                        .iter()
                        .all(|t| t.as_str().is_some_and(|t| t.chars().count() <= 3)),
                "{text}"
            );
            assert_eq!(value.as_object().expect("object").len(), 3, "{text}");
            assert_layout(&text);
        }
    }

    #[test]
    fn the_reasoning_is_free_until_think_closes_but_cannot_end_the_answer() {
        let (grammars, tokenizer) = grammars();
        let think_end = tokenizer.token_to_id("</think>").expect("</think>");
        let mut constraint = grammars
            .compile(json!({"type": "object"}), true)
            .expect("compiles");
        let stop = HashSet::from([EOS]);
        let mut logits = vec![0.0; tokenizer.vocab_size()];
        constraint.mask(&mut logits, &stop).expect("mask");
        let open = logits.iter().filter(|l| l.is_finite()).count();
        assert_eq!(open, tokenizer.vocab_size() - 1, "only EOS is masked");
        assert_eq!(logits[EOS as usize], f32::NEG_INFINITY);
        // Any text, then </think>: from there, JSON.
        let text = tokenizer.encode("not { json", false).expect("encode");
        for &id in text.iter().chain([&think_end]) {
            constraint.accept(id).expect("free reasoning");
        }
        let mut logits = vec![0.0; tokenizer.vocab_size()];
        constraint.mask(&mut logits, &stop).expect("mask");
        let open: Vec<String> = (0u32..)
            .zip(&logits)
            .filter(|(_, l)| l.is_finite())
            .map(|(id, _)| tokenizer.token_text(id))
            .collect();
        assert!(open.iter().all(|t| t.starts_with('{')), "{open:?}");
    }

    #[test]
    fn a_schema_that_cannot_be_enforced_is_refused_with_the_reason() {
        let (grammars, _) = grammars();
        for (schema, says) in [
            (
                json!({"type": "object", "properties": {"a": {"type": "frobnicate"}}}),
                "frobnicate",
            ),
            (
                json!({"type": "string", "minLength": 5, "maxLength": 2}),
                "",
            ),
            (json!([1, 2]), "object"),
            // Nothing is fetched: a schema is all the client sends.
            (json!({"$ref": "https://example.com/schema.json"}), "$ref"),
            (json!({"type": "array", "uniqueItems": true}), "uniqueItems"),
            // No JSON can begin: found at compile, not at the first step.
            (json!({"$ref": "#"}), ""),
        ] {
            let error = grammars
                .compile(schema.clone(), false)
                .expect_err("refused");
            assert!(matches!(error, ConstraintError::Schema(_)), "{error}");
            assert!(error.to_string().contains(says), "{error}");
            assert!(error.to_string().len() < MAX_MESSAGE_BYTES + 100, "{error}");
        }
    }

    #[test]
    fn schemas_whose_compilation_explodes_are_refused_before_it() {
        let (grammars, _) = grammars();
        let patterns = |n: usize| {
            let map: serde_json::Map<String, Value> =
                (0..n).map(|i| (format!("^x{i}$"), json!({}))).collect();
            json!({"type": "object", "patternProperties": map})
        };
        // 400 of them took llguidance 13 s of one CPU (release build).
        let started = std::time::Instant::now();
        let error = grammars.compile(patterns(400), false).expect_err("refused");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(
            error.to_string().contains("400 patternProperties"),
            "{error}"
        );
        grammars
            .compile(patterns(MAX_PATTERN_PROPERTIES), false)
            .expect("compiles");
        // Counted over the whole document, nested ones too.
        let nested = json!({"type": "array", "items": patterns(20),
            "$defs": {"a": patterns(20)}});
        assert!(grammars.compile(nested, false).is_err());
        let properties: serde_json::Map<String, Value> = (0..=MAX_PROPERTIES)
            .map(|i| (format!("k{i}"), json!({})))
            .collect();
        let error = grammars
            .compile(json!({"type": "object", "properties": properties}), false)
            .expect_err("refused");
        assert!(error.to_string().contains("properties"), "{error}");
    }

    #[test]
    fn a_clients_x_guidance_cannot_loosen_the_layout() {
        let (grammars, tokenizer) = grammars();
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}},
            "required": ["a"], "additionalProperties": false,
            "x-guidance": {"whitespace_flexible": true, "whitespace_pattern": " *"}});
        let mut constraint = grammars.compile(schema.clone(), false).expect("compiles");
        let ids = walk(&mut constraint, tokenizer.vocab_size(), 7, 200);
        let text = tokenizer.decode(&ids).expect("decode");
        assert!(
            text.starts_with("{\"a\": ") && !text.contains("  "),
            "{text}"
        );
    }

    #[test]
    fn a_tokenizer_that_is_not_byte_level_makes_it_unavailable() {
        let grammars = Grammars::new(
            br#"{"decoder": {"type": "Metaspace"}}"#,
            10,
            &HashSet::from([1]),
            None,
        );
        let error = grammars
            .compile(json!({"type": "object"}), false)
            .expect_err("unavailable");
        assert!(matches!(error, ConstraintError::Unavailable(_)), "{error}");
        assert!(error.to_string().contains("Metaspace"), "{error}");
    }
}
