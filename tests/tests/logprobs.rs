//! `logprobs` and `top_logprobs` end to end, on the tiny R1-style fixture:
//! a greedy run's logprobs equal the log-softmax of the logits that Python
//! onnxruntime computes on its own (tests/python/logprobs_reference.py),
//! to 1e-4, with the batched engine and with `batching = false`, whole and
//! streamed; the official `openai` client parses them
//! (tests/python/openai_logprobs.py); out-of-bounds and mistyped fields are
//! 400 naming the field; the audit record says they were asked, never the
//! values.

use std::collections::HashSet;
use std::fs;
use std::process::Command;

use deepseek_tests::{
    Daemon, llm_expected, llm_fixture, llm_table, named, openai_error, post_json, python,
    run_client_script, stream_events, token_ids, workspace,
};
use deepseekd::engine::llm::tokenizer::Tokenizer;
use serde_json::{Value, json};

const MODEL: &str = "tiny-r1";
const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";
/// Alternatives asked for, and greedy steps run.
const TOP: usize = 5;
const STEPS: usize = 24;
/// The fixture's logits agree across runs to about 5e-7
/// (fixtures/llm/README.md).
const TOLERANCE: f64 = 1e-4;

/// One greedy step as the reference computed it.
#[derive(Debug)]
struct Step {
    id: u32,
    logprob: f64,
    top: Vec<(u32, f64)>,
}

/// The greedy steps after `prompt_ids`, from Python onnxruntime.
fn reference(prompt_ids: &[u32]) -> Vec<Step> {
    let python = python(&["onnxruntime", "numpy"]);
    let output = Command::new(python)
        .arg(workspace().join("tests/python/logprobs_reference.py"))
        .arg(llm_fixture().join("model.onnx"))
        .arg(STEPS.to_string())
        .arg(TOP.to_string())
        .args(prompt_ids.iter().map(u32::to_string))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run tests/python/logprobs_reference.py");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let steps: Vec<Value> = serde_json::from_slice(&output.stdout).expect("JSON steps");
    let id = |v: &Value| u32::try_from(v.as_u64().expect("id")).expect("u32");
    steps
        .iter()
        .map(|step| Step {
            id: id(&step["id"]),
            logprob: step["logprob"].as_f64().expect("logprob"),
            top: step["top"]
                .as_array()
                .expect("top")
                .iter()
                .map(|pair| (id(&pair[0]), pair[1].as_f64().expect("logprob")))
                .collect(),
        })
        .collect()
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_bytes(&fs::read(llm_fixture().join("tokenizer.json")).expect("tokenizer"))
        .expect("tokenizer.json")
}

fn close(got: &Value, want: f64, what: &str) {
    let got = got.as_f64().unwrap_or_else(|| panic!("{what}: {got}"));
    assert!((got - want).abs() <= TOLERANCE, "{what}: {got} vs {want}");
}

async fn answer(d: &Daemon, path: &str, body: &Value) -> Value {
    let response = post_json(&d.socket, path, body).await;
    assert_eq!(response.status, 200, "{:?}", response.body);
    response.json()
}

/// The streamed chunks' `logprobs`, non-null ones only: the role and
/// finish chunks carry none.
async fn streamed(d: &Daemon, path: &str, body: &Value) -> Vec<Value> {
    let mut body = body.clone();
    body["stream"] = json!(true);
    let response = post_json(&d.socket, path, &body).await;
    assert_eq!(response.status, 200, "{:?}", response.body);
    let events = stream_events(&response.body);
    let choice = |e: &Value| e["choices"][0].clone();
    assert!(choice(&events[0])["logprobs"].is_null());
    assert!(choice(&events[events.len() - 1])["logprobs"].is_null());
    events
        .iter()
        .map(|e| choice(e)["logprobs"].clone())
        .filter(|l| !l.is_null())
        .collect()
}

/// Chat's `logprobs.content` against the reference: the chosen token and
/// the top 5 at every step, each with its text and bytes.
fn check_chat(content: &[Value], steps: &[Step], tokenizer: &Tokenizer) {
    assert_eq!(content.len(), STEPS, "max_tokens reached: {content:?}");
    let entry = |value: &Value, id: u32, logprob: f64, what: &str| {
        let text = tokenizer.token_text(id);
        assert_eq!(value["token"], text, "{what}");
        assert_eq!(value["bytes"], json!(text.as_bytes()), "{what}");
        close(&value["logprob"], logprob, what);
    };
    for (i, (got, step)) in content.iter().zip(steps).enumerate() {
        entry(got, step.id, step.logprob, &format!("token {i}"));
        let top = got["top_logprobs"].as_array().expect("top_logprobs");
        assert_eq!(top.len(), TOP, "token {i}");
        for (rank, (alternative, &(id, logprob))) in top.iter().zip(&step.top).enumerate() {
            entry(alternative, id, logprob, &format!("token {i}, rank {rank}"));
        }
    }
}

