//! The daemon's engine without the daemon: the fixture's sessions built by
//! hand and driven with `Slot::forward` and `generate()`.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Barrier;
use std::time::Instant;

use deepseekd::engine::llm::decoder::{GraphSpec, KvPlacement, Slot};
use deepseekd::engine::llm::files::ModelFiles;
use deepseekd::engine::llm::generate::{Delta, GenerateRequest};
use deepseekd::engine::llm::generation::generate;
use deepseekd::engine::llm::sampling::SamplingParams;
use deepseekd::engine::llm::tokenizer::Tokenizer;
use ort::environment::Environment;
use ort::session::Session;
use tokio::sync::mpsc;

use crate::timing::{Batch, Timing};

/// The engine without the daemon: what `CausalLm::load` builds, by hand.
pub(crate) struct InProcess {
    spec: GraphSpec,
    tokenizer: Tokenizer,
}

impl InProcess {
    /// The fixture's files and `slots` sessions with one intra-op thread,
    /// as the daemon builds them, each warmed up as the daemon does.
    pub(crate) fn load(environment: &Environment, dir: &Path, slots: usize) -> (Self, Vec<Slot>) {
        let graph_path = dir.join("model.onnx");
        let files = ModelFiles::read(dir, &graph_path, BTreeMap::new()).expect("fixture files");
        let tokenizer = Tokenizer::from_bytes(&files.tokenizer_json).expect("tokenizer");
        let graph = std::fs::read(&graph_path).expect("model.onnx");
        let sessions: Vec<Session> = (0..slots)
            .map(|_| {
                Session::builder(environment)
                    .expect("builder")
                    .with_intra_threads(1)
                    .expect("threads")
                    .commit_from_memory(&graph)
                    .expect("session")
            })
            .collect();
        let spec = GraphSpec::read(&sessions[0], &files.arch).expect("graph spec");
        // The daemon's choice on the CPU: tiny-r1 asks for no shared buffer.
        let placement = if files.share_kv_buffer {
            KvPlacement::Shared {
                memory: Slot::host_memory(),
                capacity: files.arch.max_position_embeddings,
            }
        } else {
            KvPlacement::Host
        };
        let mut slots: Vec<Slot> = sessions
            .into_iter()
            .map(|s| Slot::new(s, &spec, placement.clone()).expect("slot"))
            .collect();
        let mut logits = Vec::new();
        for slot in &mut slots {
            slot.reset(&spec).expect("reset");
            slot.forward(&spec, &[0], &mut logits).expect("warm-up");
            slot.forward(&spec, &[0], &mut logits).expect("warm-up");
            slot.reset(&spec).expect("reset");
        }
        (Self { spec, tokenizer }, slots)
    }

    /// A completion prompt of exactly `tokens` tokens, BOS included.
    pub(crate) fn prompt_of(&self, tokens: usize) -> String {
        let words = [
            "the", "model", "serves", "tokens", "over", "a", "socket", "and", "every", "request",
            "is", "audited", "first", "then", "answered", "in", "order",
        ];
        let mut text = String::new();
        for word in words.iter().cycle() {
            let mut longer = text.clone();
            if !longer.is_empty() {
                longer.push(' ');
            }
            longer.push_str(word);
            if self.encode(&longer).len() > tokens {
                break;
            }
            text = longer;
        }
        // The pre-tokenizer splits digits one by one: one token each.
        while self.encode(&text).len() < tokens {
            text.push('7');
        }
        assert_eq!(
            self.encode(&text).len(),
            tokens,
            "no prompt of exactly {tokens} tokens"
        );
        text
    }

    pub(crate) fn encode(&self, text: &str) -> Vec<u32> {
        // Completions are encoded with special tokens (BOS), as the daemon does.
        self.tokenizer.encode(text, true).expect("encode")
    }

    /// The forward passes alone: prefill, then argmax and one step per
    /// token, as `generate()` does without sampling and detokenizing.
    pub(crate) fn forward_loop(&self, slot: &mut Slot, prompt: &str, max_tokens: usize) -> Timing {
        let start = Instant::now();
        let ids = self.encode(prompt);
        let mut logits = Vec::with_capacity(self.spec.vocab);
        slot.reset(&self.spec).expect("reset");
        slot.forward(&self.spec, &ids, &mut logits)
            .expect("prefill");
        let mut next = argmax(&logits, self.tokenizer.vocab_size());
        let first = Instant::now();
        let mut generated = vec![next];
        while generated.len() < max_tokens {
            slot.forward(&self.spec, &[next], &mut logits)
                .expect("decode");
            next = argmax(&logits, self.tokenizer.vocab_size());
            generated.push(next);
        }
        let end = Instant::now();
        slot.reset(&self.spec).expect("reset");
        Timing {
            start,
            first,
            last: end,
            end,
            prompt_tokens: ids.len(),
            completion_tokens: generated.len(),
            text: self.tokenizer.decode(&generated).expect("decode"),
        }
    }

