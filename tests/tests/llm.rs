//! Causal-LM serving over the OpenAI API, end to end: the real daemon
//! (locked down when run as root), the real auditor, real ONNX Runtime and
//! the tiny R1-style fixture, whose greedy outputs were recorded with Python
//! onnxruntime (`fixtures/llm/tiny-r1/expected.json`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use deepseek_tests::{
    Daemon, delta_text, get, gqa_table, llm_expected, llm_fixture, llm_table, model_table, named,
    openai_error, post_json, request, run_daemon, run_with_models, shared_tempdir, stream_events,
    write_config,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const MODEL: &str = "tiny-r1";

fn daemon(extra: &str) -> Daemon {
    Daemon::start("", &llm_table(MODEL, &llm_fixture(), extra))
}

fn expected(name: &str) -> Value {
    named(&llm_expected()["prompts"], name)
}

fn greedy_text(name: &str) -> String {
    expected(name)["greedy"]["text_skip_special_tokens"]
        .as_str()
        .expect("text")
        .to_owned()
}

fn chat(name: &str, extra: Value) -> Value {
    let mut body = json!({"model": MODEL, "messages": expected(name)["messages"], "temperature": 0, "max_tokens": 24});
    for (key, value) in extra.as_object().expect("object") {
        body[key] = value.clone();
    }
    body
}

async fn chat_ok(d: &Daemon, body: &Value) -> Value {
    let response = post_json(&d.socket, "/v1/chat/completions", body).await;
    assert_eq!(response.status, 200, "{:?}", response.body);
    response.json()
}