/// The legacy `logprobs` against the reference, up to the EOS that ended
/// the completion (which has none).
fn check_completion(logprobs: &Value, steps: &[Step], tokenizer: &Tokenizer) {
    let tokens = logprobs["tokens"].as_array().expect("tokens");
    let n = tokens.len();
    assert_eq!(steps[n].id, 1, "the completion ended at EOS, left out");
    let mut offset = 0;
    for (i, step) in steps[..n].iter().enumerate() {
        let text = tokenizer.token_text(step.id);
        assert_eq!(tokens[i], text, "token {i}");
        close(
            &logprobs["token_logprobs"][i],
            step.logprob,
            "token_logprobs",
        );
        assert_eq!(logprobs["text_offset"][i], offset, "text_offset {i}");
        offset += text.chars().count();
        let top = logprobs["top_logprobs"][i].as_object().expect("an object");
        assert!(top.len() <= TOP + 1, "{top:?}");
        // The likelier of two alternatives with one text is kept.
        let mut seen = HashSet::new();
        for &(id, logprob) in &step.top {
            let text = tokenizer.token_text(id);
            if seen.insert(text.clone()) {
                let got = top
                    .get(&text)
                    .unwrap_or_else(|| panic!("{text:?} in {top:?}"));
                close(got, logprob, "top_logprobs");
            }
        }
    }
}

/// Streamed logprobs joined: chat's `content` arrays, or the legacy
/// arrays, each concatenated.
fn joined(chunks: &[Value], keys: &[&str]) -> Value {
    let mut whole = json!({});
    for key in keys {
        whole[key] = chunks
            .iter()
            .flat_map(|c| c[key].as_array().expect("an array").clone())
            .collect();
    }
    whole
}

