//! Tools on the chat API, end to end: the shipped DeepSeek-R1 tools
//! template (packaging/templates/deepseek-r1-tools.jinja) renders as
//! transformers' jinja2 does (tests/python/render_template.py), in
//! process; the real daemon, serving a copy of tiny-r1 with a compact tools
//! template as `chat_template.jinja` ([`COMPACT`]), renders tools, calls
//! and results as jinja2 does (the audit record's `prompt_sha256`); the limits on the tool fields are 400s naming
//! the field; and the official `openai` client sends tools and tool results.
//!
//! tiny-r1's random weights never write a tool call, so the parsing of
//! calls out of an answer is covered by the unit tests of
//! `daemon/src/engine/llm/tool_parser.rs`, not here.

use std::io::Write;
use std::process::{Command, Stdio};

use deepseek_tests::{
    Daemon, llm_fixture, llm_fixture_with_template, llm_table, openai_error, post_json, python,
    run_client_script, shared_tempdir, stream_events, workspace,
};
use deepseekd::engine::llm::template::{ChatTemplate, Message};
use deepseekd::engine::llm::tools::{FunctionCall, HistoryCall, Tool, template_tools};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const MODEL: &str = "tiny-r1";
const BOS: &str = "<｜begin▁of▁sentence｜>";
const EOS: &str = "<｜end▁of▁sentence｜>";

fn tools_template() -> String {
    std::fs::read_to_string(workspace().join("packaging/templates/deepseek-r1-tools.jinja"))
        .expect("the shipped tools template")
}

/// A template that takes tools in DeepSeek's format, small enough for
/// tiny-r1's context of 256 tokens, which the shipped one's tool section
/// alone overflows (its markers are no tokens of tiny-r1's vocabulary, so
/// each is some 20 tokens of text): the daemon's rendering is checked
/// with it, the shipped template's in process.
const COMPACT: &str = "{{ bos_token }}{% if tools %}{{ tools | tojson }}{% endif %}\
{% for m in messages %}{% if m['role'] == 'user' %}<｜User｜>{{ m['content'] }}\
{% elif m['role'] == 'assistant' %}<｜Assistant｜>{{ m['content'] or '' }}\
{% for c in m['tool_calls'] or [] %}<｜tool▁call▁begin｜>{{ c['function']['name'] }}{{ c['function']['arguments'] }}{% endfor %}\
{{ eos_token }}{% elif m['role'] == 'tool' %}[{{ m['tool_call_id'] }}]{{ m['content'] }}{% endif %}{% endfor %}\
<｜Assistant｜><think>\n";

/// Prompts rendered by jinja2 for `cases`, a JSON array of
/// `{"messages", "tools"}` (text: the order of the keys is rendered).
fn jinja2(template: &str, cases: &str) -> Vec<String> {
    let python = python(&["jinja2"]);
    let spec = format!(
        r#"{{"template": {}, "bos_token": "{BOS}", "eos_token": "{EOS}", "cases": {cases}}}"#,
        Value::from(template)
    );
    let mut child = Command::new(python)
        .arg(workspace().join("tests/python/render_template.py"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run render_template.py");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(spec.as_bytes())
        .expect("write cases");
    let output = child.wait_with_output().expect("render_template.py");
    assert!(
        output.status.success(),
        "render_template.py: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("prompts")
}

fn weather_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city, now <b>&'\"</b> ☀",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "now"}}
    ])
}

fn call_history() -> Value {
    json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\", \"unit\": \"C\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "9 C"},
        {"role": "assistant", "content": "<think>easy</think>Paris 21 C, Oslo 9 C."},
        {"role": "user", "content": "And now?"}
    ])
}

/// The conversations compared: without tools, with tools, with calls and
/// results in the history, results last.
fn cases() -> Vec<Value> {
    let history = call_history();
    let results_last = Value::Array(history.as_array().expect("history")[..5].to_vec());
    vec![
        json!({"messages": [{"role": "user", "content": "Hi"}], "tools": null}),
        json!({"messages": [{"role": "user", "content": "Hi"}], "tools": weather_tools()}),
        json!({"messages": history, "tools": weather_tools()}),
        json!({"messages": results_last, "tools": weather_tools()}),
        json!({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}], "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]}),
    ]
}

