//! Continuous batching through the socket, with the real auditor and the
//! lockdown: concurrent requests answer as they do alone, `/v1/models`
//! shows the scheduler, and a full cache pool makes a request wait, then a
//! full queue refuses one with 503, while the running request keeps its
//! place. (`llm_batch` drives the scheduler turn by turn in process.)

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use deepseek_tests::{
    Daemon, check_config_with_models, get, llm_expected, llm_fixture, llm_table, ort_library,
    post_json, run_with_models, shared_tempdir,
};
use serde_json::{Value, json};

use crate::smollm2::{INT4, model_dir};

/// The eight requests: the fixture's chat prompts and its raw completion,
/// greedy, then again sampled with a seed each.
fn requests() -> Vec<(&'static str, Value)> {
    let prompts = llm_expected()["prompts"]
        .as_array()
        .expect("prompts")
        .clone();
    (0..8)
        .map(|i| {
            let prompt = &prompts[i % prompts.len()];
            let mut body = if prompt["kind"] == "chat" {
                json!({"model": "tiny-r1", "messages": prompt["messages"]})
            } else {
                json!({"model": "tiny-r1", "prompt": prompt["prompt"]})
            };
            body["max_tokens"] = json!(32);
            body["temperature"] = json!(if i < 4 { 0.0 } else { 0.9 });
            body["seed"] = json!(i);
            let path = if prompt["kind"] == "chat" {
                "/v1/chat/completions"
            } else {
                "/v1/completions"
            };
            (path, body)
        })
        .collect()
}