    /// A greedy request with `ignore_eos`, as the daemon builds it.
    fn request(&self, prompt: &str, max_tokens: usize) -> GenerateRequest {
        GenerateRequest {
            prompt_ids: self.encode(prompt),
            max_tokens,
            sampling: SamplingParams::greedy(),
            seed: 0,
            stop: Vec::new(),
            stop_ids: HashSet::new(),
            split_reasoning: false,
            reasoning_open: false,
            calls: None,
            constraint: None,
            logprobs: None,
        }
    }

    /// The daemon's `generate()` on `slot`, its events read by another
    /// thread as the daemon's stream task reads them.
    pub(crate) fn generate(&self, slot: &mut Slot, prompt: &str, max_tokens: usize) -> Timing {
        let start = Instant::now();
        let request = self.request(prompt, max_tokens);
        let prompt_tokens = request.prompt_ids.len();
        // The daemon's channel between the generation and its stream.
        let (events, mut received) = mpsc::unbounded_channel::<Delta>();
        let (finished, first, last, text) = std::thread::scope(|scope| {
            let reader = scope.spawn(move || {
                let mut first = None;
                let mut last = Instant::now();
                let mut text = String::new();
                while let Some(delta) = received.blocking_recv() {
                    last = Instant::now();
                    if first.is_none() && !(delta.reasoning.is_empty() && delta.content.is_empty())
                    {
                        first = Some(Instant::now());
                    }
                    text.push_str(&delta.reasoning);
                    text.push_str(&delta.content);
                }
                (first, last, text)
            });
            let finished =
                generate(slot, &self.spec, &self.tokenizer, request, events).expect("generate");
            let (first, last, text) = reader.join().expect("event reader");
            (finished, first, last, text)
        });
        let end = Instant::now();
        slot.reset(&self.spec).expect("reset");
        Timing {
            start,
            first: first.expect("the generation produced text"),
            last,
            end,
            prompt_tokens,
            completion_tokens: finished.completion_tokens,
            text,
        }
    }

    /// `generate()` with nobody reading its events until it ends: no thread is woken per token. There is no
    /// first event to time, so `first` is the start: only `end - start`
    /// means anything.
    pub(crate) fn generate_buffered(
        &self,
        slot: &mut Slot,
        prompt: &str,
        max_tokens: usize,
    ) -> Timing {
        let start = Instant::now();
        let request = self.request(prompt, max_tokens);
        let prompt_tokens = request.prompt_ids.len();
        let (events, mut received) = mpsc::unbounded_channel::<Delta>();
        let finished =
            generate(slot, &self.spec, &self.tokenizer, request, events).expect("generate");
        let mut text = String::new();
        while let Ok(delta) = received.try_recv() {
            text.push_str(&delta.reasoning);
            text.push_str(&delta.content);
        }
        let end = Instant::now();
        slot.reset(&self.spec).expect("reset");
        Timing {
            start,
            first: start,
            last: end,
            end,
            prompt_tokens,
            completion_tokens: finished.completion_tokens,
            text,
        }
    }
}

/// The id of the largest logit among the tokenizer's ids (ties: lowest).
fn argmax(logits: &[f32], vocab: usize) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate().take(vocab) {
        if x > logits[best] {
            best = i;
        }
    }
    u32::try_from(best).expect("token id")
}

/// Runs `run` on each slot at once, one thread per slot.
pub(crate) fn in_process_batch(
    slots: &mut [Slot],
    run: &(dyn Fn(&mut Slot) -> Timing + Sync),
) -> Batch {
    if let [slot] = slots {
        return Batch(vec![run(slot)]);
    }
    let barrier = Barrier::new(slots.len());
    let timings = std::thread::scope(|scope| {
        let threads: Vec<_> = slots
            .iter_mut()
            .map(|slot| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    run(slot)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("client thread"))
            .collect()
    });
    Batch(timings)
}
