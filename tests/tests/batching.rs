//! Continuous batching through the socket, with the real auditor and the
//! lockdown: concurrent requests answer as they do alone, `/v1/models`
//! shows the scheduler, graphs that cannot batch say why, and a full cache
//! pool runs requests one after the other while a full queue refuses with
//! 503. (`llm_batch` drives the scheduler turn by turn in process.)

use std::path::PathBuf;

use deepseek_tests::{
    Daemon, check_config_with_models, get, llm_expected, llm_fixture, llm_table, ort_library,
    post_json, run_with_models, shared_tempdir, wait_for_model,
};
use serde_json::{Value, json};

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
    // tiny-r1-gqa without its genai_config.json: a growing cache, but
    // GroupQueryAttention, which would read padded rows wrong.
    let gqa = llm_fixture().with_file_name("tiny-r1-gqa");
    let unflagged = shared_tempdir();
    for entry in std::fs::read_dir(&gqa).expect("fixture") {
        let path = entry.expect("entry").path();
        if path.file_name().is_some_and(|n| n != "genai_config.json") {
            std::fs::copy(
                &path,
                unflagged.path().join(path.file_name().expect("name")),
            )
            .expect("copy");
        }
    }
    let tables = [
        llm_table("gqa", &gqa, "sessions = 2"),
        llm_table("gqa-unflagged", unflagged.path(), "sessions = 2"),
        llm_table("off", &llm_fixture(), "sessions = 2\nbatching = false"),
    ]
    .concat();
    let d = Daemon::start("", &tables);
    let models = get(&d.socket, "/v1/models").await.expect("models").json();
    let data = models["data"].as_array().expect("data");
    for (name, reason) in [
        ("gqa", "shares its past/present buffer"),
        ("gqa-unflagged", "GroupQueryAttention"),
        ("off", "batching = false"),
    ] {
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

/// A streamed completion of `max_tokens` tokens, EOS ignored: its body.
async fn stream(socket: PathBuf, prompt: &str, max_tokens: u64) -> (u16, String) {
    let body = json!({
        "model": "tiny-r1", "prompt": prompt, "max_tokens": max_tokens,
        "temperature": 0, "ignore_eos": true, "stream": true,
    });
    let answer = post_json(&socket, "/v1/completions", &body).await;
    (
        answer.status,
        String::from_utf8_lossy(&answer.body).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_cache_pool_runs_requests_one_after_the_other_and_a_full_queue_refuses_with_503() {
    // Two places (sessions 2, queue_depth 0) and a pool of 256 positions,
    // which holds one request of about 150 tokens at a time, not two. The
    // auditor is paused so that both requests are admitted, and wait on
    // their `request` records, before either starts: no timing involved.
    let extra = "sessions = 2\nqueue_depth = 0\nkv_cache_tokens = 256";
    let d = Daemon::spawn_full(
        "",
        "",
        "timeout_ms = 600000",
        &llm_table("tiny-r1", &llm_fixture(), extra),
    );
    d.wait_ready();
    let auditor = d.auditor.as_ref().expect("auditor");
    auditor.pause();
    let first = tokio::spawn(stream(d.socket.clone(), "The", 150));
    wait_for_model(&d, "tiny-r1", |m| m["admitted"] == 1).await;
    let second = tokio::spawn(stream(d.socket.clone(), "Once upon a time", 150));
    wait_for_model(&d, "tiny-r1", |m| m["admitted"] == 2).await;
    let refused = tokio::spawn({
        let socket = d.socket.clone();
        async move {
            post_json(
                &socket,
                "/v1/completions",
                &json!({"model": "tiny-r1", "prompt": "Hello", "max_tokens": 4}),
            )
            .await
        }
    });
    let model = wait_for_model(&d, "tiny-r1", |m| m["admitted"] == 2).await;
    assert_eq!(model["batch"]["steps"], 0, "{model}");
    auditor.signal(nix::sys::signal::Signal::SIGCONT);

    let refused = refused.await.expect("task");
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert_eq!(refused.json()["error"]["code"], "queue_full");
    for answer in [first.await.expect("task"), second.await.expect("task")] {
        assert_eq!(answer.0, 200, "{}", answer.1);
        assert!(
            answer.1.contains("\"finish_reason\":\"length\""),
            "{}",
            answer.1
        );
    }
    // Each request decodes 149 steps after its first token. Had they shared
    // a step, there would be fewer than 2 × 149. A request's admission ends
    // after its last byte has left (it still records its completion), so
    // the wait is for both: a busy machine showed `admitted` 1 for a moment
    // after `running` was 0.
    let model = wait_for_model(&d, "tiny-r1", |m| {
        m["batch"]["running"] == 0 && m["admitted"] == 0
    })
    .await;
    assert_eq!(model["batch"]["steps"], 2 * 149, "{model}");
    assert_eq!(model["batch"]["cache_positions"], 0, "{model}");
    assert_eq!(model["admitted"], 0, "{model}");

    let entries = auditor.entries();
    let refusal = entries
        .iter()
        .find(|e| e["status"] == 503)
        .expect("the refusal is audited");
    assert_eq!(refusal["details"]["error_code"], "queue_full");
    let completions: Vec<&Value> = entries
        .iter()
        .filter(|e| e["event"] == "completion")
        .collect();
    assert_eq!(completions.len(), 2);
    for completion in completions {
        assert_eq!(completion["details"]["finish_reason"], "length");
        assert_eq!(completion["tokens_out"], 150);
    }
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
