//! Issue 18, defects 2 and 4, against the real daemon and auditor: one
//! KServe request cannot make the daemon build a huge answer (repeated
//! outputs, an answer over `server.max_response_bytes`), and an inference
//! whose client leaves, or that runs past its model's `infer_timeout_ms`, is
//! stopped and still recorded.
//!
//! Nothing here depends on the machine's speed: the long runs ask the `slow`
//! model for `i64::MAX` iterations, which no machine finishes, and every
//! wait polls for an outcome with a generous bound.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use deepseek_tests::{Daemon, Response, model_table, post_binary, post_json};
use serde_json::{Value, json};

/// How long any poll below waits before the test fails.
const PATIENCE: Duration = Duration::from_secs(60);

fn x(rows: usize) -> Value {
    json!({"inputs": [{"name": "x", "shape": [rows, 4], "datatype": "FP32", "data": vec![0.5f32; rows * 4]}]})
}

/// A run of the `slow` model: `iterations` multiplications by its matrix.
fn slow_request(id: &str, iterations: i64) -> Value {
    json!({"id": id, "inputs": [
        {"name": "iterations", "shape": [], "datatype": "INT64", "data": [iterations]},
        {"name": "x", "shape": [1, 256], "datatype": "FP32", "data": vec![0.01f32; 256]},
    ]})
}

/// A daemon serving `demo`, and `slow` with one session, one thread and no
/// queue, `slow_extra` ending its table.
fn start_with_one_slow_session(slow_extra: &str) -> Daemon {
    Daemon::start(
        "",
        &[
            model_table(
                "slow",
                "slow.onnx",
                &format!("sessions = 1\nqueue_depth = 0\nintra_op_threads = 1{slow_extra}"),
            ),
            model_table("demo", "demo.onnx", ""),
        ]
        .concat(),
    )
}

/// The `request` entries recorded so far for request `id`.
fn recorded(d: &Daemon, id: &str) -> Vec<Value> {
    d.auditor
        .as_ref()
        .expect("auditor")
        .entries()
        .into_iter()
        .filter(|e| e["event"] == "request" && e["request_id"] == id)
        .collect()
}