/// A case's messages and tools as the daemon hands them to the template.
fn engine_case(case: &Value) -> (Vec<Message>, Vec<Tool>) {
    let messages = case["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| Message {
            role: m["role"].as_str().expect("role").to_owned(),
            content: m["content"].as_str().unwrap_or_default().to_owned(),
            tool_calls: m["tool_calls"].as_array().map(|calls| {
                calls
                    .iter()
                    .map(|c| HistoryCall {
                        id: c["id"].as_str().expect("id").to_owned(),
                        kind: "function",
                        function: FunctionCall {
                            name: c["function"]["name"].as_str().expect("name").to_owned(),
                            arguments: c["function"]["arguments"]
                                .as_str()
                                .expect("arguments")
                                .to_owned(),
                        },
                    })
                    .collect()
            }),
            tool_call_id: m["tool_call_id"].as_str().map(str::to_owned),
        })
        .collect();
    let tools = case["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| Tool {
            name: t["function"]["name"].as_str().expect("name").to_owned(),
            description: t["function"]["description"].as_str().map(str::to_owned),
            // As jinja2 gets them, in the client's order.
            parameters: (!t["function"]["parameters"].is_null()).then(|| {
                let text = t["function"]["parameters"].to_string();
                serde_json::value::RawValue::from_string(text).expect("JSON")
            }),
        })
        .collect();
    (messages, tools)
}

