//! Metrics for Prometheus: deepseekd's `GET /metrics`, the audit service's
//! `metrics_file` and `deepseek-audit metrics` putting both in one file,
//! checked with Debian's `promtool check metrics` and read by Debian's
//! `prometheus-node-exporter` through its textfile collector.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deepseek_tests::{
    Auditor, Daemon, binary, get, llm_fixture, llm_table, metric, model_table, post_json,
    prometheus_tool, shared_tempdir,
};
use serde_json::json;

/// `promtool check metrics` on `text`: its exit status and what it said.
fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new(prometheus_tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let output = child.wait_with_output().expect("promtool");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

fn assert_lints_clean(what: &str, text: &str) {
    let (ok, said) = promtool(text);
    assert!(
        ok && said.trim().is_empty(),
        "promtool on {what}: {said}\n{text}"
    );
}

/// `deepseek-audit metrics` against `daemon_socket`, writing into `dir`.
fn collect(auditor: &Auditor, daemon_socket: &Path, dir: &Path) -> (Option<i32>, String) {
    let output = Command::new(binary("deepseek-audit"))
        .arg("--config")
        .arg(&auditor.config)
        .arg("metrics")
        .arg("--daemon-socket")
        .arg(daemon_socket)
        .arg("--textfile-dir")
        .arg(dir)
        .output()
        .expect("deepseek-audit metrics");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Polls `check` until it holds, for at most a minute (what it waits for
/// is written every second).
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET path` on 127.0.0.1:`port` (node_exporter): the body.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    (head.split(' ').nth(1) == Some("200")).then(|| body.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn node_exporter_reads_what_the_daemon_and_the_auditor_count() {
    let models = format!(
        "{}{}",
        model_table("demo", "demo.onnx", ""),
        llm_table("lm", &llm_fixture(), "")
    );
    let d = Daemon::start("", &models);
    let x = json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]});
    assert_eq!(
        post_json(&d.socket, "/v2/models/demo/infer", &x)
            .await
            .status,
        200
    );
    let bad = json!({"inputs": []});
    assert_eq!(
        post_json(&d.socket, "/v2/models/demo/infer", &bad)
            .await
            .status,
        400
    );
    for stream in [false, true] {
        let chat = json!({"model": "lm", "messages": [{"role": "user", "content": "hi"}],
                          "max_tokens": 4, "stream": stream});
        assert_eq!(
            post_json(&d.socket, "/v1/chat/completions", &chat)
                .await
                .status,
            200
        );
    }

    let own = get(&d.socket, "/metrics").await.expect("GET /metrics");
    assert_eq!(own.status, 200);
    assert_eq!(
        own.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let own = String::from_utf8(own.body.to_vec()).expect("UTF-8");
    assert_lints_clean("deepseekd's /metrics", &own);
    for (series, value) in [
        (
            "deepseekd_requests_total{model=\"demo\",protocol=\"kserve\",status=\"200\"}",
            1.0,
        ),
        (
            "deepseekd_requests_total{model=\"demo\",protocol=\"kserve\",status=\"400\"}",
            1.0,
        ),
        (
            "deepseekd_requests_total{model=\"lm\",protocol=\"openai\",status=\"200\"}",
            2.0,
        ),
        (
            "deepseekd_request_duration_seconds_count{model=\"lm\",protocol=\"openai\"}",
            2.0,
        ),
        (
            "deepseekd_time_to_first_token_seconds_count{model=\"lm\"}",
            2.0,
        ),
        ("deepseekd_admitted_requests{model=\"demo\"}", 0.0),
        ("deepseekd_ready", 1.0),
        ("deepseekd_audit_connected", 1.0),
        ("deepseekd_refusals_total{reason=\"peer\"}", 0.0),
    ] {
        assert_eq!(metric(&own, series), Some(value), "{series} in:\n{own}");
    }
    assert!(
        metric(&own, "deepseekd_prompt_tokens_total{model=\"lm\"}").is_some_and(|t| t > 0.0),
        "{own}"
    );
    // At least the first token of each, at most max_tokens (an EOS may end one early).
    assert!(
        metric(&own, "deepseekd_completion_tokens_total{model=\"lm\"}")
            .is_some_and(|t| (2.0..=8.0).contains(&t)),
        "{own}"
    );
    assert!(
        metric(&own, "deepseekd_audit_append_seconds_count").is_some_and(|c| c >= 4.0),
        "{own}"
    );
    for label in ["uid=", "gid=", "pid="] {
        assert!(
            !own.contains(label),
            "no {label} label in the metrics: {own}"
        );
    }

    let auditor = d.auditor.as_ref().expect("auditor");
    let audit_file = auditor.dir.join("metrics.prom");
    eventually("the auditor's metrics count the requests", || {
        let text = std::fs::read_to_string(&audit_file).unwrap_or_default();
        metric(&text, "deepseek_audit_entries_total{event=\"request\"}") == Some(4.0)
    });
    let audit_text = std::fs::read_to_string(&audit_file).expect("metrics_file");
    assert_lints_clean("the auditor's metrics_file", &audit_text);
    for series in [
        "deepseek_audit_entries_total{event=\"completion\"}",
        "deepseek_audit_log_free_bytes",
        "deepseek_audit_fdatasync_seconds_count",
        "deepseek_audit_last_checkpoint_timestamp_seconds",
    ] {
        assert!(
            metric(&audit_text, series).is_some(),
            "{series} in:\n{audit_text}"
        );
    }
    assert_eq!(metric(&audit_text, "deepseek_audit_low_space"), Some(0.0));

    let textfiles = shared_tempdir();
    let (code, said) = collect(auditor, &d.socket, textfiles.path());
    assert_eq!(code, Some(0), "{said}");
    let read = |name: &str| std::fs::read_to_string(textfiles.path().join(name)).expect(name);
    let daemon_file = read("deepseekd.prom");
    let audit_file = read("deepseek-audit.prom");
    assert_lints_clean("the collected deepseekd.prom", &daemon_file);
    assert_lints_clean("the collected deepseek-audit.prom", &audit_file);
    assert!(
        daemon_file.contains("deepseekd_requests_total"),
        "{daemon_file}"
    );
    assert!(!daemon_file.contains("deepseek_audit_"), "{daemon_file}");
    for source in ["deepseekd", "deepseek-audit"] {
        let series = format!("deepseek_scrape_up{{source=\"{source}\"}}");
        assert_eq!(metric(&audit_file, &series), Some(1.0), "{audit_file}");
    }

    // node_exporter, as Debian ships it, reads the directory.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut exporter = Command::new(prometheus_tool("prometheus-node-exporter"))
        .arg("--collector.disable-defaults")
        .arg("--collector.textfile")
        .arg(format!(
            "--collector.textfile.directory={}",
            textfiles.path().display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus-node-exporter");
    let scrape = || {
        let mut scraped = String::new();
        eventually("node_exporter answers", || {
            scraped = http_get(port, "/metrics").unwrap_or_default();
            !scraped.is_empty()
        });
        scraped
    };
    let scraped = scrape();
    assert_eq!(
        metric(&scraped, "node_textfile_scrape_error"),
        Some(0.0),
        "{scraped}"
    );
    for series in [
        "deepseekd_requests_total{model=\"demo\",protocol=\"kserve\",status=\"200\"}",
        "deepseek_audit_entries_total{event=\"request\"}",
        "deepseek_scrape_up{source=\"deepseekd\"}",
    ] {
        assert!(
            metric(&scraped, series).is_some(),
            "{series} in:\n{scraped}"
        );
    }
    // What a compromised daemon could send past the collector's name
    // filter breaks its own file only: the auditor's metrics stay.
    std::fs::write(
        textfiles.path().join("deepseekd.prom"),
        "deepseekd_x{\ndeepseekd_y 1\n",
    )
    .expect("write");
    let scraped = scrape();
    let _ = exporter.kill();
    let _ = exporter.wait();
    assert_eq!(
        metric(&scraped, "node_textfile_scrape_error"),
        Some(1.0),
        "{scraped}"
    );
    for series in [
        "deepseek_audit_low_space",
        "deepseek_scrape_up{source=\"deepseek-audit\"}",
    ] {
        assert!(
            metric(&scraped, series).is_some(),
            "{series} in:\n{scraped}"
        );
    }

    // The daemon gone: the auditor's file says so, the daemon's is
    // emptied (no stale figures), and the exit status says it too.
    let (code, said) = collect(auditor, &d.dir.path().join("absent.sock"), textfiles.path());
    assert_eq!(code, Some(69), "{said}");
    assert!(said.contains("absent.sock"), "{said}");
    let audit_file = read("deepseek-audit.prom");
    assert_eq!(
        metric(&audit_file, "deepseek_scrape_up{source=\"deepseekd\"}"),
        Some(0.0)
    );
    assert_eq!(read("deepseekd.prom"), "");
    assert_lints_clean("deepseek-audit.prom, the daemon down", &audit_file);
}

#[test]
fn under_the_low_water_mark_the_auditor_records_and_reports_it_once() {
    let dir = shared_tempdir();
    // Above any disk's free space: under it from the start.
    let auditor = Auditor::start_configured(
        dir.path(),
        &dir.path().join("log"),
        1,
        "warn_free_bytes = 9000000000000000000",
    );
    let file = dir.path().join("metrics.prom");
    eventually("the low_space metric", || {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        metric(&text, "deepseek_audit_low_space") == Some(1.0)
    });
    let text = std::fs::read_to_string(&file).expect("metrics");
    assert_eq!(
        metric(&text, "deepseek_audit_entries_total{event=\"low_space\"}"),
        Some(1.0)
    );
    // Several metric intervals later, still one entry: once per crossing.
    eventually("three more metrics writes", || {
        let later = std::fs::read_to_string(&file).unwrap_or_default();
        metric(&later, "deepseek_audit_metrics_timestamp_seconds")
            > metric(&text, "deepseek_audit_metrics_timestamp_seconds").map(|t| t + 3.0)
    });
    let entries = auditor.entries();
    let low: Vec<_> = entries
        .iter()
        .filter(|e| e["event"] == "low_space")
        .collect();
    assert_eq!(low.len(), 1, "{entries:?}");
    assert_eq!(low[0]["details"]["warn_free_bytes"], "9000000000000000000");
    let said = std::fs::read_to_string(dir.path().join("audit.stderr")).expect("stderr");
    assert!(said.contains("under warn_free_bytes"), "{said}");
}
