//! `[limits]`: a client over its request rate gets 429 with `Retry-After`,
//! recorded as a refusal; one with too many requests running gets 429
//! until one ends; crossing the alert threshold records one `alert`.

use deepseek_tests::{
    Daemon, get, llm_fixture, llm_table, metric, model_table, post_json, wait_for_model,
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use std::time::Duration;

fn x() -> Value {
    json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_rate_a_client_gets_429_with_retry_after_and_one_alert_is_recorded() {
    let models = format!(
        "{}{}",
        model_table("demo", "demo.onnx", ""),
        llm_table("lm", &llm_fixture(), "")
    );
    // Three requests a minute, an alert above two. (Every request below is
    // sent within the same minute however slow the machine: a few calls.)
    let mut d = Daemon::spawn_full(
        "",
        "",
        "[limits]\nrequests_per_minute = 3\nalert_requests_per_minute = 2",
        &models,
    );
    d.wait_ready();
    for _ in 0..3 {
        assert_eq!(
            post_json(&d.socket, "/v2/models/demo/infer", &x())
                .await
                .status,
            200
        );
    }
    let refused = post_json(&d.socket, "/v2/models/demo/infer", &x()).await;
    assert_eq!(refused.status, 429, "{:?}", refused.body);
    let retry: u64 = refused.headers["retry-after"]
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert!(
        refused.error().contains("requests_per_minute = 3"),
        "{}",
        refused.error()
    );
    // The OpenAI API answers in its own shape, with a code a client acts on.
    let chat =
        json!({"model": "lm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let refused = post_json(&d.socket, "/v1/chat/completions", &chat).await;
    assert_eq!(refused.status, 429);
    assert!(refused.headers.contains_key("retry-after"));
    assert_eq!(refused.json()["error"]["code"], "rate_limited");
    assert_eq!(refused.json()["error"]["type"], "requests");
    // Health and metadata are not limited.
    assert_eq!(
        get(&d.socket, "/v2/health/ready")
            .await
            .expect("ready")
            .status,
        200
    );

    let metrics = get(&d.socket, "/metrics").await.expect("metrics");
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    assert_eq!(
        metric(
            &metrics,
            "deepseekd_refusals_total{reason=\"rate_limited\"}"
        ),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "deepseekd_rate_alerts_total{client=\"uid\"}"),
        Some(1.0),
        "{metrics}"
    );

    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(30)).code(), Some(0));
    let entries = d.auditor.as_mut().expect("auditor").entries();
    let alerts: Vec<&Value> = entries.iter().filter(|e| e["event"] == "alert").collect();
    assert_eq!(alerts.len(), 1, "{entries:?}");
    let uid = nix::unistd::Uid::current().to_string();
    assert_eq!(alerts[0]["details"]["client"], format!("uid {uid}"));
    assert_eq!(alerts[0]["details"]["requests"], "3");
    assert_eq!(alerts[0]["details"]["threshold"], "2");
    assert_eq!(alerts[0]["peer"]["uid"].to_string(), uid);
    // Refusals are recorded at most once a second per client, the others
    // counted in the next record: at least the first one is there.
    let limited: Vec<&Value> = entries
        .iter()
        .filter(|e| e["event"] == "request" && e["status"] == 429)
        .collect();
    assert!(!limited.is_empty(), "{entries:?}");
    assert_eq!(limited[0]["model"], "demo");
    assert_eq!(limited[0]["details"]["error_code"], "rate_limited");
    assert_eq!(limited[0]["details"]["suppressed"], "0");
    assert!(limited.len() <= 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_with_a_request_running_is_refused_a_second_until_it_ends() {
    // One request at a time per client. The auditor is paused, so the
    // first stream waits on its `request` record, holding its place: no
    // timing involved.
    let mut d = Daemon::spawn_full(
        "",
        "",
        "timeout_ms = 600000\n[limits]\nconcurrent_per_client = 1",
        &llm_table("lm", &llm_fixture(), ""),
    );
    d.wait_ready();
    let auditor = d.auditor.as_ref().expect("auditor");
    auditor.pause();
    let socket = d.socket.clone();
    let first = tokio::spawn(async move {
        let body = json!({"model": "lm", "prompt": "The", "max_tokens": 8, "stream": true});
        post_json(&socket, "/v1/completions", &body).await
    });
    wait_for_model(&d, "lm", |m| m["admitted"] == 1).await;
    let socket = d.socket.clone();
    let second = tokio::spawn(async move {
        let body = json!({"model": "lm", "prompt": "The", "max_tokens": 2});
        post_json(&socket, "/v1/completions", &body).await
    });
    // The second one's refusal waits for the auditor too; let both go.
    auditor.signal(Signal::SIGCONT);
    let second = second.await.expect("task");
    assert_eq!(second.status, 429, "{:?}", second.body);
    assert_eq!(second.headers["retry-after"], "1");
    assert_eq!(second.json()["error"]["code"], "too_many_concurrent");
    let first = first.await.expect("task");
    assert_eq!(first.status, 200);
    assert!(String::from_utf8_lossy(&first.body).contains("[DONE]"));
    // The stream's last byte gave its place back.
    let body = json!({"model": "lm", "prompt": "The", "max_tokens": 2});
    assert_eq!(
        post_json(&d.socket, "/v1/completions", &body).await.status,
        200
    );

    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(30)).code(), Some(0));
    let entries = d.auditor.as_mut().expect("auditor").entries();
    assert!(
        entries.iter().any(|e| e["status"] == 429
            && e["details"]["error_code"] == "too_many_concurrent"
            && e["details"]["endpoint"] == "/v1/completions"),
        "{entries:?}"
    );
}
