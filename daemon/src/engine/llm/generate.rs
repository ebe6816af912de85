//! What a generation is asked for and how it ends, whichever engine runs
//! it.

use std::collections::HashSet;
use std::time::Instant;

use super::constraint::Constraint;
use super::logprobs::{Logprobs, TokenLogprob};
use super::sampling::SamplingParams;
use super::tools::{Calls, FunctionCall};

/// The most prompt tokens run at once (see [`super::decoder::Slot::prefill`]).
pub const PREFILL_CHUNK: usize = 512;

/// What to generate.
#[derive(Debug)]
pub struct GenerateRequest {
    pub prompt_ids: Vec<u32>,
    /// Completion tokens at most (already within the context).
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub seed: u64,
    /// Stop strings: the text ends before the first.
    pub stop: Vec<String>,
    /// Token ids that end the generation (EOS and the request's).
    pub stop_ids: HashSet<u32>,
    /// Split `<think>` reasoning from the answer.
    pub split_reasoning: bool,
    /// The prompt ends in an open `<think>`: the output starts inside the
    /// reasoning (else a leading `<think>` may still open it).
    pub reasoning_open: bool,
    /// Read tool calls out of the answer, when the request offers tools.
    pub calls: Option<Calls>,
    /// Each token's logprob, when the client asked.
    pub logprobs: Option<Logprobs>,
    /// The JSON schema the answer is held to (structured output).
    pub constraint: Option<Constraint>,
}

impl GenerateRequest {
    /// The request to run, leaving this one for the audit record: what
    /// only the generation reads (the constraint, one generation's state,
    /// and how its calls are read) moves with it rather than being copied.
    pub fn for_run(&mut self) -> Self {
        Self {
            prompt_ids: self.prompt_ids.clone(),
            max_tokens: self.max_tokens,
            sampling: self.sampling,
            seed: self.seed,
            stop: self.stop.clone(),
            stop_ids: self.stop_ids.clone(),
            split_reasoning: self.split_reasoning,
            reasoning_open: self.reasoning_open,
            calls: self.calls.take(),
            logprobs: self.logprobs,
            constraint: self.constraint.take(),
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or a stop string.
    Stop,
    /// `max_tokens`, or the context is full.
    Length,
    /// The client went away.
    Cancelled,
    /// The answer ended in tool calls.
    ToolCalls,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
            FinishReason::ToolCalls => "tool_calls",
        }
    }
}

/// How a generation ended, for the answer's `usage` and its audit record.
#[derive(Debug, Clone)]
pub struct Finished {
    pub reason: FinishReason,
    pub completion_tokens: usize,
    /// SHA-256 of the completion's text (before the reasoning split).
    pub completion_sha256: String,
    /// Whether `</think>` closed the reasoning.
    pub reasoning_closed: bool,
    /// When the first completion token was sampled (time to first token).
    pub first_token_at: Option<Instant>,
    /// Tool calls read out of the answer (the last [`Delta`] carries them).
    pub tool_calls: usize,
}

impl Finished {
    /// A request whose client left before it started.
    pub(crate) fn cancelled_before_start() -> Self {
        Self {
            reason: FinishReason::Cancelled,
            completion_tokens: 0,
            completion_sha256: deepseek_integrity::digest::sha256_hex(b""),
            reasoning_closed: false,
            first_token_at: None,
            tool_calls: 0,
        }
    }
}

/// What a step decided for the client: the pieces of text (either may be
/// empty), and with them the logprobs of the tokens generated since the
/// last delta, when the request asked for them; the last delta carries the
/// answer's tool calls, if any.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    pub reasoning: String,
    pub content: String,
    pub logprobs: Vec<TokenLogprob>,
    pub tool_calls: Vec<FunctionCall>,
}

/// Why a generation failed; the detail goes to the log, not the client.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("ONNX Runtime failed at token {step}: {source}")]
    Runtime { step: usize, source: ort::Error },
    #[error("detokenizing failed: {0}")]
    Tokenizer(#[from] super::tokenizer::TokenizerError),
    #[error(transparent)]
    Constraint(#[from] super::constraint::ConstraintError),
}
