//! Causal-LM serving throughput on the tiny-r1 fixture (Qwen2-like, 2
//! layers, hidden 64): what the socket, HTTP, SSE and the audit cost per
//! token over running the same generation in process.
//!
//! In one run, greedy with `ignore_eos`, rounds interleaved:
//! - in process: the daemon's own engine without the socket, one
//!   `Slot::forward` loop with argmax (ONNX Runtime and the KV cache only),
//!   and `generate()` (that plus sampling, detokenizing and the event
//!   channel, read by another thread), on one thread and on four threads
//!   with a slot each; and `generate()` with its events buffered (no thread
//!   woken per token), to split the in-process cost;
//! - through the socket: the release `deepseekd` serving the fixture with
//!   `intra_op_threads = 1` and `sessions = 1` or `sessions = 4`, streamed
//!   `POST /v1/completions` from 1 or 4 concurrent clients, each on its own
//!   connection (opened before the clock starts); plus `sessions = 1` with `sandbox.enforce =
//!   false`, to price the lockdown.
//!
//! Two measurements: prefill (a ~200-token prompt, `max_tokens: 1`;
//! tokens/s = prompt tokens / TTFT) and decode (a short prompt,
//! `max_tokens: 200`; tokens/s = (completion tokens - 1) / (total - TTFT)).
//! TTFT is the time from sending the request (in process: from tokenizing
//! the prompt) to the first streamed event carrying text; total is the time
//! to `data: [DONE]` (in process: the end of `generate()`).
//!
//! Each round measures every row once, in a fresh random order.
//! Absolute figures are medians over all rounds; comparisons are paired: the
//! median over rounds of the difference (or ratio) between a row and its
//! baseline in the same round, so that the slow and fast spells of a noisy
//! shared machine cancel out. Run with `make bench-llm`; `--rounds N`
//! (default 60).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::Bytes;
use deepseek_tests::{Daemon, llm_fixture, llm_table, ort_library};
use deepseekd::config::RuntimeConfig;
use deepseekd::engine::llm::files::ModelFiles;
use deepseekd::engine::llm::generate::{Delta, GenerateRequest, generate};
use deepseekd::engine::llm::model::{GraphSpec, KvPlacement, Slot};
use deepseekd::engine::llm::sampling::SamplingParams;
use deepseekd::engine::llm::tokenizer::Tokenizer;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use ort::environment::Environment;
use ort::session::Session;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Prompt tokens of the prefill measurement (BOS included), and completion
/// tokens of the decode one; with the decode prompt both fit the fixture's
/// 256-token context.
const PREFILL_TOKENS: usize = 200;
const DECODE_TOKENS: usize = 200;
const DECODE_PROMPT: &str = "The capital of France is";
const MODEL: &str = "tiny-r1";

/// One generation, as its client saw it.
#[derive(Debug, Clone)]
struct Timing {
    start: Instant,
    /// The first text.
    first: Instant,
    /// The generation's last event (the finish chunk; in process, the last
    /// delta): what comes after it is the `completion` audit record.
    last: Instant,
    end: Instant,
    prompt_tokens: usize,
    completion_tokens: usize,
    text: String,
}

impl Timing {
    fn ttft(&self) -> Duration {
        self.first - self.start
    }

    fn prefill_rate(&self) -> f64 {
        self.prompt_tokens as f64 / self.ttft().as_secs_f64()
    }

    /// From the generation's last event to the end of the answer.
    fn tail(&self) -> Duration {
        self.end - self.last
    }

    /// Tokens after the first over the time after the first.
    fn decode_rate(&self) -> f64 {
        (self.completion_tokens - 1) as f64 / (self.end - self.first).as_secs_f64()
    }
}

/// The generations of one batch of concurrent clients.
#[derive(Debug)]
struct Batch(Vec<Timing>);

impl Batch {
    /// The median of `f` over the clients.
    fn each(&self, f: impl Fn(&Timing) -> f64) -> f64 {
        median(self.0.iter().map(f).collect())
    }

    /// All tokens of the batch over its wall time: from the first request
    /// sent to the last client's `end_of` (its first text for prefill, its
    /// end for decode).
    fn aggregate(&self, tokens: fn(&Timing) -> usize, end_of: fn(&Timing) -> Instant) -> f64 {
        let start = self.0.iter().map(|t| t.start).min().expect("a client");
        let end = self.0.iter().map(end_of).max().expect("a client");
        self.0.iter().map(tokens).sum::<usize>() as f64 / (end - start).as_secs_f64()
    }
}

