//! The daemon records every inference with the real auditor before
//! answering, and refuses (503, no result) when the auditor cannot record.

use std::process::Command;
use std::time::Duration;

use deepseek_tests::{
    Auditor, Daemon, is_root, model_table, ort_library, post_json, shared_tempdir,
    write_config_audited,
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn x() -> Value {
    json!({"id": "req-1", "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_is_recorded_with_its_digests_and_the_log_verifies() {
    let mut d = Daemon::start("", &model_table("demo", "demo.onnx", ""));
    let body = serde_json::to_vec(&x()).expect("json");
    let ok = post_json(&d.socket, "/v2/models/demo/infer", &x()).await;
    assert_eq!(ok.status, 200);
    let bad = post_json(&d.socket, "/v2/models/demo/infer", &json!({"inputs": []})).await;
    assert_eq!(bad.status, 400);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(0));
    let log = d.log();
    assert!(
        !log.contains("the connection to the auditor is lost"),
        "a clean shutdown closes the connection without an error: {log}"
    );
    let auditor = d.auditor.as_mut().expect("auditor");
    let entries = auditor.entries();
    let events: Vec<&str> = entries
        .iter()
        .map(|e| e["event"].as_str().expect("event"))
        .collect();
    assert_eq!(
        events,
        ["start", "model_load", "request", "request", "shutdown"],
        "{entries:?}"
    );
    assert_eq!(
        entries[0]["details"]["config_sha256"]
            .as_str()
            .map(str::len),
        Some(64)
    );
    assert_eq!(entries[1]["model"], "demo");
    assert!(
        entries[1]["model_sha256"]
            .as_str()
            .is_some_and(|d| d.len() == 64),
        "{}",
        entries[1]
    );
    let request = &entries[2];
    assert_eq!(request["status"], 200);
    assert_eq!(request["request_id"], "req-1");
    assert_eq!(
        request["request_sha256"],
        format!("{:x}", Sha256::digest(&body))
    );
    assert_eq!(
        request["response_sha256"],
        format!("{:x}", Sha256::digest(&ok.body))
    );
    assert_eq!(request["peer"]["uid"], nix::unistd::Uid::current().as_raw());
    assert!(
        request.get("content").is_none(),
        "no content is recorded by default"
    );
    assert_eq!(entries[3]["status"], 400);
    auditor.stop(Signal::SIGTERM);
    let (code, out) = auditor.verify();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("log verified: 5 entries"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_auditor_requests_get_503_and_no_result() {
    let mut d = Daemon::start("", &model_table("demo", "demo.onnx", ""));
    d.auditor.as_mut().expect("auditor").stop(Signal::SIGKILL);
    let refused = post_json(&d.socket, "/v2/models/demo/infer", &x()).await;
    assert_eq!(refused.status, 503);
    assert!(
        refused
            .error()
            .starts_with("the audit log did not record this request"),
        "{}",
        refused.error()
    );
    assert!(
        refused.json().get("outputs").is_none(),
        "no result leaves the daemon"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_audit_disk_full_the_auditor_stops_and_requests_get_503() {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs for the audit log needs root");
        return;
    }
    let dir = shared_tempdir();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).expect("dir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&small)
        .status();
    if !mounted.is_ok_and(|s| s.success()) {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    let mut auditor = Auditor::start_with(&dir.path().join("audit"), &small, 1 << 20);
    let socket = dir.path().join("d.sock");
    let config = write_config_audited(
        dir.path(),
        &socket,
        &ort_library(),
        "",
        "",
        &model_table("demo", "demo.onnx", ""),
        &auditor.table(),
    );
    let d = Daemon::spawn_with_config(dir, socket, config, &[]);
    d.wait_ready();
    assert_eq!(
        post_json(&d.socket, "/v2/models/demo/infer", &x())
            .await
            .status,
        200,
        "recorded while there is room"
    );
    std::fs::write(small.join("filler"), vec![0u8; 1536 * 1024]).expect("fill the disk");
    let refused = post_json(&d.socket, "/v2/models/demo/infer", &x()).await;
    let auditor_exit = auditor.wait_exit(Duration::from_secs(10));
    let stderr = std::fs::read_to_string(auditor.dir.join("audit.stderr")).unwrap_or_default();
    drop(d);
    drop(auditor);
    let _ = Command::new("umount").arg(&small).status();
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert!(refused.json().get("outputs").is_none());
    assert_eq!(auditor_exit, Some(74), "the auditor stops: {stderr}");
    assert!(
        stderr.contains("under min_free_bytes = 1048576: stopped accepting records"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn content_is_recorded_only_when_asked_and_the_log_directory_is_private() {
    let mut d = Daemon::start_recording_content(&model_table("demo", "demo.onnx", ""));
    let ok = post_json(&d.socket, "/v2/models/demo/infer", &x()).await;
    assert_eq!(ok.status, 200);
    d.signal(Signal::SIGTERM);
    d.wait_exit(Duration::from_secs(10));
    let auditor = d.auditor.as_ref().expect("auditor");
    let entries = auditor.entries();
    let request = entries
        .iter()
        .find(|e| e["event"] == "request")
        .expect("request entry");
    assert_eq!(
        request["content"]["request"],
        serde_json::to_string(&x()).expect("json")
    );
    assert_eq!(
        request["content"]["response"],
        String::from_utf8_lossy(&ok.body).into_owned()
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&auditor.log_dir)
            .expect("log dir")
            .permissions(),
    );
    assert_eq!(
        mode & 0o777,
        0o700,
        "only the auditor's user may enter the log directory"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_start_up_records_are_restated_so_archiving_keeps_the_evidence_live() {
    let dir = shared_tempdir();
    let auditor = Auditor::start(&dir.path().join("audit"));
    let socket = dir.path().join("d.sock");
    let config = write_config_audited(
        dir.path(),
        &socket,
        &ort_library(),
        "",
        "",
        &model_table("demo", "demo.onnx", ""),
        &format!("{}restate_interval_secs = 1\n", auditor.table()),
    );
    let d = Daemon::spawn_with_config(dir, socket, config, &[]);
    d.wait_ready();
    // A second after the start, and every second after: no deadline races
    // the machine, the wait is long.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let entries = loop {
        let entries = auditor.entries();
        let restated = entries
            .iter()
            .filter(|e| e["details"]["restates_seq"].is_string())
            .count();
        if restated >= 2 {
            break entries;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not restated: {entries:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(d);
    let (start, restated_start) = (&entries[0], &entries[2]);
    assert_eq!(start["event"], "start");
    assert_eq!(restated_start["event"], "start", "{entries:?}");
    assert_eq!(restated_start["details"]["restates_seq"], "0");
    let mut details = restated_start["details"].clone();
    details
        .as_object_mut()
        .expect("details")
        .remove("restates_seq");
    assert_eq!(details, start["details"], "the same evidence, said again");
    assert_eq!(entries[3]["event"], "model_load");
    assert_eq!(entries[3]["model_sha256"], entries[1]["model_sha256"]);
    assert_eq!(entries[3]["details"]["restates_seq"], "0");
}
