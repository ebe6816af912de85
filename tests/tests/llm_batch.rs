//! Continuous batching in process, driven turn by turn so that which
//! requests share a decode step is decided by the test, not by timing: a
//! request's output (greedy or seeded sampling) is the same alone as beside
//! seven others, on every growing-cache fixture and on SmolLM2; requests
//! that leave mid-stream (cancelled, stop string, EOS, `max_tokens`) or
//! join late leave the others' outputs unchanged; a full cache pool makes
//! requests wait, first come first served, and never evicts a running one.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use deepseek_tests::{llm_expected, llm_fixture, token_ids, workspace};
use deepseekd::engine::llm::batch::{Job, Limits, Scheduler, StartError};
use deepseekd::engine::llm::decoder::{GraphSpec, KvPlacement, Slot};
use deepseekd::engine::llm::files::ModelFiles;
use deepseekd::engine::llm::generate::{
    Delta, FinishReason, Finished, GenerateError, GenerateRequest,
};
use deepseekd::engine::llm::sampling::SamplingParams;
use deepseekd::engine::llm::tokenizer::Tokenizer;
use ort::session::Session;
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::llm_engine::{environment, session};
use crate::smollm2::{FP32, INT4, model_dir};

/// A model's session, graph and tokenizer, loaded as the daemon does.
struct Model {
    session: Session,
    spec: GraphSpec,
    tokenizer: Tokenizer,
}

fn model(dir: &Path) -> Model {
    let files = ModelFiles::read(dir, &dir.join("model.onnx"), BTreeMap::new()).expect("files");
    let session = session(dir);
    Model {
        spec: GraphSpec::read(&session, &files.arch).expect("graph spec"),
        tokenizer: Tokenizer::from_bytes(&files.tokenizer_json).expect("tokenizer"),
        session,
    }
}

