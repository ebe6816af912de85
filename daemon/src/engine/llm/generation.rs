//! One request's side of a generation, whichever engine runs its forward
//! passes: it turns each step's logits into the next token (and its
//! logprobs, when asked), the text that token completes (whole characters,
//! stop strings cut, reasoning split) and an event to the client, and says
//! when the generation ends. The per-slot loop ([`generate`], on a blocking
//! thread that holds a slot) and the batch scheduler ([`super::batch`])
//! both drive it, so a request's output does not depend on which one ran
//! it.

use std::time::Instant;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::constraint::Constraint;
use super::decoder::{GraphSpec, Slot};
use super::generate::{
    Delta, FinishReason, Finished, GenerateError, GenerateRequest, PREFILL_CHUNK,
};
use super::logprobs::{TokenLogprob, token_logprob};
use super::reasoning::{ReasoningSplitter, Split};
use super::sampling::Sampler;
use super::stop::{StopMatcher, StopOutcome};
use super::tokenizer::{TextStream, Tokenizer};
use super::tool_parser::CallParser;

/// What to do after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Run this token through the model and call [`Generation::step`] with
    /// the logits of its position.
    Token(u32),
    /// The generation is over; [`Generation::finish`] flushes it.
    Done(FinishReason),
}

/// The sampling, detokenizing and stop state of one generation.
#[derive(Debug)]
pub(crate) struct Generation<'t> {
    request: GenerateRequest,
    sampler: Sampler,
    text: TextStream<'t>,
    stop: StopMatcher,
    split: ReasoningSplitter,
    /// The answer's tool calls, read out of its content.
    calls: Option<CallParser>,
    digest: Sha256,
    generated: usize,
    /// A stop string matched: what the decoder still holds comes after it.
    matched: bool,
    first_token_at: Option<Instant>,
    /// The tokenizer's vocabulary: logprobs are over these ids.
    vocab: usize,
    /// Logprobs of the tokens whose text has not been sent yet.
    pending: Vec<TokenLogprob>,
    /// The JSON schema the answer is held to, taken from the request.
    constraint: Option<Constraint>,
    events: mpsc::UnboundedSender<Delta>,
}

impl<'t> Generation<'t> {
    pub(crate) fn new(
        tokenizer: &'t Tokenizer,
        mut request: GenerateRequest,
        events: mpsc::UnboundedSender<Delta>,
    ) -> Self {
        Self {
            sampler: Sampler::new(request.sampling, request.seed, tokenizer.vocab_size()),
            text: tokenizer.stream(),
            stop: StopMatcher::new(request.stop.clone()),
            split: ReasoningSplitter::new(request.split_reasoning, request.reasoning_open),
            calls: request.calls.take().map(CallParser::new),
            digest: Sha256::new(),
            generated: 0,
            matched: false,
            first_token_at: None,
            vocab: tokenizer.vocab_size(),
            pending: Vec::new(),
            constraint: request.constraint.take(),
            events,
            request,
        }
    }

    /// The request being generated.
    pub(crate) fn request(&self) -> &GenerateRequest {
        &self.request
    }

    /// Completion tokens so far.
    pub(crate) fn generated(&self) -> usize {
        self.generated
    }

    /// Whether the client is gone (its events are no longer read).
    pub(crate) fn abandoned(&self) -> bool {
        self.events.is_closed()
    }

    /// Samples the next token from the logits of the last position, sends
    /// the text it completes (when there is any: a client slow to read
    /// holds only text), and says what comes next. A client that left is
    /// noticed within one step.
    pub(crate) fn step(&mut self, logits: &[f32]) -> Result<Next, GenerateError> {
        if self.generated == self.request.max_tokens {
            return Ok(Next::Done(FinishReason::Length));
        }
        let stop_ids = &self.request.stop_ids;
        let id = match &mut self.constraint {
            Some(constraint) => self
                .sampler
                .sample_masked(logits, |work| constraint.mask(work, stop_ids))?,
            None => self.sampler.sample(logits),
        };
        self.first_token_at.get_or_insert_with(Instant::now);
        self.generated += 1;
        if stop_ids.contains(&id) {
            return Ok(Next::Done(FinishReason::Stop));
        }
        if let Some(constraint) = &mut self.constraint {
            constraint.accept(id)?;
        }
        if let Some(asked) = self.request.logprobs {
            self.pending
                .push(token_logprob(logits, self.vocab, id, asked.top));
        }
        let piece = match self.stop.push(&self.text.push(id)?) {
            StopOutcome::Stopped(piece) => {
                self.matched = true;
                piece
            }
            StopOutcome::Continue(piece) => piece,
        };
        self.digest.update(piece.as_bytes());
        let split = self.split.push(&piece);
        if self.split.closed()
            && let Some(constraint) = &mut self.constraint
        {
            constraint.end_wait();
        }
        let split = self.calls_out_of(split);
        // Logprobs wait for text to go with, so that each event's are
        // those of the tokens whose text it carries.
        let gone = if split.reasoning.is_empty() && split.content.is_empty() {
            self.events.is_closed()
        } else {
            let delta = self.delta(split);
            self.events.send(delta).is_err()
        };
        if gone {
            return Ok(Next::Done(FinishReason::Cancelled));
        }
        if self.matched {
            return Ok(Next::Done(FinishReason::Stop));
        }
        if self.generated == self.request.max_tokens {
            return Ok(Next::Done(FinishReason::Length));
        }
        Ok(Next::Token(id))
    }