/// Fisher-Yates with a xorshift64 generator: a fixed, reproducible order.
fn shuffle(items: &mut [usize], state: &mut u64) {
    for i in (1..items.len()).rev() {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let j = usize::try_from(*state % (i as u64 + 1)).expect("index fits");
        items.swap(i, j);
    }
}

/// The `p` quantile, nearest rank.
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The engine without the daemon: what `CausalLm::load` builds, by hand.
struct InProcess {
    spec: GraphSpec,
    tokenizer: Tokenizer,
}

impl InProcess {
    /// The fixture's files and `slots` sessions with one intra-op thread,
    /// as the daemon builds them, each warmed up as the daemon does.
    fn load(environment: &Environment, dir: &Path, slots: usize) -> (Self, Vec<Slot>) {
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
    fn prompt_of(&self, tokens: usize) -> String {
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

    fn encode(&self, text: &str) -> Vec<u32> {
        // Completions are encoded with special tokens (BOS), as the daemon does.
        self.tokenizer.encode(text, true).expect("encode")
    }

    /// The forward passes alone: prefill, then argmax and one step per
    /// token, as `generate()` does without sampling and detokenizing.
    fn forward_loop(&self, slot: &mut Slot, prompt: &str, max_tokens: usize) -> Timing {
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
        }
    }

    /// The daemon's `generate()` on `slot`, its events read by another
    /// thread as the daemon's stream task reads them.
    fn generate(&self, slot: &mut Slot, prompt: &str, max_tokens: usize) -> Timing {
        let start = Instant::now();
        let request = self.request(prompt, max_tokens);
        let prompt_tokens = request.prompt_ids.len();
        // The daemon's channel between the generation and its stream.
        let (events, mut received) = mpsc::channel::<Delta>(16);
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
                generate(slot, &self.spec, &self.tokenizer, &request, &events).expect("generate");
            drop(events);
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

    /// `generate()` with room in the channel for every event and nobody
    /// reading until it ends: no thread is woken per token. There is no
    /// first event to time, so `first` is the start: only `end - start`
    /// means anything.
    fn generate_buffered(&self, slot: &mut Slot, prompt: &str, max_tokens: usize) -> Timing {
        let start = Instant::now();
        let request = self.request(prompt, max_tokens);
        // One event per step and the last one.
        let (events, mut received) = mpsc::channel::<Delta>(max_tokens + 1);
        let finished =
            generate(slot, &self.spec, &self.tokenizer, &request, &events).expect("generate");
        drop(events);
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
            prompt_tokens: request.prompt_ids.len(),
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
fn in_process_batch(slots: &mut [Slot], run: &(dyn Fn(&mut Slot) -> Timing + Sync)) -> Batch {
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

/// Streams one completion over `sender`'s connection.
async fn stream_completion(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    body: Bytes,
) -> Timing {
    let request = Request::builder()
        .method("POST")
        .uri("/v1/completions")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(body))
        .expect("request");
    let start = Instant::now();
    let response = sender.send_request(request).await.expect("send");
    assert_eq!(response.status(), 200, "POST /v1/completions");
    let mut body = response.into_body();
    let mut buffer = String::new();
    let mut first = None;
    let mut last = None;
    let mut text = String::new();
    let mut usage = None;
    let mut end = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("body frame");
        let arrived = Instant::now();
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buffer.push_str(std::str::from_utf8(&data).expect("UTF-8 events"));
        while let Some(at) = buffer.find("\n\n") {
            let event: String = buffer.drain(..at + 2).collect();
            let data = event
                .trim_end()
                .strip_prefix("data: ")
                .expect("a data: event");
            if data == "[DONE]" {
                end = Some(arrived);
                continue;
            }
            let chunk: Value = serde_json::from_str(data).expect("JSON event");
            if let Some(piece) = chunk["choices"][0]["text"].as_str()
                && !piece.is_empty()
            {
                first.get_or_insert(arrived);
                text.push_str(piece);
            }
            if chunk["choices"][0]["finish_reason"].is_string() {
                last = Some(arrived);
            }
            if chunk["usage"].is_object() {
                usage = Some(chunk["usage"].clone());
            }
        }
    }
    let usage = usage.expect("the usage chunk (stream_options.include_usage)");
    let count = |key: &str| {
        usize::try_from(usage[key].as_u64().expect("a token count")).expect("count fits")
    };
    Timing {
        start,
        first: first.expect("an event with text"),
        last: last.expect("the finish chunk"),
        end: end.expect("data: [DONE]"),
        prompt_tokens: count("prompt_tokens"),
        completion_tokens: count("completion_tokens"),
        text,
    }
}

/// `clients` concurrent streamed completions of `body`, each on its own
/// connection, opened before they start together.
async fn socket_batch(socket: PathBuf, body: Bytes, clients: usize) -> Batch {
    let barrier = Arc::new(tokio::sync::Barrier::new(clients));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let socket = socket.clone();
            let body = body.clone();
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                let stream = tokio::net::UnixStream::connect(&socket)
                    .await
                    .expect("connect");
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .expect("handshake");
                tokio::spawn(connection);
                barrier.wait().await;
                stream_completion(&mut sender, body).await
            })
        })
        .collect();
    let mut timings = Vec::new();
    for task in tasks {
        timings.push(task.await.expect("client task"));
    }
    Batch(timings)
}

