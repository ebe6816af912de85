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

mod in_process;
mod socket;
mod timing;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use deepseek_tests::{Daemon, llm_fixture, llm_table, ort_library};
use deepseekd::config::RuntimeConfig;
use deepseekd::engine::llm::decoder::Slot;
use serde_json::json;

use in_process::{InProcess, in_process_batch};
use socket::socket_batch;
use timing::{Batch, Timing, median, percentile, shuffle};

/// Prompt tokens of the prefill measurement (BOS included), and completion
/// tokens of the decode one; with the decode prompt both fit the fixture's
/// 256-token context.
const PREFILL_TOKENS: usize = 200;
const DECODE_TOKENS: usize = 200;
const DECODE_PROMPT: &str = "The capital of France is";
const MODEL: &str = "tiny-r1";

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