#[test]
fn the_tools_template_renders_as_transformers_jinja2_does() {
    let source = tools_template();
    let template = ChatTemplate::new(source.clone(), Some(BOS.to_owned()), Some(EOS.to_owned()))
        .expect("compiles");
    let cases = cases();
    // The tools as the daemon hands them over, and to jinja2 the same.
    let engine: Vec<_> = cases
        .iter()
        .map(|case| {
            let (messages, tools) = engine_case(case);
            let tools = (!tools.is_empty())
                .then(|| template_tools::<()>(&tools, &mut |s| Ok(s.to_owned())).expect("tools"));
            (messages, tools)
        })
        .collect();
    let texts: Vec<String> = cases
        .iter()
        .zip(&engine)
        .map(|(case, (_, tools))| {
            let tools = serde_json::to_string(tools).expect("tools JSON");
            format!(r#"{{"messages": {}, "tools": {tools}}}"#, case["messages"])
        })
        .collect();
    let want = jinja2(&source, &format!("[{}]", texts.join(",")));
    for ((case, (messages, tools)), want) in cases.iter().zip(engine).zip(&want) {
        let got = template.render(&messages, tools).expect("renders");
        assert_eq!(&got, want, "{case}");
    }
    // What the template writes, spot-checked.
    assert!(
        want[1].contains("\"description\": \"The weather in a city, now <b>&'\\\"</b> ☀\""),
        "{}",
        want[1]
    );
    assert!(want[2].contains("<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜>"), "{}", want[2]);
    assert!(want[2].contains("<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>21 C<｜tool▁output▁end｜><｜tool▁output▁begin｜>9 C<｜tool▁output▁end｜><｜tool▁outputs▁end｜><｜Assistant｜>Paris 21 C, Oslo 9 C.<｜end▁of▁sentence｜>"), "{}", want[2]);
    assert!(
        want[3].ends_with("<｜tool▁outputs▁end｜><｜Assistant｜><think>\n"),
        "{}",
        want[3]
    );
    assert_eq!(
        want[0],
        format!("{BOS}<｜User｜>Hi<｜Assistant｜><think>\n")
    );
}

fn sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_renders_tools_and_tool_results_as_jinja2_does() {
    let dir = shared_tempdir();
    let copy = llm_fixture_with_template(dir.path(), MODEL, COMPACT);
    let d = Daemon::start("", &llm_table(MODEL, &copy, ""));
    let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]);
    // As the template receives them: OpenAI's keys in OpenAI's order, the
    // schema's as sent.
    let template_tools = r#"[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]"#;
    let conversations = [
        json!([{"role": "user", "content": "Hi"}]),
        json!([
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "1"}
        ]),
    ];
    let cases: Vec<String> = conversations
        .iter()
        .map(|m| format!(r#"{{"messages": {m}, "tools": {template_tools}}}"#))
        .collect();
    let prompts = jinja2(COMPACT, &format!("[{}]", cases.join(",")));
    for (messages, prompt) in conversations.iter().zip(&prompts) {
        let body = json!({"model": MODEL, "messages": messages, "tools": tools, "max_tokens": 2, "temperature": 0});
        let response = post_json(&d.socket, "/v1/chat/completions", &body).await;
        assert_eq!(response.status, 200, "{:?}\n{}", response.body, d.log());
        let answer = response.json();
        // The random weights write no call: a plain answer.
        assert_eq!(answer["choices"][0]["finish_reason"], "length");
        assert!(answer["choices"][0]["message"].get("tool_calls").is_none());
        let id = answer["id"].as_str().expect("id").to_owned();
        let auditor = d.auditor.as_ref().expect("auditor");
        let entries = auditor.entries();
        let record = entries
            .iter()
            .find(|e| e["request_id"] == id.as_str() && e["event"] == "request")
            .expect("the request's record");
        assert_eq!(
            record["details"]["prompt_sha256"],
            sha256(prompt),
            "{prompt}"
        );
        assert_eq!(record["details"]["tools"], "1");
        assert!(record.get("content").is_none_or(Value::is_null));
        // Counts only: no tool name in the record.
        assert!(!record.to_string().contains("\"f\""), "{record}");
    }

    // tool_choice "none": rendered without tools.
    let body = json!({"model": MODEL, "messages": conversations[0], "tools": tools, "tool_choice": "none", "max_tokens": 1});
    let response = post_json(&d.socket, "/v1/chat/completions", &body).await;
    assert_eq!(response.status, 200, "{:?}", response.body);
    let plain = jinja2(
        COMPACT,
        &format!(r#"[{{"messages": {}, "tools": null}}]"#, conversations[0]),
    );
    let id = response.json()["id"].as_str().expect("id").to_owned();
    let entries = d.auditor.as_ref().expect("auditor").entries();
    let record = entries
        .iter()
        .find(|e| e["request_id"] == id.as_str() && e["event"] == "request")
        .expect("record");
    assert_eq!(record["details"]["prompt_sha256"], sha256(&plain[0]));
}

#[tokio::test(flavor = "multi_thread")]
async fn tools_and_their_limits_are_400s_naming_the_field() {
    let dir = shared_tempdir();
    let copy = llm_fixture_with_template(dir.path(), MODEL, COMPACT);
    let models = format!(
        "{}{}",
        llm_table(MODEL, &copy, ""),
        llm_table("plain-r1", &llm_fixture(), "")
    );
    let d = Daemon::start("", &models);
    let chat = "/v1/chat/completions";
    let tool = |name: &str| json!({"type": "function", "function": {"name": name}});
    let body = |model: &str, extra: Value| {
        let mut body = json!({"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1});
        for (key, value) in extra.as_object().expect("object") {
            body[key] = value.clone();
        }
        body
    };
    let many: Vec<Value> = (0..129).map(|i| tool(&format!("f{i}"))).collect();
    let cases = [
        (
            body("plain-r1", json!({"tools": [tool("f")]})),
            "tools",
            "chat template has no tool support",
        ),
        (
            body(MODEL, json!({"tools": [tool(&"n".repeat(65))]})),
            "tools[0].function.name",
            "1 to 64 characters",
        ),
        (
            body(MODEL, json!({"tools": [tool("f"), tool("a b")]})),
            "tools[1].function.name",
            "1 to 64 characters",
        ),
        (
            body(MODEL, json!({"tools": many})),
            "tools",
            "more than 128 items",
        ),
        (
            body(
                MODEL,
                json!({"tools": [tool("f")], "tool_choice": {"type": "function", "function": {"name": "g"}}}),
            ),
            "tool_choice.function.name",
            "\"g\", which is not among tools",
        ),
        (
            body(
                MODEL,
                json!({"tools": [tool("f")], "tool_choice": "sometimes"}),
            ),
            "tool_choice",
            "must be",
        ),
        (
            body(
                MODEL,
                json!({"tools": [tool("f")], "tool_choice": "required", "response_format": {"type": "json_object"}}),
            ),
            "response_format",
            "cannot be combined",
        ),
        (
            body(MODEL, json!({"tool_choice": "auto"})),
            "tool_choice",
            "only allowed when tools are given",
        ),
        (
            body(
                MODEL,
                json!({"messages": [{"role": "user", "content": "x", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}),
            ),
            "messages[0].tool_calls",
            "only assistant messages",
        ),
        (
            json!({"model": MODEL, "prompt": "x", "tools": [tool("f")]}),
            "tools",
            "/v1/chat/completions",
        ),
    ];
    for (request, param, message) in cases {
        let path = if request.get("prompt").is_some() {
            "/v1/completions"
        } else {
            chat
        };
        let (status, error) = openai_error(&d, path, &request).await;
        assert_eq!((status, &error["param"]), (400, &json!(param)), "{error}");
        let text = error["message"].as_str().expect("message");
        assert!(text.contains(message), "{text}");
        if param == "tools" && message.contains("no tool support") {
            assert!(text.contains("\"plain-r1\""), "names the model: {text}");
        }
    }
    // The stock template with tool_choice "none" is fine: no tools rendered.
    let none = body(
        "plain-r1",
        json!({"tools": [tool("f")], "tool_choice": "none"}),
    );
    assert_eq!(post_json(&d.socket, chat, &none).await.status, 200);
}

/// [`COMPACT`] showing only how many tools there are (the tools' JSON
/// alone would overflow tiny-r1's context), and answering without
/// reasoning: a forced call is held to its schema from the first token
/// (the random weights seldom close a reasoning of their own within the
/// context).
fn compact_without_reasoning() -> String {
    let opened = "<｜Assistant｜><think>\n";
    assert!(COMPACT.ends_with(opened));
    let tools = "{{ tools | tojson }}";
    assert!(COMPACT.contains(tools));
    COMPACT[..COMPACT.len() - opened.len()].replace(tools, "{{ tools | length }} tools")
        + "<｜Assistant｜>"
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forced_tool_choice_answers_with_calls_its_schema_allows() {
    let dir = shared_tempdir();
    let copy = llm_fixture_with_template(dir.path(), MODEL, &compact_without_reasoning());
    let d = Daemon::start("", &llm_table(MODEL, &copy, ""));
    let tools = json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
            "properties": {"city": {"type": "string", "pattern": "^[A-Za-z]{1,8}$"}, "unit": {"enum": ["C", "F"]}},
            "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {},
            "additionalProperties": false}}}
    ]);
    let check_call = |call: &Value, context: &str| {
        assert_eq!(call["type"], "function", "{context}");
        assert!(
            call["id"].as_str().is_some_and(|id| !id.is_empty()),
            "{context}"
        );
        let name = call["function"]["name"].as_str().expect("name");
        let arguments: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().expect("arguments"))
                .unwrap_or_else(|e| panic!("{context}: {e}"));
        match name {
            "get_weather" => {
                let city = arguments["city"].as_str().expect("city");
                assert!(
                    (1..=8).contains(&city.len()) && city.chars().all(|c| c.is_ascii_alphabetic()),
                    "{context}"
                );
                assert!(
                    ["C", "F"].contains(&arguments["unit"].as_str().expect("unit")),
                    "{context}"
                );
                assert_eq!(arguments.as_object().expect("object").len(), 2, "{context}");
            }
            "now" => assert_eq!(arguments, json!({}), "{context}"),
            other => panic!("{other}: {context}"),
        }
        name.to_owned()
    };
    let named = json!({"type": "function", "function": {"name": "get_weather"}});
    for (choice, parallel, kind) in [
        (named.clone(), true, "tool_function"),
        (json!("required"), false, "tools_required"),
    ] {
        for seed in 0..4 {
            let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Weather?"}],
                "tools": tools, "tool_choice": choice, "parallel_tool_calls": parallel,
                "temperature": 1, "seed": seed, "max_tokens": 120});
            let response = post_json(&d.socket, "/v1/chat/completions", &body).await;
            assert_eq!(response.status, 200, "{:?}", response.body);
            let answer = response.json();
            let context = answer.to_string();
            let choice0 = &answer["choices"][0];
            assert_eq!(choice0["finish_reason"], "tool_calls", "{context}");
            assert!(choice0["message"]["content"].is_null(), "{context}");
            let calls = choice0["message"]["tool_calls"]
                .as_array()
                .expect("tool_calls");
            assert_eq!(calls.len(), 1, "{context}");
            let name = check_call(&calls[0], &context);
            if kind == "tool_function" {
                assert_eq!(name, "get_weather");
            }
            // Streamed: the same call, in OpenAI's chunk shape.
            let mut streamed = body.clone();
            streamed["stream"] = json!(true);
            let response = post_json(&d.socket, "/v1/chat/completions", &streamed).await;
            let text = String::from_utf8_lossy(&response.body).into_owned();
            let chunks = stream_events(&response.body);
            let deltas: Vec<&Value> = chunks
                .iter()
                .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
                .flatten()
                .collect();
            assert_eq!(deltas.len(), 1, "{text}");
            assert_eq!(deltas[0]["index"], 0, "{text}");
            assert_eq!(deltas[0]["function"], calls[0]["function"], "{text}");
            let last = chunks
                .iter()
                .rev()
                .find(|c| !c["choices"][0]["finish_reason"].is_null())
                .expect("finish");
            assert_eq!(last["choices"][0]["finish_reason"], "tool_calls", "{text}");
        }
        let entries = d.auditor.as_ref().expect("auditor").entries();
        let records: Vec<&Value> = entries
            .iter()
            .filter(|e| e["event"] == "request" && e["details"]["constraint"] == kind)
            .collect();
        assert_eq!(records.len(), 8, "{kind}");
        assert!(
            records.iter().all(|e| e["details"]["tools"] == "2"),
            "{kind}"
        );
    }
}

#[test]
fn the_openai_python_client_sends_tools_and_tool_results() {
    let dir = shared_tempdir();
    let copy = llm_fixture_with_template(dir.path(), MODEL, COMPACT);
    let d = Daemon::start("", &llm_table(MODEL, &copy, ""));
    let stdout = run_client_script(&d, "openai_tools.py", &[], &["openai", "httpx2"]);
    assert!(
        stdout.contains("all openai tools checks passed"),
        "{stdout}"
    );
}