#[tokio::test(flavor = "multi_thread")]
async fn greedy_logprobs_are_the_log_softmax_that_onnxruntime_computes() {
    let chat_prompt = named(&llm_expected()["prompts"], "chat_single_turn");
    let raw_prompt = named(&llm_expected()["prompts"], "raw_completion");
    let chat_steps = reference(&token_ids(&chat_prompt["prompt_ids"]));
    let raw_steps = reference(&token_ids(&raw_prompt["prompt_ids"]));
    // The reference's own greedy ids are the recorded ones.
    let ids = |steps: &[Step], n| steps[..n].iter().map(|s| s.id).collect::<Vec<_>>();
    let recorded = token_ids(&chat_prompt["greedy"]["ids"]);
    assert_eq!(ids(&chat_steps, recorded.len()), recorded);
    let recorded = token_ids(&raw_prompt["greedy"]["ids"]);
    assert_eq!(ids(&raw_steps, recorded.len()), recorded);
    let tokenizer = tokenizer();

    let chat = json!({"model": MODEL, "messages": chat_prompt["messages"], "temperature": 0,
        "max_tokens": STEPS, "logprobs": true, "top_logprobs": TOP});
    let completion = json!({"model": MODEL, "prompt": raw_prompt["prompt"], "temperature": 0,
        "max_tokens": STEPS, "logprobs": TOP});
    for extra in ["", "batching = false"] {
        let d = Daemon::start("", &llm_table(MODEL, &llm_fixture(), extra));
        let whole = answer(&d, CHAT, &chat).await;
        let logprobs = &whole["choices"][0]["logprobs"];
        let content = logprobs["content"].as_array().expect("content");
        check_chat(content, &chat_steps, &tokenizer);
        let chunks = streamed(&d, CHAT, &chat).await;
        assert_eq!(joined(&chunks, &["content"]), *logprobs, "{extra}");

        let whole_completion = answer(&d, COMPLETIONS, &completion).await;
        let legacy = &whole_completion["choices"][0]["logprobs"];
        check_completion(legacy, &raw_steps, &tokenizer);
        let keys = ["tokens", "token_logprobs", "top_logprobs", "text_offset"];
        let chunks = streamed(&d, COMPLETIONS, &completion).await;
        assert_eq!(joined(&chunks, &keys), *legacy, "{extra}");

        // Not asked: null, as before.
        let mut plain = chat.clone();
        plain["logprobs"] = json!(false);
        plain["top_logprobs"] = Value::Null;
        let plain = answer(&d, CHAT, &plain).await;
        assert!(plain["choices"][0]["logprobs"].is_null());
        assert_eq!(
            plain["choices"][0]["message"],
            whole["choices"][0]["message"]
        );

        // The records say that logprobs were asked, and how many
        // alternatives; never a value.
        let auditor = d.auditor.as_ref().expect("auditor");
        let asked: Vec<Value> = auditor
            .entries()
            .iter()
            .filter(|e| e["event"] == "request" && e["model"] == MODEL)
            .map(|e| e["details"]["logprobs"].clone())
            .collect();
        assert_eq!(
            asked,
            [json!("5"), json!("5"), json!("5"), json!("5"), Value::Null]
        );
        let log = fs::read_to_string(auditor.log_dir.join("entries.log")).expect("log");
        assert!(!log.contains(&content[0]["logprob"].to_string()));
        assert!(!log.contains("top_logprobs"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn logprobs_out_of_bounds_or_mistyped_are_refused_naming_the_field() {
    let d = Daemon::start("", &llm_table(MODEL, &llm_fixture(), ""));
    let chat = |extra: Value| {
        let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 2});
        body.as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        (CHAT, body)
    };
    let completion = |extra: Value| {
        let mut body = json!({"model": MODEL, "prompt": "Hi", "max_tokens": 2});
        body.as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        (COMPLETIONS, body)
    };
    let refused = [
        (
            chat(json!({"logprobs": true, "top_logprobs": 21})),
            "top_logprobs",
            None,
        ),
        (
            chat(json!({"logprobs": true, "top_logprobs": -1})),
            "top_logprobs",
            None,
        ),
        (chat(json!({"top_logprobs": 2})), "top_logprobs", None),
        (
            chat(json!({"logprobs": false, "top_logprobs": 0})),
            "top_logprobs",
            None,
        ),
        (
            chat(json!({"logprobs": 1})),
            "logprobs",
            Some("invalid_type"),
        ),
        (
            chat(json!({"logprobs": "yes"})),
            "logprobs",
            Some("invalid_type"),
        ),
        (
            chat(json!({"logprobs": true, "top_logprobs": 1.5})),
            "top_logprobs",
            Some("invalid_type"),
        ),
        (completion(json!({"logprobs": 6})), "logprobs", None),
        (completion(json!({"logprobs": -1})), "logprobs", None),
        (
            completion(json!({"logprobs": true})),
            "logprobs",
            Some("invalid_type"),
        ),
        (
            completion(json!({"logprobs": 2.5})),
            "logprobs",
            Some("invalid_type"),
        ),
        (
            completion(json!({"logprobs": [5]})),
            "logprobs",
            Some("invalid_type"),
        ),
    ];
    for ((path, body), param, code) in refused {
        let (status, error) = openai_error(&d, path, &body).await;
        assert_eq!(
            (status, &error["param"]),
            (400, &json!(param)),
            "{body}: {error}"
        );
        assert_eq!(error["code"], json!(code), "{body}: {error}");
    }
    // The bounds themselves, and "off", are accepted.
    for (path, body) in [
        chat(json!({"logprobs": true, "top_logprobs": 20})),
        chat(json!({"logprobs": false})),
        completion(json!({"logprobs": 0})),
        completion(json!({"logprobs": false, "top_logprobs": 3})),
    ] {
        let response = post_json(&d.socket, path, &body).await;
        assert_eq!(response.status, 200, "{body}: {:?}", response.body);
        let logprobs = &response.json()["choices"][0]["logprobs"];
        match (path, &body["logprobs"]) {
            (_, Value::Bool(false)) => assert!(logprobs.is_null(), "{logprobs}"),
            (CHAT, _) => {
                let first = &logprobs["content"][0]["top_logprobs"];
                assert_eq!(first.as_array().map(Vec::len), Some(20), "{logprobs}");
            }
            _ => {
                // logprobs 0: the chosen token alone.
                let first = &logprobs["top_logprobs"][0];
                assert_eq!(first.as_object().map(|o| o.len()), Some(1), "{logprobs}");
            }
        }
    }
}

#[test]
fn the_openai_python_client_reads_logprobs_whole_and_streamed() {
    let d = Daemon::start("", &llm_table(MODEL, &llm_fixture(), ""));
    let stdout = run_client_script(&d, "openai_logprobs.py", &[], &["openai", "httpx2"]);
    assert!(stdout.contains("all logprobs checks passed"), "{stdout}");
}

/// A whole answer is bounded by `server.max_response_bytes`, as a KServe
/// one is: logprobs make it far larger than its text, and a client that
/// never reads could otherwise make the daemon hold any size. Over the
/// limit it is 413 `response_too_large`, recorded with the tokens spent;
/// the same request streamed is answered, and without logprobs it fits.
#[tokio::test]
async fn a_whole_answer_over_max_response_bytes_is_413_and_streamed_it_is_answered() {
    let d = Daemon::start(
        "max_response_bytes = 8192",
        &llm_table(MODEL, &llm_fixture(), ""),
    );
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 32, "ignore_eos": true, "temperature": 0,
        "logprobs": true, "top_logprobs": 20});
    let response = post_json(&d.socket, CHAT, &body).await;
    assert_eq!(response.status, 413, "{:?}", response.body);
    let error = response.json();
    assert_eq!(error["error"]["code"], "response_too_large", "{error}");
    let message = error["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("server.max_response_bytes") && message.contains("\"stream\": true"),
        "{message}"
    );
    let chunks = streamed(&d, CHAT, &body).await;
    let tokens: usize = chunks
        .iter()
        .map(|l| l["content"].as_array().expect("content").len())
        .sum();
    assert_eq!(
        tokens, 32,
        "the streamed answer carries every token's logprobs"
    );
    let mut plain = body.clone();
    let fields = plain.as_object_mut().expect("object");
    fields.remove("logprobs");
    fields.remove("top_logprobs");
    answer(&d, CHAT, &plain).await;
}
