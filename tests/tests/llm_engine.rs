//! The causal-LM engine in process, against the ids `fixtures/llm/make_tiny_llm.py`
//! recorded with Python onnxruntime: the KV-cache loop must reproduce them
//! exactly, as the CPU runs it (`run`), on the I/O-binding path the GPU
//! takes (here with host memory standing in for the device), with one
//! shared past/present buffer on tiny-r1-gqa (GroupQueryAttention), and with
//! a float16 cache and float16 logits on tiny-r1-f16kv.

use std::collections::{BTreeMap, HashSet};
use std::sync::OnceLock;

use deepseek_tests::{llm_expected, llm_fixture, ort_library, token_ids};
use deepseekd::config::RuntimeConfig;
use deepseekd::engine::llm::decoder::{GraphSpec, KvPlacement, KvType, Slot};
use deepseekd::engine::llm::files::ModelFiles;
use deepseekd::engine::llm::generate::{FinishReason, GenerateRequest};
use deepseekd::engine::llm::generation::generate;
use deepseekd::engine::llm::sampling::{Sampler, SamplingParams};
use deepseekd::engine::llm::tokenizer::Tokenizer;
use ort::environment::Environment;
use ort::session::Session;

pub(crate) fn environment() -> &'static Environment {
    static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
    ENVIRONMENT.get_or_init(|| {
        let config = RuntimeConfig {
            library: ort_library(),
            cuda_library_dir: None,
            cudnn_library_dir: None,
        };
        deepseekd::engine::runtime::init(&config)
            .expect("ONNX Runtime")
            .0
    })
}

fn gqa_fixture() -> std::path::PathBuf {
    llm_fixture().with_file_name("tiny-r1-gqa")
}

fn files() -> ModelFiles {
    let dir = llm_fixture();
    ModelFiles::read(&dir, &dir.join("model.onnx"), BTreeMap::new()).expect("fixture files")
}

/// A session of `dir/model.onnx` on one thread.
pub(crate) fn session(dir: &std::path::Path) -> Session {
    Session::builder(environment())
        .expect("builder")
        .with_intra_threads(1)
        .expect("threads")
        .commit_from_file(dir.join("model.onnx"))
        .expect("session")
}

fn slot_in(dir: &std::path::Path, placement: KvPlacement) -> (Slot, GraphSpec) {
    let files = files();
    let session = session(dir);
    let spec = GraphSpec::read(&session, &files.arch).expect("graph spec");
    (Slot::new(session, &spec, placement).expect("slot"), spec)
}

fn slot(binding: bool) -> (Slot, GraphSpec) {
    // Memory descriptions are made by ONNX Runtime: load it first.
    environment();
    let placement = if binding {
        KvPlacement::Device(Slot::host_memory())
    } else {
        KvPlacement::Host
    };
    slot_in(&llm_fixture(), placement)
}

#[test]
fn the_graph_is_read_from_its_inputs_and_outputs() {
    let (_, spec) = slot(false);
    assert_eq!(
        (
            spec.layers,
            spec.kv_heads,
            spec.head_dim,
            spec.kv_type,
            spec.vocab
        ),
        (2, 2, 16, KvType::F32, 384)
    );
    assert!(spec.position_ids);
    assert!(!spec.logits_f16);
}

/// Greedy decoding step by step, as `expected.json` records it, with the
/// prompt run `chunk` tokens at a time.
fn greedy_ids(
    slot: &mut Slot,
    spec: &GraphSpec,
    prompt: &[u32],
    chunk: usize,
    max: usize,
) -> Vec<u32> {
    let mut sampler = Sampler::new(SamplingParams::greedy(), 0, 384);
    let mut logits = Vec::new();
    let mut out = Vec::new();
    slot.reset(spec).expect("reset");
    slot.prefill(spec, prompt, chunk, &mut logits)
        .expect("prefill");
    while out.len() < max {
        let id = sampler.sample(&logits);
        out.push(id);
        if id == 1 {
            break;
        }
        slot.forward(spec, &[id], &mut logits).expect("forward");
    }
    out
}

/// Every prompt of `expected.json`, decoded greedily on `slot` with the
/// prompt run in pieces of each of `chunks` tokens, gives the recorded ids.
fn assert_recorded_ids(slot: &mut Slot, spec: &GraphSpec, chunks: &[usize], what: &str) {
    for prompt in llm_expected()["prompts"].as_array().expect("prompts") {
        let greedy = &prompt["greedy"];
        let max = usize::try_from(greedy["max_new_tokens"].as_u64().expect("max")).expect("usize");
        let prompt_ids = token_ids(&prompt["prompt_ids"]);
        for &chunk in chunks {
            assert_eq!(
                greedy_ids(slot, spec, &prompt_ids, chunk, max),
                token_ids(&greedy["ids"]),
                "{} ({what}, prefill chunk {chunk})",
                prompt["name"]
            );
        }
    }
}