/// Polls until `id` has a `request` entry, and returns it.
async fn wait_recorded(d: &Daemon, id: &str) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(entry) = recorded(d, id).pop() {
            return entry;
        }
        assert!(
            Instant::now() < deadline,
            "request {id:?} was never recorded; daemon log:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A one-iteration run of `slow`: refused (503) while its only session is
/// taken.
async fn probe_slow(d: &Daemon) -> Response {
    post_json(
        &d.socket,
        "/v2/models/slow/infer",
        &slow_request("probe", 1),
    )
    .await
}

/// Polls a one-iteration run of `slow` until it gets `status` (503: the
/// only session is taken; 200: it is free again).
async fn wait_slow_answers(d: &Daemon, status: u16) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let probe = probe_slow(d).await;
        if probe.status == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the slow model never answered {status} (last: {} {:?}); daemon log:\n{}",
            probe.status,
            String::from_utf8_lossy(&probe.body),
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends a run of `slow` that never ends on a connection of its own, and
/// leaves its answer unread; returns the connection and the request's id.
fn send_unanswered(d: &Daemon, attempt: &mut u32) -> (UnixStream, String) {
    *attempt += 1;
    let id = format!("leaver-{attempt}");
    let body = serde_json::to_vec(&slow_request(&id, i64::MAX)).expect("json");
    let mut stream = UnixStream::connect(&d.socket).expect("connect");
    let head = format!(
        "POST /v2/models/slow/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("head");
    stream.write_all(&body).expect("body");
    // Polled for an answer that should not come, without waiting.
    stream.set_nonblocking(true).expect("non-blocking");
    (stream, id)
}

async fn still_serves(socket: &Path) {
    let ok = post_json(socket, "/v2/models/demo/infer", &x(1)).await;
    assert_eq!(ok.status, 200, "{:?}", String::from_utf8_lossy(&ok.body));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_output_is_refused_naming_it() {
    let d = Daemon::start("", &model_table("demo", "demo.onnx", ""));
    // The amplifier, small: each repeat was one more copy of `y`.
    let mut body = x(16);
    body["id"] = json!("repeats");
    body["outputs"] = json!([{"name": "row_sum"}, {"name": "y"}, {"name": "y"}]);
    let refused = post_json(&d.socket, "/v2/models/demo/infer", &body).await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.error(), "output \"y\" is asked for more than once");
    assert_eq!(wait_recorded(&d, "repeats").await["status"], 400);
    still_serves(&d.socket).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_over_the_response_limit_is_refused_and_recorded() {
    let d = Daemon::start(
        "max_response_bytes = 1048576",
        &model_table("demo", "demo.onnx", ""),
    );
    // 1 MiB of binary input; `y` alone is 1 MiB of binary output, so the
    // answer cannot fit whatever the encoding.
    let rows = 65_536;
    let request = json!({"id": "binary", "inputs": [{"name": "x", "shape": [rows, 4], "datatype": "FP32",
        "parameters": {"binary_data_size": rows * 16}}],
        "parameters": {"binary_data_output": true}});
    let refused = post_binary(
        &d.socket,
        "/v2/models/demo/infer",
        &request,
        &vec![0u8; rows * 16],
    )
    .await;
    assert_eq!(refused.status, 413);
    assert_eq!(
        refused.error(),
        "the response would exceed the limit of 1048576 bytes (server.max_response_bytes); \
         ask for fewer outputs or send fewer elements"
    );
    assert!(refused.body.len() < 1024, "an error, not the answer");
    let entry = wait_recorded(&d, "binary").await;
    assert_eq!(entry["status"], 413);
    assert_eq!(entry["details"]["error_code"], "response_too_large");
    assert!(entry.get("response_sha256").is_none_or(Value::is_null));

    // As JSON, the same rows are refused too; a smaller answer still fits.
    let mut json_request = x(rows);
    json_request["id"] = json!("json");
    let refused = post_json(&d.socket, "/v2/models/demo/infer", &json_request).await;
    assert_eq!(refused.status, 413);
    assert_eq!(wait_recorded(&d, "json").await["status"], 413);
    let fits = post_json(&d.socket, "/v2/models/demo/infer", &x(1024)).await;
    assert_eq!(fits.status, 200);
    assert!(fits.body.len() <= 1_048_576);
    still_serves(&d.socket).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_mid_inference_is_recorded_and_frees_its_session() {
    let d = start_with_one_slow_session("");
    // The run has the only session once others are refused (503). A probe
    // that got there first refuses the run instead (its 503 is then waiting
    // on its connection): send it again.
    let mut attempt = 0;
    let (mut stream, mut id) = send_unanswered(&d, &mut attempt);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let probe = probe_slow(&d).await;
        if probe.status == 503 {
            break;
        }
        if (&stream).read(&mut [0u8; 1]).is_ok() {
            (stream, id) = send_unanswered(&d, &mut attempt);
        }
        assert!(Instant::now() < deadline, "the run never took the session");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(stream);

    let entry = wait_recorded(&d, &id).await;
    assert_eq!(entry["status"], 499, "{entry}");
    assert_eq!(entry["details"]["error_code"], "cancelled");
    assert!(entry.get("response_sha256").is_none_or(Value::is_null));
    // The run was stopped, not left to hold the session for ever.
    wait_slow_answers(&d, 200).await;
    still_serves(&d.socket).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_past_its_deadline_is_stopped_answered_504_and_recorded() {
    let d = start_with_one_slow_session("\ninfer_timeout_ms = 1");
    let meta = deepseek_tests::get(&d.socket, "/v2/models/slow")
        .await
        .expect("metadata")
        .json();
    assert_eq!(meta["parameters"]["infer_timeout_ms"], 1);
    let timed_out = post_json(
        &d.socket,
        "/v2/models/slow/infer",
        &slow_request("forever", i64::MAX),
    )
    .await;
    assert_eq!(timed_out.status, 504);
    assert_eq!(
        timed_out.error(),
        "inference did not finish within 1 ms (infer_timeout_ms of model \"slow\"); it was stopped"
    );
    let entry = wait_recorded(&d, "forever").await;
    assert_eq!(entry["status"], 504);
    assert_eq!(entry["details"]["error_code"], "timed_out");
    // The next request is not stuck behind it: it gets the session (and,
    // with a 1 ms deadline, most likely times out too, but not 503).
    let deadline = Instant::now() + PATIENCE;
    loop {
        let next = post_json(&d.socket, "/v2/models/slow/infer", &slow_request("next", 1)).await;
        if next.status != 503 {
            assert!([200, 504].contains(&next.status), "{}", next.status);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stopped run kept its session"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    still_serves(&d.socket).await;
}
