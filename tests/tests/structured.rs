//! Structured output (`response_format`) end to end, against the real
//! daemon: the official `openai` client's `parse` reads answers into a
//! Pydantic model (tests/python/openai_structured.py), 100 sampled at
//! temperature 1 on the tiny fixture and 16 on SmolLM2, every one valid by
//! `jsonschema` too; a reasoning model reasons freely and answers in JSON
//! after `</think>`; `/v1/completions` is held from its first token; the
//! audit record names the constraint and the schema's digest, never the
//! schema; and every malformed or unenforceable format is a 400 naming
//! the field.

use std::path::{Path, PathBuf};

use deepseek_tests::{
    Daemon, delta_text, llm_fixture, llm_fixture_with_template, llm_table, openai_error, post_json,
    run_client_script, shared_tempdir, stream_events,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::smollm2::{FP32, model_dir};

const MODEL: &str = "tiny-r1";
const CHAT: &str = "/v1/chat/completions";

/// A copy of tiny-r1 in `dir` whose template closes the reasoning before
/// the answer (`<think>\n\n</think>\n\n`, as DeepSeek's templates do when
/// thinking is off), so the answer is constrained from its first token:
/// the random weights seldom close a reasoning of their own within the
/// fixture's 256 tokens.
fn no_thinking_fixture(dir: &Path) -> PathBuf {
    let config: Value = serde_json::from_slice(
        &std::fs::read(llm_fixture().join("tokenizer_config.json")).expect("config"),
    )
    .expect("JSON");
    let stock = config["chat_template"].as_str().expect("template");
    let opened = "{{- '<｜Assistant｜><think>\\n' -}}";
    assert!(stock.contains(opened), "{stock}");
    let closed = stock.replace(
        opened,
        "{{- '<｜Assistant｜><think>\\n\\n</think>\\n\\n' -}}",
    );
    llm_fixture_with_template(dir, "tiny-r1-no-thinking", &closed)
}

/// Runs tests/python/openai_structured.py against `model`.
fn parse_with_the_openai_client(d: &Daemon, model: &str, samples: usize) -> Value {
    let stdout = run_client_script(
        d,
        "openai_structured.py",
        &[model, &samples.to_string()],
        &["openai", "httpx2", "jsonschema", "pydantic"],
    );
    serde_json::from_str(stdout.lines().last().expect("counts")).expect("JSON counts")
}

#[test]
fn the_openai_client_parses_sampled_answers_into_pydantic_and_all_match_the_schema() {
    let dir = shared_tempdir();
    let copy = no_thinking_fixture(dir.path());
    let tables = format!(
        "{}{}",
        llm_table(MODEL, &copy, "sessions = 8"),
        llm_table("smollm2", &model_dir(FP32), "sessions = 8")
    );
    let d = Daemon::start("", &tables);
    for (model, samples) in [(MODEL, 100), ("smollm2", 16)] {
        let counts = parse_with_the_openai_client(&d, model, samples);
        assert_eq!(
            counts["finish_reasons"],
            json!({"stop": samples}),
            "{model}"
        );
        eprintln!("{model}: {counts}");
    }
    // Each was audited as constrained by that schema, and the schema is
    // not in the log: only its digest.
    let auditor = d.auditor.as_ref().expect("auditor");
    let constrained: Vec<Value> = auditor
        .entries()
        .into_iter()
        .filter(|e| e["event"] == "request")
        .collect();
    assert_eq!(constrained.len(), 116);
    let digests: std::collections::HashSet<&Value> = constrained
        .iter()
        .map(|e| {
            assert_eq!(e["details"]["constraint"], "json_schema", "{e}");
            &e["details"]["schema_sha256"]
        })
        .collect();
    assert_eq!(digests.len(), 1, "one schema: {digests:?}");
    let log = std::fs::read_to_string(auditor.log_dir.join("entries.log")).expect("log");
    assert!(!log.contains("country"), "the schema is not in the log");
}

fn chat(model: &str, format: Value, extra: Value) -> Value {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": "Hi"}],
        "response_format": format, "max_tokens": 200});
    for (key, value) in extra.as_object().expect("object") {
        body[key] = value.clone();
    }
    body
}