fn completion_body(prompt: &str, max_tokens: usize) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&json!({
            "model": MODEL,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": true,
            "stream": true,
            "stream_options": {"include_usage": true},
        }))
        .expect("json"),
    )
}

/// Where a row's generations run.
enum Route {
    Forward(usize),
    /// One client only; shown in the breakdown, not in the tables.
    Buffered,
    Generate(usize),
    Socket(PathBuf, usize),
}

struct Row {
    label: &'static str,
    clients: usize,
    route: Route,
    prefill: Vec<Batch>,
    decode: Vec<Batch>,
}

fn main() {
    let mut rounds = 60;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|&n| n > 0)
                    .expect("--rounds N, N > 0")
            }
            // Passed by `cargo bench`.
            "--bench" => {}
            other => panic!("unknown argument {other:?}; usage: llm_throughput [--rounds N]"),
        }
    }
    let (environment, version) = deepseekd::engine::runtime::init(&RuntimeConfig {
        library: ort_library(),
        cuda_library_dir: None,
        cudnn_library_dir: None,
    })
    .expect("ONNX Runtime");
    let dir = llm_fixture();
    let (engine, mut slots) = InProcess::load(&environment, &dir, 4);
    let prefill_prompt = engine.prompt_of(PREFILL_TOKENS);
    let prefill_body = completion_body(&prefill_prompt, 1);
    let decode_body = completion_body(DECODE_PROMPT, DECODE_TOKENS);

    let table = |sessions: usize| llm_table(MODEL, &dir, &format!("sessions = {sessions}"));
    let one = Daemon::start("", &table(1));
    let four = Daemon::start("", &table(4));
    // sessions = 1 without the lockdown, to price seccomp and Landlock.
    let unconfined = Daemon::spawn_sandboxed("", "enforce = false", &table(1));
    unconfined.wait_ready();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let lockdown = if deepseek_tests::is_root() {
        "enforced (root: user nobody, Landlock, seccomp)"
    } else {
        "off (not root)"
    };
    println!(
        "LLM throughput: {MODEL} fixture, ONNX Runtime {version}, {cores} cores, {rounds} rounds"
    );
    println!(
        "greedy, ignore_eos; prefill: {PREFILL_TOKENS}-token prompt, max_tokens 1; decode: {:?} ({} tokens), max_tokens {DECODE_TOKENS}",
        DECODE_PROMPT,
        engine.encode(DECODE_PROMPT).len()
    );
    println!(
        "daemon: intra_op_threads = 1, streamed /v1/completions, audited; lockdown {lockdown}"
    );
    println!();

    let mut rows = vec![
        Row {
            label: "in-process forward",
            clients: 1,
            route: Route::Forward(1),
            prefill: Vec::new(),
            decode: Vec::new(),
        },
        Row {
            label: "in-process gen buffered",
            clients: 1,
            route: Route::Buffered,
            prefill: Vec::new(),
            decode: Vec::new(),
        },
        Row {
            label: "in-process generate",
            clients: 1,
            route: Route::Generate(1),
            prefill: Vec::new(),
            decode: Vec::new(),
        },
        Row {
            label: "socket sessions=1",
            clients: 1,
            route: Route::Socket(one.socket.clone(), 1),
            prefill: Vec::new(),
            decode: Vec::new(),
        },
        Row {
            label: "socket s=1 unconfined",
            clients: 1,
            route: Route::Socket(unconfined.socket.clone(), 1),
            prefill: Vec::new(),
            decode: Vec::new(),
        },
        Row {
            label: "socket sessions=4",
            clients: 1,
            route: Route::Socket(four.socket.clone(), 1),
            prefill: Vec::new(),
            decode: Vec::new(),
        },
        Row {
            label: "in-process forward",
            clients: 4,
            route: Route::Forward(4),
            prefill: Vec::new(),
            decode: Vec::new(),
        },
        Row {
            label: "in-process generate",
            clients: 4,
            route: Route::Generate(4),
            prefill: Vec::new(),
            decode: Vec::new(),
        },
        Row {
            label: "socket sessions=4",
            clients: 4,
            route: Route::Socket(four.socket.clone(), 4),
            prefill: Vec::new(),
            decode: Vec::new(),
        },
    ];

    let measure = |route: &Route, slots: &mut [Slot], decode: bool| -> Batch {
        let (prompt, max_tokens, body) = if decode {
            (DECODE_PROMPT, DECODE_TOKENS, &decode_body)
        } else {
            (prefill_prompt.as_str(), 1, &prefill_body)
        };
        match route {
            Route::Forward(n) => in_process_batch(&mut slots[..*n], &|slot| {
                engine.forward_loop(slot, prompt, max_tokens)
            }),
            Route::Buffered => in_process_batch(&mut slots[..1], &|slot| {
                engine.generate_buffered(slot, prompt, max_tokens)
            }),
            Route::Generate(n) => in_process_batch(&mut slots[..*n], &|slot| {
                engine.generate(slot, prompt, max_tokens)
            }),
            Route::Socket(socket, n) => {
                runtime.block_on(socket_batch(socket.clone(), body.clone(), *n))
            }
        }
    };

    // Warm-up, and the same work everywhere: one greedy decode per path.
    let reference = measure(&Route::Generate(1), &mut slots, true).0[0].clone();
    assert_eq!(reference.completion_tokens, DECODE_TOKENS);
    for row in &rows {
        for decode in [false, true] {
            for timing in measure(&row.route, &mut slots, decode).0 {
                if decode {
                    assert_eq!(timing.completion_tokens, DECODE_TOKENS, "{}", row.label);
                    assert_eq!(timing.text, reference.text, "{}: greedy text", row.label);
                } else {
                    assert_eq!(timing.prompt_tokens, PREFILL_TOKENS, "{}", row.label);
                    assert_eq!(timing.completion_tokens, 1, "{}", row.label);
                }
            }
        }
    }

    // Interleaved: each round measures every row once (prefill, then
    // decode), in a fresh random order, so that drift on a noisy machine
    // hits every row alike, no row always follows the same one (the
    // daemon's audit records and the 4-client rows' threads finish in the
    // background), and each row is compared with its baseline measured
    // within the same fraction of a second. A short pause lets the previous
    // row's background work settle.
    let measuring = Instant::now();
    let mut order: Vec<usize> = (0..rows.len()).collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..rounds {
        shuffle(&mut order, &mut seed);
        for &index in &order {
            std::thread::sleep(Duration::from_millis(2));
            let prefill = measure(&rows[index].route, &mut slots, false);
            let decode = measure(&rows[index].route, &mut slots, true);
            rows[index].prefill.push(prefill);
            rows[index].decode.push(decode);
        }
    }
    let elapsed = measuring.elapsed();

    // Absolute figures: medians over every client of every round.
    let pooled = |batches: &[Batch], f: fn(&Timing) -> f64| {
        median(batches.iter().flat_map(|b| b.0.iter().map(f)).collect())
    };
    // Against another row: the median over rounds of `compare` applied to
    // the two rows' values of the same round (each the median of its clients).
    let paired =
        |batches: &[Batch], base: &[Batch], f: fn(&Timing) -> f64, compare: fn(f64, f64) -> f64| {
            median(
                batches
                    .iter()
                    .zip(base)
                    .map(|(a, b)| compare(a.each(f), b.each(f)))
                    .collect(),
            )
        };
    let ratio = |a: f64, b: f64| a / b;
    let difference = |a: f64, b: f64| a - b;
    // The baseline of a row: in-process generate() with as many clients.
    let baseline = |clients: usize| {
        rows.iter()
            .find(|r| matches!(r.route, Route::Generate(n) if n == clients))
            .expect("an in-process generate row for each client count")
    };
    let tables = || rows.iter().filter(|r| !matches!(r.route, Route::Buffered));
    let ttft_ms = |t: &Timing| t.ttft().as_secs_f64() * 1e3;
    let us_per_token = |t: &Timing| 1e6 / t.decode_rate();

    println!(
        "prefill ({PREFILL_TOKENS} prompt tokens, max_tokens 1; TTFT to the first text event; tok/s = prompt tokens / TTFT)"
    );
    println!(
        "{:<24} {:>7} {:>9} {:>9} {:>13} {:>13} {:>9}",
        "path", "clients", "TTFT ms", "+TTFT ms", "tok/s/client", "tok/s total", "vs gen"
    );
    for row in tables() {
        let base = &baseline(row.clients).prefill;
        let total = median(
            row.prefill
                .iter()
                .map(|b| b.aggregate(|t| t.prompt_tokens, |t| t.first))
                .collect(),
        );
        println!(
            "{:<24} {:>7} {:>9.2} {:>9.2} {:>13.0} {:>13.0} {:>9.2}",
            row.label,
            row.clients,
            pooled(&row.prefill, ttft_ms),
            paired(&row.prefill, base, ttft_ms, difference),
            pooled(&row.prefill, Timing::prefill_rate),
            total,
            paired(&row.prefill, base, Timing::prefill_rate, ratio),
        );
    }
    println!();
    println!(
        "decode ({DECODE_TOKENS} tokens; tok/s = {} / (total - TTFT), total to [DONE]; tok/s total = all tokens / batch wall time)",
        DECODE_TOKENS - 1
    );
    println!(
        "{:<24} {:>7} {:>9} {:>13} {:>9} {:>10} {:>13} {:>9} {:>8}",
        "path",
        "clients",
        "TTFT ms",
        "tok/s/client",
        "us/token",
        "+us/token",
        "tok/s total",
        "vs gen",
        "tail ms"
    );
    for row in tables() {
        let base = &baseline(row.clients).decode;
        let total = median(
            row.decode
                .iter()
                .map(|b| b.aggregate(|t| t.completion_tokens, |t| t.end))
                .collect(),
        );
        println!(
            "{:<24} {:>7} {:>9.2} {:>13.0} {:>9.1} {:>10.1} {:>13.0} {:>9.2} {:>8.2}",
            row.label,
            row.clients,
            pooled(&row.decode, ttft_ms),
            pooled(&row.decode, Timing::decode_rate),
            pooled(&row.decode, us_per_token),
            paired(&row.decode, base, us_per_token, difference),
            total,
            paired(&row.decode, base, Timing::decode_rate, ratio),
            pooled(&row.decode, |t| t.tail().as_secs_f64() * 1e3),
        );
    }
    println!();
    println!(
        "+TTFT ms, +us/token, vs gen: against in-process generate() with as many clients, paired by round\n\
         (median of the per-round differences or ratios); tail: from the finish chunk to [DONE]\n\
         (the completion audit record), inside total"
    );

    // Where the time of a token goes, layer by layer, measured the same way
    // for every row (the buffered one has no first event to time).
    let whole = |t: &Timing| (t.end - t.start).as_secs_f64() * 1e6 / t.completion_tokens as f64;
    println!();
    println!(
        "whole decode request, 1 client: (end - start) / {DECODE_TOKENS} tokens, the prompt's prefill included"
    );
    println!(
        "{:<24} {:>9} {:>9} {:>9} {:>11}",
        "path", "p10 us", "p50 us", "p90 us", "+ on above"
    );
    let mut above: Option<&Row> = None;
    for row in rows.iter().filter(|r| r.clients == 1) {
        let values: Vec<f64> = row.decode.iter().map(|b| b.each(whole)).collect();
        let step = above.map_or_else(String::new, |a| {
            format!("{:.1}", paired(&row.decode, &a.decode, whole, difference))
        });
        println!(
            "{:<24} {:>9.1} {:>9.1} {:>9.1} {step:>11}",
            row.label,
            percentile(&values, 0.1),
            percentile(&values, 0.5),
            percentile(&values, 0.9),
        );
        above = Some(row);
    }
    println!("(+ on above: paired by round, median of the differences)");
    println!();
    println!("rounds took {:.1} s", elapsed.as_secs_f64());
}