    /// Sends what the decoders still hold (unless the client left) and
    /// says how the generation ended.
    pub(crate) fn finish(mut self, mut reason: FinishReason) -> Result<Finished, GenerateError> {
        let mut called = 0;
        if reason != FinishReason::Cancelled {
            let mut rest = String::new();
            if !self.matched {
                match self.stop.push(&self.text.finish()?) {
                    StopOutcome::Stopped(piece) => rest.push_str(&piece),
                    StopOutcome::Continue(piece) => {
                        rest.push_str(&piece);
                        rest.push_str(&self.stop.finish());
                    }
                }
            }
            self.digest.update(rest.as_bytes());
            let mut last = self.split.push(&rest);
            let tail = self.split.finish();
            last.reasoning.push_str(&tail.reasoning);
            last.content.push_str(&tail.content);
            let mut last = self.calls_out_of(last);
            let calls = match self.calls.take() {
                Some(parser) => {
                    let (held, calls) = parser.finish();
                    last.content.push_str(&held);
                    calls
                }
                None => Vec::new(),
            };
            let mut last = self.delta(last);
            last.tool_calls = calls;
            called = last.tool_calls.len();
            // Cut by max_tokens, the calls may be fewer than the model
            // meant: the answer says `length`, not that it called.
            if called > 0 && reason != FinishReason::Length {
                reason = FinishReason::ToolCalls;
            }
            if last != Delta::default() {
                let _ = self.events.send(last);
            }
        }
        Ok(Finished {
            reason,
            completion_tokens: self.generated,
            completion_sha256: deepseek_integrity::digest::hex(&self.digest.finalize()),
            reasoning_closed: self.split.closed(),
            first_token_at: self.first_token_at,
            tool_calls: called,
        })
    }

    /// `split` with its content through the tool-call parser, when the
    /// request offers tools: what could be a call is held back.
    fn calls_out_of(&mut self, mut split: Split) -> Split {
        if let Some(parser) = &mut self.calls {
            split.content = parser.push(&split.content);
        }
        split
    }

    /// `split` as an event, with the logprobs waiting for it.
    fn delta(&mut self, split: Split) -> Delta {
        Delta {
            reasoning: split.reasoning,
            content: split.content,
            logprobs: std::mem::take(&mut self.pending),
            tool_calls: Vec::new(),
        }
    }
}

/// Runs one generation on `slot` (the per-slot engine), sending a
/// [`Delta`] per step to `events`.
pub fn generate(
    slot: &mut Slot,
    spec: &GraphSpec,
    tokenizer: &Tokenizer,
    request: GenerateRequest,
    events: mpsc::UnboundedSender<Delta>,
) -> Result<Finished, GenerateError> {
    let runtime = |step: usize| move |source| GenerateError::Runtime { step, source };
    slot.reset(spec).map_err(runtime(0))?;
    let mut logits = Vec::with_capacity(spec.vocab);
    slot.prefill(spec, &request.prompt_ids, PREFILL_CHUNK, &mut logits)
        .map_err(runtime(0))?;
    let mut generation = Generation::new(tokenizer, request, events);
    let reason = loop {
        match generation.step(&logits)? {
            Next::Done(reason) => break reason,
            Next::Token(id) => slot
                .forward(spec, &[id], &mut logits)
                .map_err(runtime(generation.generated()))?,
        }
    };
    generation.finish(reason)
}