/// A scheduler over `dir`'s model with room for `limits`, its caches on
/// the host.
fn with_scheduler<R>(dir: &Path, limits: Limits, test: impl FnOnce(&mut Scheduler<'_>) -> R) -> R {
    with_scheduler_in(dir, KvPlacement::Host, limits, test)
}

fn with_scheduler_in<R>(
    dir: &Path,
    placement: KvPlacement,
    limits: Limits,
    test: impl FnOnce(&mut Scheduler<'_>) -> R,
) -> R {
    let Model {
        session,
        spec,
        tokenizer,
    } = model(dir);
    let mut scheduler =
        Scheduler::new(session, spec, &tokenizer, placement, limits).expect("scheduler");
    test(&mut scheduler)
}

const ROOMY: Limits = Limits {
    sequences: 8,
    cache_tokens: 8 * 256,
};

/// A request in flight, seen from the client's side.
struct Pending {
    events: Option<mpsc::UnboundedReceiver<Delta>>,
    done: oneshot::Receiver<Result<Finished, GenerateError>>,
    text: String,
}

/// What a request gave.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    text: String,
    reason: FinishReason,
    tokens: usize,
    sha256: String,
}

fn submit(scheduler: &mut Scheduler<'_>, request: &mut GenerateRequest) -> Pending {
    let (events, received) = mpsc::unbounded_channel();
    let (done, finished) = oneshot::channel();
    let admitted = Arc::new(Semaphore::new(1))
        .try_acquire_owned()
        .expect("a permit");
    scheduler.enqueue(Job {
        request: request.for_run(),
        events,
        done,
        admitted,
    });
    Pending {
        events: Some(received),
        done: finished,
        text: String::new(),
    }
}

impl Pending {
    /// Reads the events that arrived.
    fn read(&mut self) {
        if let Some(events) = &mut self.events {
            while let Ok(delta) = events.try_recv() {
                self.text.push_str(&delta.reasoning);
                self.text.push_str(&delta.content);
            }
        }
    }

    /// The client leaves.
    fn leave(&mut self) {
        self.read();
        self.events = None;
    }

    fn outcome(mut self) -> Outcome {
        self.read();
        let finished = self.done.try_recv().expect("answered").expect("generated");
        Outcome {
            text: self.text,
            reason: finished.reason,
            tokens: finished.completion_tokens,
            sha256: finished.completion_sha256,
        }
    }
}

/// Turns until nothing is left, checking the cache against the pool at
/// every turn; returns the most rows one decode step ran.
fn run_to_end(scheduler: &mut Scheduler<'_>, limits: Limits) -> usize {
    let mut widest = 0;
    while !scheduler.idle() {
        scheduler.turn();
        let stats = scheduler.stats();
        assert!(
            stats.cache_positions <= limits.cache_tokens
                && stats.cache_reserved <= limits.cache_tokens,
            "the cache outgrew its pool: {stats:?}"
        );
        widest = widest.max(stats.last_batch);
    }
    widest
}

fn alone(scheduler: &mut Scheduler<'_>, request: &mut GenerateRequest) -> Outcome {
    let pending = submit(scheduler, request);
    assert_eq!(run_to_end(scheduler, ROOMY), 1);
    pending.outcome()
}

fn request(prompt_ids: Vec<u32>, max_tokens: usize, sampled: Option<u64>) -> GenerateRequest {
    let (sampling, seed) = match sampled {
        Some(seed) => (
            SamplingParams {
                temperature: 0.9,
                top_p: 0.95,
                ..SamplingParams::greedy()
            },
            seed,
        ),
        None => (SamplingParams::greedy(), 0),
    };
    GenerateRequest {
        prompt_ids,
        max_tokens,
        sampling,
        seed,
        stop: Vec::new(),
        stop_ids: HashSet::new(),
        split_reasoning: false,
        reasoning_open: false,
        calls: None,
        constraint: None,
        logprobs: None,
    }
}

/// Eight requests over the fixture's prompts: the first four greedy, the
/// others sampled with their own seeds.
fn eight(prompts: &[Value], max_tokens: usize) -> Vec<GenerateRequest> {
    (0..8)
        .map(|i| {
            let ids = token_ids(&prompts[i % prompts.len()]["prompt_ids"]);
            request(ids, max_tokens, (i >= 4).then_some(i as u64))
        })
        .collect()
}

/// Each request alone, then all eight submitted at once: the same outputs,
/// and one decode step ran all eight.
fn assert_batched_equals_alone(dir: &Path, prompts: &[Value], max_tokens: usize) {
    assert_batched_equals_alone_in(dir, KvPlacement::Host, prompts, max_tokens);
}

fn assert_batched_equals_alone_in(
    dir: &Path,
    placement: KvPlacement,
    prompts: &[Value],
    max_tokens: usize,
) {
    with_scheduler_in(dir, placement, ROOMY, |scheduler| {
        let mut requests = eight(prompts, max_tokens);
        let alone: Vec<Outcome> = requests.iter_mut().map(|r| alone(scheduler, r)).collect();
        let pending: Vec<Pending> = requests.iter_mut().map(|r| submit(scheduler, r)).collect();
        let widest = run_to_end(scheduler, ROOMY);
        assert_eq!(
            widest,
            8,
            "{}: the eight never ran in one step",
            dir.display()
        );
        for (index, (pending, alone)) in pending.into_iter().zip(&alone).enumerate() {
            let batched = pending.outcome();
            assert_eq!(
                &batched,
                alone,
                "{}: request {index} differs beside seven others (first differing byte at {})",
                dir.display(),
                first_difference(&batched.text, &alone.text)
            );
            assert_eq!(batched.tokens, max_tokens);
        }
    });
}

fn first_difference(a: &str, b: &str) -> usize {
    a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
}

fn tiny_prompts() -> Vec<Value> {
    llm_expected()["prompts"]
        .as_array()
        .expect("prompts")
        .clone()
}

#[test]
fn tiny_r1_gives_the_same_outputs_alone_and_beside_seven_others() {
    assert_batched_equals_alone(&llm_fixture(), &tiny_prompts(), 32);
}

#[test]
fn the_device_path_gives_the_same_outputs_alone_and_beside_seven_others() {
    // The GPU's path (presents bound to the device, a new layout copied in
    // by the next step), with host memory standing in for the device.
    // Memory descriptions are made by ONNX Runtime: load it first.
    environment();
    assert_batched_equals_alone_in(
        &llm_fixture(),
        KvPlacement::Device(Slot::host_memory()),
        &tiny_prompts(),
        32,
    );
}

#[test]
fn a_float16_cache_gives_the_same_outputs_alone_and_beside_seven_others() {
    assert_batched_equals_alone(
        &llm_fixture().with_file_name("tiny-r1-f16kv"),
        &tiny_prompts(),
        32,
    );
}

#[test]
fn smollm2_gives_the_same_outputs_alone_and_beside_seven_others() {
    let expected = workspace().join("fixtures/llm/smollm2/expected.json");
    let expected: Value =
        serde_json::from_slice(&std::fs::read(expected).expect("expected.json")).expect("JSON");
    let prompts = expected["prompts"].as_array().expect("prompts").clone();
    for variant in [FP32, INT4] {
        assert_batched_equals_alone(&model_dir(variant), &prompts, 16);
    }
}

#[test]
fn the_warm_up_finds_a_graph_that_does_not_take_padded_rows() {
    // tiny-r1's own graph passes; tiny-r1-gqa's GroupQueryAttention reads
    // each row's past from the start of the cache, so its padded rows give
    // other logits than the same sequences alone.
    with_scheduler(&llm_fixture(), ROOMY, |scheduler| {
        scheduler.warm_up(0).expect("tiny-r1 takes padded rows");
    });
    let gqa = llm_fixture().with_file_name("tiny-r1-gqa");
    with_scheduler(&gqa, ROOMY, |scheduler| {
        let refused = scheduler.warm_up(0).expect_err("GQA refused");
        assert!(
            matches!(refused, StartError::Unbatchable { .. }),
            "{refused}"
        );
        assert!(
            refused
                .to_string()
                .contains("the graph does not take padded rows")
        );
    });
}

#[test]
fn requests_leaving_and_joining_mid_stream_leave_the_others_unchanged() {
    with_scheduler(&llm_fixture(), ROOMY, |scheduler| {
        let mut requests = eight(&tiny_prompts(), 32);
        let alone: Vec<Outcome> = requests.iter_mut().map(|r| alone(scheduler, r)).collect();
        // 1: a stop string from the middle of its answer.
        let stop = alone[1].text.chars().skip(6).take(3).collect::<String>();
        requests[1].stop = vec![stop.clone()];
        // 2: max_tokens 5.
        requests[2].max_tokens = 5;
        // 3: raw_completion ends at its EOS (id 1) after 18 tokens.
        requests[3].stop_ids = HashSet::from([1]);
        let mut pending: Vec<Pending> = requests[..6]
            .iter_mut()
            .map(|r| submit(scheduler, r))
            .collect();
        for turn in 1..=12 {
            scheduler.turn();
            // 0: the client leaves after turn 4; 6 and 7 join at turn 10.
            if turn == 4 {
                pending[0].leave();
            }
            if turn == 10 {
                pending.extend(requests[6..].iter_mut().map(|r| submit(scheduler, r)));
            }
        }
        run_to_end(scheduler, ROOMY);
        let outcomes: Vec<Outcome> = pending.into_iter().map(Pending::outcome).collect();

        assert_eq!(outcomes[0].reason, FinishReason::Cancelled);
        assert!(outcomes[0].tokens < 32, "{:?}", outcomes[0]);
        assert!(alone[0].text.starts_with(&outcomes[0].text));

        let cut = alone[1]
            .text
            .find(&stop)
            .expect("the stop string is in the answer");
        assert_eq!(outcomes[1].text, alone[1].text[..cut]);
        assert_eq!(outcomes[1].reason, FinishReason::Stop);

        assert_eq!(
            (outcomes[2].reason, outcomes[2].tokens),
            (FinishReason::Length, 5)
        );
        assert!(alone[2].text.starts_with(&outcomes[2].text));

        assert_eq!(
            (outcomes[3].reason, outcomes[3].tokens),
            (FinishReason::Stop, 18)
        );
        let recorded = &tiny_prompts()[3]["greedy"];
        assert_eq!(token_ids(&recorded["ids"]).len(), 18);
        assert_eq!(
            outcomes[3].text,
            recorded["text_skip_special_tokens"].as_str().expect("text")
        );

        for index in 4..8 {
            assert_eq!(outcomes[index], alone[index], "request {index}");
        }
    });
}

#[test]
fn a_full_cache_pool_makes_requests_wait_and_never_evicts() {
    // Room for one request of 60 positions (20-token prompt + 40), not two.
    let limits = Limits {
        sequences: 8,
        cache_tokens: 100,
    };
    with_scheduler(&llm_fixture(), limits, |scheduler| {
        let prompt = token_ids(&tiny_prompts()[0]["prompt_ids"]);
        let mut first = request(prompt.clone(), 40, None);
        let mut second = request(prompt, 40, Some(7));
        let alone_second = alone(scheduler, &mut second);
        let running = submit(scheduler, &mut first);
        let waiting = submit(scheduler, &mut second);
        scheduler.turn();
        let stats = scheduler.stats();
        assert_eq!((stats.running, stats.queued), (1, 1), "{stats:?}");
        // The first keeps its row until it has all its tokens.
        let mut turns = 1;
        while scheduler.stats().queued == 1 {
            scheduler.turn();
            turns += 1;
            assert!(turns <= 40, "the second request was admitted too early");
        }
        assert_eq!(turns, 40);
        assert_eq!(run_to_end(scheduler, limits), 1);
        let first = running.outcome();
        assert_eq!((first.reason, first.tokens), (FinishReason::Length, 40));
        assert_eq!(waiting.outcome(), alone_second);
    });
}
