//! One generation: prefill, then the decode loop, on a blocking thread that
//! holds a slot. Each step's text goes out as an event as soon as it is
//! decided (whole characters, stop strings cut, reasoning split); a closed
//! channel (the client left) ends the loop within one step.

use std::collections::HashSet;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::decoder::{GraphSpec, Slot};
use super::reasoning::{ReasoningSplitter, Split};
use super::sampling::{Sampler, SamplingParams};
use super::stop::{StopMatcher, StopOutcome};
use super::tokenizer::Tokenizer;

/// The most prompt tokens run at once (see [`Slot::prefill`]).
pub const PREFILL_CHUNK: usize = 512;

/// What to generate.
#[derive(Debug, Clone)]
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
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
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
}

/// The pieces of text one step decided; either may be empty.
pub type Delta = Split;

/// Why a generation failed; the detail goes to the log, not the client.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("ONNX Runtime failed at token {step}: {source}")]
    Runtime { step: usize, source: ort::Error },
    #[error("detokenizing failed: {0}")]
    Tokenizer(#[from] super::tokenizer::TokenizerError),
}

/// Runs one generation on `slot`, sending a [`Delta`] per step to `events`.
pub fn generate(
    slot: &mut Slot,
    spec: &GraphSpec,
    tokenizer: &Tokenizer,
    request: &GenerateRequest,
    events: &mpsc::Sender<Delta>,
) -> Result<Finished, GenerateError> {
    let runtime = |step: usize| move |source| GenerateError::Runtime { step, source };
    slot.reset(spec).map_err(runtime(0))?;
    let mut sampler = Sampler::new(request.sampling, request.seed, tokenizer.vocab_size());
    let mut text = tokenizer.stream();
    let mut stop = StopMatcher::new(request.stop.clone());
    let mut split = ReasoningSplitter::new(request.split_reasoning);
    let mut digest = Sha256::new();
    let mut logits = Vec::with_capacity(spec.vocab);
    let mut generated = 0;
    let send = |piece: String, digest: &mut Sha256, split: &mut ReasoningSplitter| {
        digest.update(piece.as_bytes());
        events.blocking_send(split.push(&piece)).is_ok()
    };
    slot.prefill(spec, &request.prompt_ids, PREFILL_CHUNK, &mut logits)
        .map_err(runtime(0))?;
    // A stop string matched: what the decoder still holds comes after it.
    let mut matched = false;
    let mut last = 0;
    let reason = loop {
        if generated == request.max_tokens {
            break FinishReason::Length;
        }
        if generated > 0 {
            slot.forward(spec, &[last], &mut logits)
                .map_err(runtime(generated))?;
        }
        let id = sampler.sample(&logits);
        generated += 1;
        if request.stop_ids.contains(&id) {
            break FinishReason::Stop;
        }
        let piece = match stop.push(&text.push(id)?) {
            StopOutcome::Stopped(piece) => {
                matched = true;
                piece
            }
            StopOutcome::Continue(piece) => piece,
        };
        if !send(piece, &mut digest, &mut split) {
            break FinishReason::Cancelled;
        }
        if matched {
            break FinishReason::Stop;
        }
        last = id;
    };
    if reason != FinishReason::Cancelled {
        let mut rest = String::new();
        if !matched {
            match stop.push(&text.finish()?) {
                StopOutcome::Stopped(piece) => rest.push_str(&piece),
                StopOutcome::Continue(piece) => {
                    rest.push_str(&piece);
                    rest.push_str(&stop.finish());
                }
            }
        }
        digest.update(rest.as_bytes());
        let mut last = split.push(&rest);
        let tail = split.finish();
        last.reasoning.push_str(&tail.reasoning);
        last.content.push_str(&tail.content);
        let _ = events.blocking_send(last);
    }
    Ok(Finished {
        reason,
        completion_tokens: generated,
        completion_sha256: deepseek_integrity::digest::hex(&digest.finalize()),
        reasoning_closed: split.closed(),
    })
}
