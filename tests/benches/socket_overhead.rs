//! What serving through the socket costs over calling ONNX Runtime directly.
//!
//! In one run, on the demo fixture model (y = 2x + 1, row sums):
//! - in process: `Session::run` on one session, inputs built and outputs
//!   copied out each time (what any server must do at least);
//! - through the socket: the release `deepseekd`, the same request as KServe
//!   JSON and as binary tensor data, from 1, 8 and 64 concurrent clients, each
//!   on its own keep-alive connection.
//!
//! Two sizes: a [1, 4] input (pure overhead) and a [4096, 4] input (64 KiB of
//! FP32, where encoding matters). Prints p50/p99 latency, requests/s, and the
//! ratios to in-process. Run with `make bench`; `--seconds N` sets the time
//! per measurement (default 3).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use deepseek_tests::load::{Prepared, Sample, load, seconds_arg};
use deepseek_tests::{Daemon, binary_request, model, model_table, ort_library};
use deepseekd::config::RuntimeConfig;
use ort::session::Session;
use ort::value::Tensor;
use serde_json::json;

fn input(rows: usize) -> Vec<f32> {
    (0..rows * 4)
        .map(|i| (i % 97) as f32 * 0.25 - 3.0)
        .collect()
}

fn in_process(session: &mut Session, rows: usize, seconds: f64) -> Sample {
    let data = input(rows);
    let mut latencies = Vec::new();
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < seconds {
        let t = Instant::now();
        let x = Tensor::from_array((vec![rows as i64, 4], data.clone())).expect("tensor");
        let outputs = session.run(ort::inputs!["x" => x]).expect("run");
        let (_, y) = outputs["y"].try_extract_tensor::<f32>().expect("y");
        let (_, sums) = outputs["row_sum"]
            .try_extract_tensor::<f32>()
            .expect("row_sum");
        std::hint::black_box((y.to_vec(), sums.to_vec()));
        latencies.push(t.elapsed());
    }
    Sample {
        latencies,
        elapsed: started.elapsed(),
    }
}

fn prepare(rows: usize, binary: bool) -> Prepared {
    let data = input(rows);
    if binary {
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        let json = json!({
            "inputs": [{"name": "x", "shape": [rows, 4], "datatype": "FP32", "parameters": {"binary_data_size": bytes.len()}}],
            "parameters": {"binary_data_output": true},
        });
        let (headers, body) = binary_request(&json, &bytes);
        Prepared {
            path: "/v2/models/demo/infer",
            headers,
            body: Bytes::from(body),
        }
    } else {
        let json = json!({"inputs": [{"name": "x", "shape": [rows, 4], "datatype": "FP32", "data": data}]});
        Prepared {
            path: "/v2/models/demo/infer",
            headers: vec![("content-type", "application/json".to_owned())],
            body: Bytes::from(serde_json::to_vec(&json).expect("json")),
        }
    }
}

fn micros(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn main() {
    let seconds = seconds_arg("socket_overhead", 3.0);
    let (environment, version) = deepseekd::engine::runtime::init(&RuntimeConfig {
        library: ort_library(),
        cuda_library_dir: None,
        cudnn_library_dir: None,
    })
    .expect("ONNX Runtime");
    let mut session = Session::builder(&environment)
        .expect("builder")
        .with_intra_threads(1)
        .expect("threads")
        .commit_from_file(model("demo.onnx"))
        .expect("demo model");
    // The daemon gets as many single-threaded sessions as the machine has
    // cores, so concurrent clients can use all of them.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let models = model_table(
        "demo",
        "demo.onnx",
        &format!("sessions = {cores}\nintra_op_threads = 1\nqueue_depth = 256"),
    );
    let daemon = Daemon::start("", &models);
    // The same daemon without the lockdown, to price seccomp and Landlock.
    let unconfined = Daemon::spawn_sandboxed("", "enforce = false", &models);
    unconfined.wait_ready();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    println!(
        "socket overhead: demo model, ONNX Runtime {version}, {cores} cores, {seconds} s per row"
    );
    println!(
        "daemon: {cores} sessions x 1 intra-op thread, lockdown {}; in-process: 1 session x 1 thread",
        if deepseek_tests::is_root() {
            "enforced"
        } else {
            "off (not root)"
        }
    );
    println!();
    println!(
        "{:<10} {:<12} {:>7} {:>10} {:>10} {:>10} {:>12} {:>12}",
        "input", "path", "clients", "p50 us", "p99 us", "req/s", "p50 ratio", "req/s ratio"
    );
    for (label, rows) in [("[1,4]", 1), ("[4096,4]", 4096)] {
        // Warm up the allocator and caches before measuring.
        in_process(&mut session, rows, 0.2);
        let base = in_process(&mut session, rows, seconds);
        println!(
            "{label:<10} {:<12} {:>7} {:>10} {:>10} {:>10.0} {:>12} {:>12}",
            "in-process",
            1,
            micros(base.percentile(0.5)),
            micros(base.percentile(0.99)),
            base.per_second(),
            "1.00",
            "1.00"
        );
        for (path, binary) in [("socket json", false), ("socket bin", true)] {
            let request = Arc::new(prepare(rows, binary));
            runtime.block_on(load(daemon.socket.clone(), Arc::clone(&request), 1, 0.2));
            for clients in [1, 8, 64] {
                let sample = runtime.block_on(load(
                    daemon.socket.clone(),
                    Arc::clone(&request),
                    clients,
                    seconds,
                ));
                println!(
                    "{label:<10} {path:<12} {clients:>7} {:>10} {:>10} {:>10.0} {:>12.2} {:>12.2}",
                    micros(sample.percentile(0.5)),
                    micros(sample.percentile(0.99)),
                    sample.per_second(),
                    sample.percentile(0.5).as_secs_f64() / base.percentile(0.5).as_secs_f64(),
                    sample.per_second() / base.per_second(),
                );
            }
        }
    }
    println!();
    println!(
        "lockdown cost: the [1,4] JSON request against the same daemon with sandbox.enforce = false"
    );
    println!(
        "{:<12} {:>7} {:>10} {:>10} {:>12}",
        "sandbox", "clients", "p50 us", "req/s", "req/s ratio"
    );
    let request = Arc::new(prepare(1, false));
    for clients in [1, 8] {
        // Alternate the two daemons so drift on a noisy machine hits both.
        let mut rows = Vec::new();
        for (label, socket) in [
            ("enforced", &daemon.socket),
            ("off", &unconfined.socket),
            ("enforced", &daemon.socket),
            ("off", &unconfined.socket),
        ] {
            let sample = runtime.block_on(load(
                socket.clone(),
                Arc::clone(&request),
                clients,
                seconds / 2.0,
            ));
            rows.push((label, sample));
        }
        // The mean of `measure` over one daemon's rounds.
        let mean = |label: &str, measure: fn(&Sample) -> f64| {
            let values: Vec<f64> = rows
                .iter()
                .filter(|(l, _)| *l == label)
                .map(|(_, s)| measure(s))
                .collect();
            values.iter().sum::<f64>() / values.len() as f64
        };
        let rate = |label: &str| mean(label, Sample::per_second);
        let p50 = |label: &str| mean(label, |s| s.percentile(0.5).as_secs_f64());
        for label in ["off", "enforced"] {
            println!(
                "{label:<12} {clients:>7} {:>10.1} {:>10.0} {:>12.2}",
                p50(label) * 1e6,
                rate(label),
                rate(label) / rate("off")
            );
        }
    }
}