fn message(answer: &Value) -> &Value {
    &answer["choices"][0]["message"]
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_gives_the_recorded_greedy_text_as_reasoning() {
    let d = daemon("");
    let answer = chat_ok(&d, &chat("chat_single_turn", json!({}))).await;
    let text = greedy_text("chat_single_turn");
    assert_eq!(message(&answer)["reasoning_content"], text.as_str());
    assert_eq!(message(&answer)["reasoning"], text.as_str());
    assert_eq!(message(&answer)["content"], Value::Null);
    assert_eq!(message(&answer)["role"], "assistant");
    assert_eq!(answer["choices"][0]["finish_reason"], "length");
    assert_eq!(
        answer["usage"],
        json!({"prompt_tokens": 20, "completion_tokens": 24, "total_tokens": 44})
    );
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["model"], MODEL);
    assert!(answer["id"].as_str().expect("id").starts_with("chatcmpl-"));

    let models = get(&d.socket, "/v1/models").await.expect("models").json();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(models["data"][0]["context_length"], 256);
    let shape = &models["data"][0];
    assert_eq!(
        (&shape["layers"], &shape["kv_heads"], &shape["head_dim"]),
        (&json!(2), &json!(2), &json!(16))
    );
    assert_eq!(
        (&shape["slots"], &shape["queue_depth"], &shape["kv_cache"]),
        (&json!(1), &json!(64), &json!("host"))
    );
    assert_eq!(
        shape["graph"],
        llm_fixture().join("model.onnx").display().to_string()
    );
    let one = get(&d.socket, "/v1/models/tiny-r1").await.expect("model");
    assert_eq!(one.json()["id"], MODEL);
    let none = get(&d.socket, "/v1/models/nope").await.expect("model");
    assert_eq!(none.status, 404);
    assert_eq!(none.json()["error"]["code"], "model_not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn reasoning_is_split_at_the_closing_tag_in_messages_and_streams() {
    let d = daemon("");
    let raw = greedy_text("chat_non_ascii");
    let (reasoning, content) = raw.split_once("</think>").expect("fixture closes");
    let answer = chat_ok(&d, &chat("chat_non_ascii", json!({}))).await;
    assert_eq!(message(&answer)["reasoning_content"], reasoning);
    assert_eq!(message(&answer)["content"], content);

    let streamed = post_json(
        &d.socket,
        "/v1/chat/completions",
        &chat("chat_non_ascii", json!({"stream": true})),
    )
    .await;
    let events = stream_events(&streamed.body);
    assert_eq!(delta_text(&events, "reasoning_content"), reasoning);
    assert_eq!(delta_text(&events, "reasoning"), reasoning);
    assert_eq!(delta_text(&events, "content"), content);
    for e in &events[1..] {
        assert!(
            !e["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(str::is_empty),
            "no empty pieces after the role chunk: {e}"
        );
    }

    // The raw text inline, for clients that parse it themselves.
    let answer = chat_ok(
        &d,
        &chat("chat_non_ascii", json!({"reasoning_format": "none"})),
    )
    .await;
    assert_eq!(message(&answer)["content"], raw.as_str());
    assert_eq!(message(&answer)["reasoning_content"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stream_has_openais_shape() {
    let d = daemon("");
    for include_usage in [false, true] {
        let body = chat(
            "chat_single_turn",
            json!({"stream": true, "max_tokens": 8, "stream_options": {"include_usage": include_usage}}),
        );
        let response = post_json(&d.socket, "/v1/chat/completions", &body).await;
        assert_eq!(response.status, 200);
        assert_eq!(response.headers["content-type"], "text/event-stream");
        let events = stream_events(&response.body);
        assert_eq!(
            events[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        let id = events[0]["id"].as_str().expect("id");
        assert!(
            events
                .iter()
                .all(|e| e["id"] == id && e["object"] == "chat.completion.chunk")
        );
        assert_eq!(
            delta_text(&events, "reasoning_content"),
            "R o<｜Assistant｜>|tiG worter"
        );
        // stream_events checked that [DONE] ends the stream.
        let last = events.len();
        let finish = if include_usage { last - 2 } else { last - 1 };
        assert_eq!(events[finish]["choices"][0]["finish_reason"], "length");
        assert_eq!(events[finish]["choices"][0]["delta"], json!({}));
        if include_usage {
            assert_eq!(events[last - 1]["choices"], json!([]));
            assert_eq!(
                events[last - 1]["usage"],
                json!({"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28})
            );
            assert!(events[..last - 1].iter().all(|e| e["usage"].is_null()));
        } else {
            assert!(events.iter().all(|e| e.get("usage").is_none()));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_stop_at_eos_and_at_stop_strings() {
    let d = daemon("");
    let prompt = expected("raw_completion")["prompt"].clone();
    let body = json!({"model": MODEL, "prompt": prompt, "temperature": 0, "max_tokens": 64});
    let response = post_json(&d.socket, "/v1/completions", &body).await;
    let answer = response.json();
    assert_eq!(answer["object"], "text_completion");
    assert_eq!(answer["choices"][0]["text"], greedy_text("raw_completion"));
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(answer["usage"]["completion_tokens"], 18);

    // "G r" spans two tokens ("G", " re"): cut exactly before it.
    let stopped = post_json(
        &d.socket,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": prompt, "temperature": 0, "stop": "G r"}),
    )
    .await
    .json();
    assert_eq!(stopped["choices"][0]["text"], "ke boatWle");
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");

    // " worter" spans " wor" + "ter" (tokens 7 and 8).
    let answer = chat_ok(
        &d,
        &chat("chat_single_turn", json!({"stop": [" worter", "zzz"]})),
    )
    .await;
    assert_eq!(
        message(&answer)["reasoning_content"],
        "R o<｜Assistant｜>|tiG"
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(answer["usage"]["completion_tokens"], 8);

    let streamed = post_json(
        &d.socket,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": prompt, "temperature": 0, "stop": "G r", "stream": true}),
    )
    .await;
    let text: String = stream_events(&streamed.body)
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, "ke boatWle");

    let short = chat_ok(&d, &chat("chat_single_turn", json!({"max_tokens": 5}))).await;
    assert_eq!(short["choices"][0]["finish_reason"], "length");
    assert_eq!(short["usage"]["completion_tokens"], 5);

    // ignore_eos runs past the EOS the fixture reaches at token 18.
    let long = post_json(
        &d.socket,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": prompt, "temperature": 0, "max_tokens": 30, "ignore_eos": true}),
    )
    .await
    .json();
    assert_eq!(long["usage"]["completion_tokens"], 30);
    assert_eq!(long["choices"][0]["finish_reason"], "length");
}

#[tokio::test(flavor = "multi_thread")]
async fn sampling_is_reproducible_with_a_seed() {
    let d = daemon("");
    let sample = |seed: u64| {
        chat(
            "chat_single_turn",
            json!({"temperature": 1.0, "top_p": 0.9, "seed": seed, "max_tokens": 24}),
        )
    };
    let text = |answer: &Value| message(answer)["reasoning_content"].clone();
    let first = chat_ok(&d, &sample(7)).await;
    let again = chat_ok(&d, &sample(7)).await;
    assert_eq!(text(&first), text(&again));
    let one = chat_ok(&d, &sample(1)).await;
    let two = chat_ok(&d, &sample(2)).await;
    assert_ne!(text(&one), text(&two));
    assert_ne!(text(&first), greedy_text("chat_single_turn").as_str());
    // top_k 1 at any temperature is greedy.
    let top1 = chat_ok(
        &d,
        &chat(
            "chat_single_turn",
            json!({"temperature": 1.5, "top_k": 1, "seed": 3}),
        ),
    )
    .await;
    assert_eq!(text(&top1), greedy_text("chat_single_turn").as_str());
    // Without a temperature, generation_config.json's defaults (sampling at
    // 0.6) apply, and two unseeded answers differ.
    let mut defaults = chat("chat_single_turn", json!({}));
    defaults
        .as_object_mut()
        .expect("object")
        .remove("temperature");
    let a = chat_ok(&d, &defaults).await;
    let b = chat_ok(&d, &defaults).await;
    assert_ne!(text(&a), text(&b));
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_openai_errors_naming_the_parameter() {
    let d = daemon("");
    let chat_path = "/v1/chat/completions";
    let (status, error) = openai_error(&d, chat_path, &json!({"model": MODEL})).await;
    assert_eq!((status, &error["param"]), (400, &json!("messages")));
    assert_eq!(error["code"], "missing_required_parameter");
    assert_eq!(error["type"], "invalid_request_error");

    let (status, error) =
        openai_error(&d, chat_path, &json!({"model": MODEL, "messages": "x"})).await;
    assert_eq!((status, &error["param"]), (400, &json!("messages")));
    assert_eq!(error["code"], "invalid_type");

    let (status, error) = openai_error(
        &d,
        chat_path,
        &chat("chat_single_turn", json!({"temperature": "hot"})),
    )
    .await;
    assert_eq!((status, &error["param"]), (400, &json!("temperature")));

    let (status, error) = openai_error(
        &d,
        chat_path,
        &chat("chat_single_turn", json!({"temperature": 3})),
    )
    .await;
    assert_eq!((status, &error["param"]), (400, &json!("temperature")));
    assert!(
        error["message"]
            .as_str()
            .expect("message")
            .contains("between 0 and 2")
    );

    let (status, error) = openai_error(
        &d,
        chat_path,
        &chat("chat_single_turn", json!({"top_p": 0})),
    )
    .await;
    assert_eq!(
        (status, error["message"].as_str()),
        (
            400,
            Some("top_p must be greater than 0 and at most 1, got 0")
        )
    );

    let (status, error) = openai_error(
        &d,
        chat_path,
        &chat("chat_single_turn", json!({"logit_bias": {"52": -100}})),
    )
    .await;
    assert_eq!((status, &error["param"]), (400, &json!("logit_bias")));

    let (status, error) =
        openai_error(&d, chat_path, &chat("chat_single_turn", json!({"n": 2}))).await;
    assert_eq!((status, &error["param"]), (400, &json!("n")));

    let (status, error) = openai_error(
        &d,
        chat_path,
        &json!({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
    )
    .await;
    assert_eq!(
        (status, &error["param"]),
        (400, &json!("messages[0].content[0]"))
    );

    let (status, error) = openai_error(
        &d,
        chat_path,
        &json!({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        error["message"]
            .as_str()
            .expect("message")
            .ends_with("Only system, user and assistant roles are supported."),
        "{error}"
    );

    let (status, error) =
        openai_error(&d, chat_path, &json!({"model": "nope", "messages": []})).await;
    assert_eq!((status, &error["code"]), (404, &json!("model_not_found")));

    let response = request(&d.socket, "POST", chat_path, &[], b"{not json".to_vec())
        .await
        .expect("request");
    assert_eq!(response.status, 400);
    assert!(
        response.json()["error"]["message"]
            .as_str()
            .expect("message")
            .starts_with("invalid request body: "),
    );

    // The prompt alone is over the 256-token context; then the prompt fits
    // but prompt plus max_tokens does not.
    let long =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "word ".repeat(300)}]});
    let (status, error) = openai_error(&d, chat_path, &long).await;
    assert_eq!(
        (status, &error["code"]),
        (400, &json!("context_length_exceeded"))
    );
    assert_eq!(error["param"], "messages");
    let (status, error) = openai_error(
        &d,
        chat_path,
        &chat("chat_single_turn", json!({"max_tokens": 250})),
    )
    .await;
    assert_eq!(
        (status, &error["code"]),
        (400, &json!("context_length_exceeded"))
    );
    let (status, error) = openai_error(
        &d,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "word ".repeat(300)}),
    )
    .await;
    assert_eq!((status, &error["param"]), (400, &json!("prompt")));

    // The KServe endpoint points at the right API.
    let response = post_json(
        &d.socket,
        "/v2/models/tiny-r1/infer",
        &json!({"inputs": []}),
    )
    .await;
    assert_eq!(response.status, 400);
    assert!(response.error().contains("/v1/chat/completions"));
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_is_audited_with_digests_and_counts_never_text() {
    let d = daemon("");
    let body = chat("chat_single_turn", json!({"seed": 5}));
    let answer = post_json(&d.socket, "/v1/chat/completions", &body).await;
    assert_eq!(answer.status, 200);
    let streamed = chat(
        "chat_non_ascii",
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    );
    let stream = post_json(&d.socket, "/v1/chat/completions", &streamed).await;
    let bad = post_json(&d.socket, "/v1/chat/completions", &json!({"model": MODEL})).await;
    assert_eq!(bad.status, 400);

    let auditor = d.auditor.as_ref().expect("auditor");
    let entries = auditor.entries();
    let requests: Vec<&Value> = entries
        .iter()
        .filter(|e| e["event"] == "request" && e["model"] == MODEL)
        .collect();
    assert_eq!(requests.len(), 3, "{entries:#?}");
    let whole = requests[0];
    assert_eq!(
        whole["request_sha256"],
        sha256_hex(&serde_json::to_vec(&body).expect("json"))
    );
    assert_eq!(whole["response_sha256"], sha256_hex(&answer.body));
    assert_eq!(
        (whole["tokens_in"].clone(), whole["tokens_out"].clone()),
        (json!(20), json!(24))
    );
    assert_eq!(whole["request_id"], answer.json()["id"]);
    assert_eq!(whole["details"]["finish_reason"], "length");
    assert_eq!(whole["details"]["seed"], "5");
    assert_eq!(
        whole["details"]["completion_sha256"],
        sha256_hex(greedy_text("chat_single_turn").as_bytes())
    );
    assert_eq!(whole["details"]["endpoint"], "/v1/chat/completions");

    // A stream: its request before the first byte, its completion before [DONE].
    let started = requests[1];
    assert_eq!(started["tokens_in"], 39);
    assert!(started.get("tokens_out").is_none_or(Value::is_null));
    let completion = entries
        .iter()
        .find(|e| e["event"] == "completion")
        .expect("completion entry");
    assert_eq!(completion["request_id"], started["request_id"]);
    assert_eq!(completion["tokens_out"], 24);
    assert_eq!(completion["details"]["finish_reason"], "length");
    let before_done = &stream.body[..stream.body.len() - b"data: [DONE]\n\n".len()];
    assert_eq!(completion["response_sha256"], sha256_hex(before_done));

    let refused = requests[2];
    assert_eq!(refused["status"], 400);
    assert_eq!(
        refused["details"]["error_code"],
        "missing_required_parameter"
    );

    let log = std::fs::read_to_string(auditor.log_dir.join("entries.log")).expect("log");
    for text in ["What is the capital of France?", "Café", "tiG wor", "eakey"] {
        assert!(!log.contains(text), "{text:?} is in the audit log");
    }
}

#[test]
fn a_client_that_leaves_cancels_its_generation() {
    let d = daemon("sessions = 1\nqueue_depth = 0");
    let body = serde_json::to_vec(&json!({
        "model": MODEL, "prompt": "The", "temperature": 0, "max_tokens": 250,
        "ignore_eos": true, "stream": true,
    }))
    .expect("json");
    let mut stream = UnixStream::connect(&d.socket).expect("connect");
    write!(
        stream,
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .expect("headers");
    stream.write_all(&body).expect("body");
    let mut first = [0u8; 64];
    let n = stream.read(&mut first).expect("first bytes");
    assert!(
        std::str::from_utf8(&first[..n])
            .expect("utf8")
            .starts_with("HTTP/1.1 200")
    );
    drop(stream);

    let auditor = d.auditor.as_ref().expect("auditor");
    let completion = auditor.wait_for("completion", Duration::from_secs(10), |e| {
        e["event"] == "completion"
    });
    assert_eq!(completion["details"]["finish_reason"], "cancelled");
    let tokens = completion["tokens_out"].as_u64().expect("tokens_out");
    assert!(
        tokens < 250,
        "{tokens} tokens: the generation ran to the end"
    );
    // The only slot is free again.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let next = runtime.block_on(post_json(
        &d.socket,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "The", "max_tokens": 2}),
    ));
    assert_eq!(next.status, 200, "{:?}", next.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn tensor_and_causal_models_are_served_side_by_side() {
    let models = [
        model_table("demo", "demo.onnx", ""),
        llm_table(MODEL, &llm_fixture(), "sessions = 2"),
        gqa_table(),
    ]
    .concat();
    let d = Daemon::start("", &models);
    let infer = post_json(
        &d.socket,
        "/v2/models/demo/infer",
        &json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}),
    )
    .await;
    assert_eq!(infer.status, 200);
    let (first, second) = (
        chat("chat_single_turn", json!({})),
        chat("chat_multi_turn", json!({})),
    );
    let (a, b) = tokio::join!(
        post_json(&d.socket, "/v1/chat/completions", &first),
        post_json(&d.socket, "/v1/chat/completions", &second),
    );
    assert_eq!(
        message(&a.json())["reasoning_content"],
        greedy_text("chat_single_turn").as_str()
    );
    let multi = greedy_text("chat_multi_turn");
    assert_eq!(message(&b.json())["reasoning_content"], multi.as_str());
    // The GroupQueryAttention graph, its cache one shared buffer: same text.
    let mut gqa = chat("chat_single_turn", json!({}));
    gqa["model"] = json!("tiny-r1-gqa");
    let answer = chat_ok(&d, &gqa).await;
    assert_eq!(
        message(&answer)["reasoning_content"],
        greedy_text("chat_single_turn").as_str()
    );
    let models = get(&d.socket, "/v1/models").await.expect("models").json();
    let kv: Vec<(&str, &str)> = models["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| {
            (
                m["id"].as_str().expect("id"),
                m["kv_cache"].as_str().expect("kv_cache"),
            )
        })
        .collect();
    assert_eq!(kv, [("tiny-r1", "host"), ("tiny-r1-gqa", "shared")]);
    let hardening = get(&d.socket, "/v2/health/hardening")
        .await
        .expect("hardening")
        .json();
    let rules = hardening["lockdown"].to_string();
    if deepseek_tests::is_root() {
        assert!(
            rules.contains(&llm_fixture().display().to_string()),
            "{rules}"
        );
    }
}

/// A copy of the fixture in a fresh directory, for tests that break it.
fn fixture_copy(dir: &Path) -> std::path::PathBuf {
    let copy = dir.join("tiny-r1");
    std::fs::create_dir(&copy).expect("mkdir");
    for entry in std::fs::read_dir(llm_fixture()).expect("fixture") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), copy.join(entry.file_name())).expect("copy");
    }
    copy
}

fn start(dir: &Path, models: &str) -> (i32, String) {
    run_with_models(dir, &deepseek_tests::ort_library(), models)
}

#[test]
fn a_directory_that_does_not_fit_is_refused_naming_what_is_missing() {
    let dir = shared_tempdir();
    let copy = fixture_copy(dir.path());
    std::fs::remove_file(copy.join("tokenizer.json")).expect("rm");
    let (code, stderr) = start(dir.path(), &llm_table(MODEL, &copy, ""));
    assert_eq!(code, 65, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: missing",
            copy.join("tokenizer.json").display()
        )),
        "{stderr}"
    );

    // A graph without a KV cache (the demo tensor model) in the layout.
    let dir = shared_tempdir();
    let copy = fixture_copy(dir.path());
    std::fs::copy(deepseek_tests::model("demo.onnx"), copy.join("model.onnx")).expect("copy");
    let (code, stderr) = start(dir.path(), &llm_table(MODEL, &copy, ""));
    assert_eq!(code, 65, "{stderr}");
    assert!(stderr.contains("has no input \"input_ids\""), "{stderr}");

    // A tokenizer file changed after the database was signed.
    let dir = shared_tempdir();
    let copy = fixture_copy(dir.path());
    let models = llm_table(MODEL, &copy, "");
    let config = write_config(
        dir.path(),
        &dir.path().join("d.sock"),
        &deepseek_tests::ort_library(),
        "",
        "",
        &models,
    );
    let mut tokenizer = std::fs::read(copy.join("tokenizer_config.json")).expect("read");
    tokenizer.extend_from_slice(b"\n");
    std::fs::write(copy.join("tokenizer_config.json"), tokenizer).expect("write");
    let (code, stderr) = run_daemon(
        &["--config", config.to_str().expect("utf8")],
        Duration::from_secs(30),
    );
    assert_eq!(code, 65, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "model \"tiny-r1\" failed integrity verification, not loaded: {}",
            copy.join("tokenizer_config.json").display()
        )),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_auditor_no_text_leaves_the_daemon() {
    let mut d = daemon("");
    d.auditor
        .as_mut()
        .expect("auditor")
        .stop(nix::sys::signal::Signal::SIGKILL);
    for stream in [false, true] {
        let body = chat("chat_single_turn", json!({"stream": stream}));
        let refused = post_json(&d.socket, "/v1/chat/completions", &body).await;
        assert_eq!(refused.status, 503, "{:?}", refused.body);
        let error = &refused.json()["error"];
        assert_eq!(error["code"], "audit_unavailable");
        assert_eq!(error["type"], "server_error");
        assert!(
            !String::from_utf8_lossy(&refused.body).contains("tiG"),
            "no generated text in a refusal"
        );
    }
}