/// What must not depend on the neighbours: the choices and the usage.
fn answer(body: &Value) -> Value {
    json!({"choices": body["choices"], "usage": body["usage"]})
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_answer_as_they_do_alone() {
    let d = Daemon::start("", &llm_table("tiny-r1", &llm_fixture(), "sessions = 8"));
    let mut alone = Vec::new();
    for (path, body) in requests() {
        let response = post_json(&d.socket, path, &body).await;
        assert_eq!(response.status, 200, "{:?}", response.body);
        alone.push(answer(&response.json()));
    }
    let together: Vec<_> = requests()
        .into_iter()
        .map(|(path, body)| {
            let socket = d.socket.clone();
            tokio::spawn(async move { post_json(&socket, path, &body).await })
        })
        .collect();
    for (index, (response, alone)) in together.into_iter().zip(&alone).enumerate() {
        let response = response.await.expect("task");
        assert_eq!(response.status, 200, "{:?}", response.body);
        assert_eq!(&answer(&response.json()), alone, "request {index}");
    }
    let model = get(&d.socket, "/v1/models/tiny-r1").await.expect("models");
    let model = model.json();
    assert_eq!(model["batching"], true);
    assert_eq!(model["batching_off_reason"], Value::Null);
    assert_eq!(model["kv_cache_tokens"], 8 * 256);
    let batch = &model["batch"];
    assert_eq!(
        (batch["running"].as_u64(), batch["queued"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(batch["steps"].as_u64().expect("steps") >= 32, "{batch}");
}

#[tokio::test(flavor = "multi_thread")]
async fn graphs_that_cannot_batch_and_batching_false_say_why() {
    let tables = [
        llm_table(
            "gqa",
            &llm_fixture().with_file_name("tiny-r1-gqa"),
            "sessions = 2",
        ),
        llm_table("off", &llm_fixture(), "sessions = 2\nbatching = false"),
    ]
    .concat();
    let d = Daemon::start("", &tables);
    let models = get(&d.socket, "/v1/models").await.expect("models").json();
    let data = models["data"].as_array().expect("data");
    for (name, reason) in [("gqa", "GroupQueryAttention"), ("off", "batching = false")] {
        let model = data.iter().find(|m| m["id"] == name).expect("listed");
        assert_eq!(model["batching"], false);
        assert!(
            model["batching_off_reason"]
                .as_str()
                .expect("reason")
                .contains(reason),
            "{model}"
        );
        assert_eq!(model["batch"], Value::Null);
        let answer = post_json(
            &d.socket,
            "/v1/completions",
            &json!({"model": name, "prompt": "The", "max_tokens": 4}),
        )
        .await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
    }
}

/// Polls `/v1/models/{name}` until `until` holds of its `batch` (a
/// condition that the test makes hold; the deadline only stops a hung run).
async fn wait_for_batch(d: &Daemon, name: &str, until: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let model = get(&d.socket, &format!("/v1/models/{name}"))
            .await
            .expect("model")
            .json();
        if until(&model["batch"]) {
            return model;
        }
        assert!(
            Instant::now() < deadline,
            "the scheduler never got there: {model}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_cache_pool_queues_a_request_then_a_full_queue_refuses_with_503() {
    // Two places (sessions 2 + queue_depth 0) and a pool of 2048 positions:
    // a 2000-token request fills the pool, so the next waits.
    let extra = "sessions = 2\nqueue_depth = 0\ncontext_length = 2048\nkv_cache_tokens = 2048";
    let d = Daemon::start("", &llm_table("smol", &model_dir(INT4), extra));
    let long = serde_json::to_vec(&json!({
        "model": "smol", "prompt": "Once upon a time", "max_tokens": 2000,
        "temperature": 0, "ignore_eos": true, "stream": true,
    }))
    .expect("json");
    let mut running = UnixStream::connect(&d.socket).expect("connect");
    write!(
        running,
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        long.len()
    )
    .expect("headers");
    running.write_all(&long).expect("body");
    let mut first = [0u8; 64];
    let n = running.read(&mut first).expect("first bytes");
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    wait_for_batch(&d, "smol", |b| b["running"] == 1 && b["last_batch"] == 1).await;

    let socket = d.socket.clone();
    let waiting = tokio::spawn(async move {
        post_json(
            &socket,
            "/v1/completions",
            &json!({"model": "smol", "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}),
        )
        .await
    });
    let model = wait_for_batch(&d, "smol", |b| b["queued"] == 1).await;
    assert_eq!(model["batch"]["running"], 1, "{model}");
    assert_eq!(model["kv_cache_tokens"], 2048);
    assert!(model["batch"]["cache_reserved"].as_u64().expect("reserved") <= 2048);

    let refused = post_json(
        &d.socket,
        "/v1/completions",
        &json!({"model": "smol", "prompt": "Hello", "max_tokens": 4}),
    )
    .await;
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert_eq!(refused.json()["error"]["code"], "queue_full");
    assert!(
        !waiting.is_finished(),
        "the waiting request was answered while the pool was full"
    );

    // The running request leaves; the waiting one gets its place.
    drop(running);
    let answered = waiting.await.expect("task");
    assert_eq!(answered.status, 200, "{:?}", answered.body);
    assert_eq!(answered.json()["usage"]["completion_tokens"], 8);

    let entries = d.auditor.as_ref().expect("auditor").entries();
    let refusal = entries
        .iter()
        .find(|e| e["status"] == 503)
        .expect("the refusal is audited");
    assert_eq!(refusal["details"]["error_code"], "queue_full");
    let completion = entries
        .iter()
        .find(|e| e["event"] == "completion")
        .expect("the cancelled stream is audited");
    assert_eq!(completion["details"]["finish_reason"], "cancelled");
    assert!(completion["tokens_out"].as_u64().expect("tokens") < 2000);
}

#[test]
fn a_cache_pool_smaller_than_the_context_is_refused_naming_the_keys() {
    let table = llm_table("tiny-r1", &llm_fixture(), "kv_cache_tokens = 100");
    for run in [check_config_with_models, run_with_models] {
        let dir = shared_tempdir();
        let (code, output) = run(dir.path(), &ort_library(), &table);
        assert_eq!(code, 65, "{output}");
        assert!(
            output.contains("model[0].kv_cache_tokens = 100 is less than context_length = 256"),
            "{output}"
        );
    }
}