fn schema_format(schema: Value) -> Value {
    json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": true}})
}

/// A schema the random weights can satisfy within the context.
fn small_schema() -> Value {
    json!({"type": "object", "properties": {
            "kind": {"enum": ["a", "b", "c"]},
            "n": {"type": "integer", "minimum": -5, "maximum": 500},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3}},
        "required": ["kind", "n", "tags"], "additionalProperties": false})
}

/// `value` valid against [`small_schema`].
fn check_small(value: &Value, context: &str) {
    let object = value.as_object().unwrap_or_else(|| panic!("{context}"));
    assert_eq!(object.len(), 3, "{context}");
    assert!(
        ["a", "b", "c"].contains(&value["kind"].as_str().unwrap_or_default()),
        "{context}"
    );
    let n = value["n"].as_i64().unwrap_or_else(|| panic!("{context}"));
    assert!((-5..=500).contains(&n), "{context}");
    let tags = value["tags"]
        .as_array()
        .unwrap_or_else(|| panic!("{context}"));
    assert!(tags.len() <= 3, "{context}");
    for tag in tags {
        let tag = tag.as_str().unwrap_or_else(|| panic!("{context}"));
        assert!(tag.chars().count() <= 6, "{context}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reasoning_model_reasons_freely_then_answers_in_json() {
    let d = Daemon::start("", &llm_table(MODEL, &llm_fixture(), ""));
    let format = schema_format(small_schema());
    let mut closed = 0;
    for seed in 0..12 {
        let body = chat(
            MODEL,
            format.clone(),
            json!({"seed": seed, "temperature": 1}),
        );
        let response = post_json(&d.socket, CHAT, &body).await;
        assert_eq!(response.status, 200, "{:?}", response.body);
        let answer = response.json();
        let choice = &answer["choices"][0];
        let message = &choice["message"];
        // The reasoning is not held to the schema.
        let reasoning = message["reasoning_content"].as_str().expect("reasoning");
        assert!(
            serde_json::from_str::<Value>(reasoning).is_err(),
            "{answer}"
        );
        match choice["finish_reason"].as_str() {
            // The JSON ended the answer: the end was masked until then.
            Some("stop") => {
                let content = message["content"].as_str().expect("content");
                let value: Value =
                    serde_json::from_str(content).unwrap_or_else(|e| panic!("{content}: {e}"));
                check_small(&value, content);
                closed += 1;
                // Streamed, the same seed gives the same answer.
                let mut streamed = body.clone();
                streamed["stream"] = json!(true);
                let events = post_json(&d.socket, CHAT, &streamed).await;
                let joined = delta_text(&stream_events(&events.body), "content");
                assert_eq!(joined, content, "seed {seed}");
            }
            // The reasoning never closed within max_tokens: no answer.
            Some("length") => assert!(message["content"].is_null(), "{answer}"),
            other => panic!("finish_reason {other:?}: {answer}"),
        }
    }
    assert!(closed > 0, "no seed closed its reasoning");
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_and_json_object_are_held_from_the_first_token() {
    let d = Daemon::start("", &llm_table(MODEL, &llm_fixture(), ""));
    for seed in 0..20 {
        let body = json!({"model": MODEL, "prompt": "Data:", "seed": seed, "temperature": 1,
            "max_tokens": 200, "response_format": schema_format(small_schema())});
        let response = post_json(&d.socket, "/v1/completions", &body).await;
        assert_eq!(response.status, 200, "{:?}", response.body);
        let answer = response.json();
        assert_eq!(answer["choices"][0]["finish_reason"], "stop", "{answer}");
        let text = answer["choices"][0]["text"].as_str().expect("text");
        let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        check_small(&value, text);
    }
    // json_object: an object, whatever it holds (random weights seldom
    // close one within the context: max_tokens cuts it, `length`).
    let dir = shared_tempdir();
    let copy = no_thinking_fixture(dir.path());
    let d = Daemon::start("", &llm_table(MODEL, &copy, ""));
    for seed in 0..4 {
        let body = chat(
            MODEL,
            json!({"type": "json_object"}),
            json!({"seed": seed, "temperature": 1}),
        );
        let answer = post_json(&d.socket, CHAT, &body).await.json();
        let content = answer["choices"][0]["message"]["content"]
            .as_str()
            .expect("content");
        assert!(content.starts_with('{'), "{content}");
        if answer["choices"][0]["finish_reason"] == "stop" {
            let value: Value = serde_json::from_str(content).expect("JSON");
            assert!(value.is_object(), "{content}");
        }
    }
    let entries = d.auditor.as_ref().expect("auditor").entries();
    let record = entries
        .iter()
        .find(|e| e["event"] == "request")
        .expect("a record");
    assert_eq!(record["details"]["constraint"], "json_object");
    let object_schema = serde_json::to_vec(&json!({"type": "object"})).expect("JSON");
    let digest: String = Sha256::digest(&object_schema)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(record["details"]["schema_sha256"], digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_or_unenforceable_formats_are_400s_naming_the_field() {
    let d = Daemon::start("", &llm_table(MODEL, &llm_fixture(), ""));
    let huge = json!({"type": "object", "description": "x".repeat(70 * 1024)});
    let cases = [
        (
            json!({"type": "yaml"}),
            json!({}),
            "response_format.type",
            "unknown variant",
        ),
        (
            json!({"type": "json_schema"}),
            json!({}),
            "response_format.json_schema",
            "missing field",
        ),
        (
            json!({"type": "json_schema", "schema": {"type": "object"}}),
            json!({}),
            "response_format",
            "unknown field",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "x"}}),
            json!({}),
            "response_format.json_schema.schema",
            "missing",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}),
            json!({}),
            "response_format.json_schema.name",
            "1 to 64",
        ),
        (
            schema_format(json!([1])),
            json!({}),
            "response_format.json_schema.schema",
            "must be an object",
        ),
        (
            schema_format(huge),
            json!({}),
            "response_format.json_schema.schema",
            "over the limit",
        ),
        (
            schema_format(json!({"type": "object", "properties": {"a": {"type": "frobnicate"}}})),
            json!({}),
            "response_format",
            "cannot be enforced",
        ),
        (
            schema_format(json!({"type": "string", "minLength": 5, "maxLength": 2})),
            json!({}),
            "response_format",
            "cannot be enforced",
        ),
        (
            json!({"type": "json_object"}),
            json!({"ignore_eos": true}),
            "ignore_eos",
            "constrained",
        ),
        // A stop string would cut the JSON short under finish_reason stop.
        (
            json!({"type": "json_object"}),
            json!({"stop": ["\""]}),
            "stop",
            "constrained",
        ),
        // No JSON can begin: refused at compile, not a failed generation.
        (
            schema_format(json!({"$ref": "#"})),
            json!({}),
            "response_format",
            "cannot be enforced",
        ),
        // Compiling 300 patternProperties took 6 s of the preparing threads.
        (
            schema_format(json!({"type": "object", "patternProperties":
                (0..300).map(|i| (format!("^x{i}$"), json!({}))).collect::<serde_json::Map<_, _>>()})),
            json!({}),
            "response_format",
            "patternProperties",
        ),
    ];
    for (format, extra, param, says) in cases {
        let body = chat(MODEL, format, extra);
        let (status, error) = openai_error(&d, CHAT, &body).await;
        assert_eq!((status, &error["param"]), (400, &json!(param)), "{error}");
        let message = error["message"].as_str().expect("message");
        assert!(message.contains(says), "{says}: {message}");
        assert!(message.len() < 2048, "bounded: {message}");
    }
    // The daemon is unharmed: text, then a constrained answer.
    let text = chat(MODEL, json!({"type": "text"}), json!({"max_tokens": 2}));
    assert_eq!(post_json(&d.socket, CHAT, &text).await.status, 200);
    let body = json!({"model": MODEL, "prompt": "Data:", "max_tokens": 200,
        "response_format": schema_format(small_schema())});
    assert_eq!(
        post_json(&d.socket, "/v1/completions", &body).await.status,
        200
    );
}
