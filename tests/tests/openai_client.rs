//! The official `openai` Python client (openai==3.51.0, over httpx2) against
//! the real daemon serving fixtures/llm/tiny-r1, with a real auditor:
//! tests/python/openai_client.py checks models.list, chat (whole and
//! streamed with the usage chunk, `reasoning_content`), `extra_body` top_k,
//! completions and the `context_length_exceeded` error against the fixture's
//! exact greedy outputs. Then the audit log must hold the requests' token
//! counts and none of their text.

use std::fs;
use std::time::{Duration, Instant};

use deepseek_tests::{Daemon, llm_fixture, llm_table, run_client_script};
use serde_json::Value;

/// The fixture's prompt named `name` in expected.json.
fn prompt<'a>(expected: &'a Value, name: &str) -> &'a Value {
    expected["prompts"]
        .as_array()
        .expect("expected.json has prompts")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("expected.json has no prompt {name}"))
}

fn text<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("expected.json: {what} is not a string"))
}

#[test]
fn the_openai_python_client_gets_the_fixtures_greedy_outputs() {
    let fixture = llm_fixture();
    let expected_path = fixture.join("expected.json");
    let expected: Value =
        serde_json::from_str(&fs::read_to_string(&expected_path).expect("read expected.json"))
            .expect("expected.json is JSON");
    let d = Daemon::start("", &llm_table("tiny-r1", &fixture, ""));

    let expected_arg = expected_path.to_str().expect("a UTF-8 path");
    let stdout = run_client_script(
        &d,
        "openai_client.py",
        &[expected_arg],
        &["openai", "httpx2"],
    );
    println!("{stdout}");
    assert!(
        stdout.contains("all openai client checks passed"),
        "the script did not finish its checks:\n{stdout}"
    );

    // The script's requests, as the auditor recorded them: three answered
    // whole (chat, chat with top_k, completion), one stream (a `request`
    // entry, then a `completion` entry once it ends) and one refused.
    let chat = prompt(&expected, "chat_single_turn");
    let raw = prompt(&expected, "raw_completion");
    let count = |v: &Value| v.as_array().map(Vec::len).expect("an array") as u64;
    let (chat_in, chat_out) = (count(&chat["prompt_ids"]), count(&chat["greedy"]["ids"]));
    let (raw_in, raw_out) = (count(&raw["prompt_ids"]), count(&raw["greedy"]["ids"]));
    let auditor = d.auditor.as_ref().expect("auditor");
    // The stream's `completion` entry is written after its last chunk.
    let deadline = Instant::now() + Duration::from_secs(10);
    let entries = loop {
        let entries = auditor.entries();
        if entries.iter().any(|e| e["event"] == "completion") || Instant::now() > deadline {
            break entries;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let requests: Vec<&Value> = entries
        .iter()
        .filter(|e| e["event"] == "request" && e["model"] == "tiny-r1")
        .collect();
    let tokens = |e: &Value| (e["tokens_in"].as_u64(), e["tokens_out"].as_u64());
    let mut whole: Vec<(Option<u64>, Option<u64>)> = requests
        .iter()
        .filter(|e| e["status"] == 200 && e["details"]["stream"] == "false")
        .map(|e| tokens(e))
        .collect();
    whole.sort_unstable();
    let mut want = vec![
        (Some(raw_in), Some(raw_out)),
        (Some(chat_in), Some(chat_out)),
        (Some(chat_in), Some(chat_out)),
    ];
    want.sort_unstable();
    assert_eq!(
        whole, want,
        "(tokens_in, tokens_out) of the requests answered whole: {entries:#?}"
    );
    let streamed: Vec<_> = requests
        .iter()
        .filter(|e| e["status"] == 200 && e["details"]["stream"] == "true")
        .map(|e| e["tokens_in"].as_u64())
        .collect();
    assert_eq!(
        streamed,
        [Some(chat_in)],
        "the stream's request entry: {entries:#?}"
    );
    let completions: Vec<_> = entries
        .iter()
        .filter(|e| e["event"] == "completion" && e["model"] == "tiny-r1")
        .map(|e| (e["status"].as_u64(), e["tokens_out"].as_u64()))
        .collect();
    assert_eq!(
        completions,
        [(Some(200), Some(chat_out))],
        "the stream's completion entry: {entries:#?}"
    );
    assert!(
        requests.iter().any(|e| e["status"] == 400
            && e["details"]["error_code"] == "context_length_exceeded"
            && e["details"]["error_param"] == "messages"),
        "the refused too-long prompt is recorded: {entries:#?}"
    );

    // Digests and counts only: no prompt or completion text.
    let chat_prompt = text(&chat["messages"][0]["content"], "the chat message");
    assert_eq!(chat_prompt, "What is the capital of France?");
    let secrets = [
        chat_prompt,
        text(&chat["greedy"]["text"], "the chat's greedy text"),
        text(&raw["prompt"], "the completion prompt"),
        text(
            &raw["greedy"]["text_skip_special_tokens"],
            "the completion's greedy text",
        ),
        "word word word",
    ];
    let log = fs::read_to_string(auditor.log_dir.join("entries.log")).expect("entries.log");
    for entry in &entries {
        let line = entry.to_string();
        for secret in secrets {
            assert!(
                !line.contains(secret) && !log.contains(secret),
                "the audit log holds the text {secret:?}: {line}"
            );
        }
    }
}