#[test]
fn the_kv_cache_loop_reproduces_the_recorded_ids_on_both_paths_whole_or_chunked() {
    for binding in [false, true] {
        let (mut slot, spec) = slot(binding);
        assert_eq!(slot.uses_binding(), binding);
        // Whole, and in pieces of 7 tokens as a long prompt would run.
        assert_recorded_ids(
            &mut slot,
            &spec,
            &[512, 7],
            &format!("I/O binding: {binding}"),
        );
    }
}

#[test]
fn a_shared_past_present_buffer_reproduces_the_recorded_ids() {
    environment();
    let shared = KvPlacement::Shared {
        memory: Slot::host_memory(),
        capacity: 256,
    };
    for placement in [shared, KvPlacement::Host] {
        let what = format!("KV cache {}", placement.name());
        let (mut slot, spec) = slot_in(&gqa_fixture(), placement);
        assert!(!spec.position_ids, "positions come from the attention op");
        assert_recorded_ids(&mut slot, &spec, &[512, 5], &what);
    }
    // A generation that would run past the buffer is refused, not corrupted.
    let (mut slot, spec) = slot_in(
        &gqa_fixture(),
        KvPlacement::Shared {
            memory: Slot::host_memory(),
            capacity: 8,
        },
    );
    slot.reset(&spec).expect("reset");
    let mut logits = Vec::new();
    let err = slot
        .forward(&spec, &[0; 9], &mut logits)
        .expect_err("over capacity");
    assert!(
        err.to_string()
            .contains("exceed the KV buffer of 8 positions"),
        "{err}"
    );
}

#[test]
fn a_float16_cache_and_float16_logits_give_the_recorded_ids() {
    environment();
    let dir = llm_fixture().with_file_name("tiny-r1-f16kv");
    for placement in [KvPlacement::Host, KvPlacement::Device(Slot::host_memory())] {
        let what = format!("KV cache {}", placement.name());
        let (mut slot, spec) = slot_in(&dir, placement);
        assert_eq!((spec.kv_type, spec.logits_f16), (KvType::F16, true));
        assert_recorded_ids(&mut slot, &spec, &[512], &what);
    }
}

#[test]
fn generate_streams_the_recorded_text_and_counts_tokens() {
    let expected = llm_expected();
    let files = files();
    let tokenizer = Tokenizer::from_bytes(&files.tokenizer_json).expect("tokenizer");
    let (mut slot, spec) = slot(false);
    for prompt in expected["prompts"].as_array().expect("prompts") {
        let greedy = &prompt["greedy"];
        let request = GenerateRequest {
            prompt_ids: token_ids(&prompt["prompt_ids"]),
            max_tokens: usize::try_from(greedy["max_new_tokens"].as_u64().expect("max"))
                .expect("usize"),
            sampling: SamplingParams::greedy(),
            seed: 0,
            stop: Vec::new(),
            stop_ids: HashSet::from([1]),
            split_reasoning: false,
            reasoning_open: false,
            calls: None,
            constraint: None,
            logprobs: None,
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let finished = generate(&mut slot, &spec, &tokenizer, request, tx).expect("generate");
        let mut text = String::new();
        let mut events = 0;
        while let Ok(delta) = rx.try_recv() {
            assert!(delta.reasoning.is_empty());
            assert!(!delta.content.is_empty(), "an empty event");
            text.push_str(&delta.content);
            events += 1;
        }
        assert_eq!(
            text,
            greedy["text_skip_special_tokens"].as_str().expect("text"),
            "{}",
            prompt["name"]
        );
        let recorded = token_ids(&greedy["ids"]).len();
        assert_eq!(finished.completion_tokens, recorded, "{}", prompt["name"]);
        let reason = if greedy["finish_reason"] == "stop" {
            FinishReason::Stop
        } else {
            FinishReason::Length
        };
        assert_eq!(finished.reason, reason, "{}", prompt["name"]);
        // An event carries text, at most one per generated token plus the
        // flush: a reader that lags holds text, not empty events.
        assert!(
            events <= recorded + 1,
            "{}: {events} events",
            prompt["name"]
        );
    }
}

#[test]
fn a_closed_channel_cancels_within_a_step() {
    let files = files();
    let tokenizer = Tokenizer::from_bytes(&files.tokenizer_json).expect("tokenizer");
    let (mut slot, spec) = slot(false);
    let request = GenerateRequest {
        prompt_ids: vec![0, 380, 372],
        max_tokens: 200,
        sampling: SamplingParams::greedy(),
        seed: 0,
        stop: Vec::new(),
        stop_ids: HashSet::new(),
        split_reasoning: true,
        reasoning_open: true,
        calls: None,
        constraint: None,
        logprobs: None,
    };
    // The client left before the first token: the first event cannot be
    // delivered, and the generation ends there.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    drop(rx);
    let finished = generate(&mut slot, &spec, &tokenizer, request, tx).expect("generate");
    assert_eq!(finished.reason, FinishReason::Cancelled);
    assert_eq!(finished.completion_tokens, 1);
}
