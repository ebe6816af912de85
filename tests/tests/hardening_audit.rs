//! Regression tests for the red-team findings against the audit path: no
//! single request may cut the daemon off from its auditor, the daemon
//! comes back by itself when the auditor does, and the log never claims an
//! answer that was not given.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use deepseek_tests::{
    Auditor, Daemon, get, model_table, ort_library, post_json, shared_tempdir, write_config_audited,
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

fn x(id: &str, rows: usize) -> Value {
    let data: Vec<f32> = (0..rows * 4).map(|i| (i % 97) as f32).collect();
    json!({"id": id, "inputs": [{"name": "x", "shape": [rows, 4], "datatype": "FP32", "data": data}]})
}

/// Polls `check` every 100 ms for up to 60 s: long enough for a slow,
/// shared CI machine, and the condition never depends on a timer racing.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn ready(socket: &std::path::Path) -> bool {
    get(socket, "/v2/health/ready")
        .await
        .is_ok_and(|r| r.status == 200)
}

/// The demo model, audited with `audit_extra` in `[audit]`, ready, with its
/// auditor then paused: records sent from now on stay unread.
fn demo_with_paused_auditor(audit_extra: &str) -> Daemon {
    let d = Daemon::spawn_full("", "", audit_extra, &model_table("demo", "demo.onnx", ""));
    d.wait_ready();
    d.auditor.as_ref().expect("auditor").pause();
    d
}

/// Waits until the daemon is ready again, then sends request `after`.
async fn served_again(d: &Daemon) -> deepseek_tests::Response {
    let socket = d.socket.clone();
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        eventually("ready again", || runtime.block_on(ready(&socket)));
    })
    .await
    .expect("wait");
    post_json(&d.socket, "/v2/models/demo/infer", &x("after", 1)).await
}

fn entries_of<'a>(entries: &'a [Value], event: &str) -> Vec<&'a Value> {
    entries.iter().filter(|e| e["event"] == event).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_megabyte_kserve_id_is_recorded_cut_and_later_requests_are_served() {
    let mut d = Daemon::start("", &model_table("demo", "demo.onnx", ""));
    let long_id = "i".repeat(1_100_000);
    let first = post_json(&d.socket, "/v2/models/demo/infer", &x(&long_id, 1)).await;
    assert_eq!(first.status, 200, "{}", first.error());
    // Before the fix the 1.1 MB id broke the auditor's connection for good.
    let second = post_json(&d.socket, "/v2/models/demo/infer", &x("after", 1)).await;
    assert_eq!(second.status, 200, "{}", second.error());
    assert!(ready(&d.socket).await);
    d.signal(Signal::SIGTERM);
    d.wait_exit(Duration::from_secs(10));
    let entries = d.auditor.as_ref().expect("auditor").entries();
    let requests = entries_of(&entries, "request");
    let recorded = requests[0]["request_id"].as_str().expect("id");
    assert_eq!(
        recorded,
        format!("{}[truncated at 1024 of 1100000 bytes]", "i".repeat(1024))
    );
    assert_eq!(requests[1]["request_id"], "after");
}

#[tokio::test(flavor = "multi_thread")]
async fn recorded_content_is_cut_at_64_kib_whatever_the_answer() {
    let mut d = Daemon::start_recording_content(&model_table("demo", "demo.onnx", ""));
    // 80,000 rows: an answer of about 1.3 MB, which broke the connection.
    let big = post_json(&d.socket, "/v2/models/demo/infer", &x("big", 80_000)).await;
    assert_eq!(big.status, 200, "{}", big.error());
    assert!(big.body.len() > 1 << 20, "{} bytes", big.body.len());
    let next = post_json(&d.socket, "/v2/models/demo/infer", &x("next", 1)).await;
    assert_eq!(next.status, 200, "{}", next.error());
    d.signal(Signal::SIGTERM);
    d.wait_exit(Duration::from_secs(10));
    let entries = d.auditor.as_ref().expect("auditor").entries();
    let request = entries_of(&entries, "request")[0].clone();
    let response = request["content"]["response"].as_str().expect("response");
    let note = format!("[truncated at 65536 of {} bytes]", big.body.len());
    assert!(response.ends_with(&note), "{}", &response[65_000..]);
    assert_eq!(response.len(), 65_536 + note.len());
    let request_content = request["content"]["request"].as_str().expect("request");
    assert!(
        request_content.len() <= 65_536 + 64,
        "{}",
        request_content.len()
    );
}

/// Writes one frame and reads the auditor's reply to it.
fn exchange(stream: &mut UnixStream, frame: &[u8]) -> Value {
    let length = u32::try_from(frame.len()).expect("length").to_be_bytes();
    stream.write_all(&length).expect("length");
    stream.write_all(frame).expect("frame");
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).expect("reply length");
    let mut reply = vec![0u8; u32::from_be_bytes(length) as usize];
    stream.read_exact(&mut reply).expect("reply");
    serde_json::from_slice(&reply).expect("reply json")
}

#[test]
fn the_auditor_answers_oversized_and_malformed_records_and_keeps_the_connection() {
    let dir = shared_tempdir();
    let auditor = Auditor::start(&dir.path().join("audit"));
    let mut stream = UnixStream::connect(&auditor.socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut oversized =
        br#"{"tag":7,"entry":{"seq":0,"time_ns":0,"event":"shutdown","details":{"x":""#.to_vec();
    oversized.resize((1 << 20) + 100, b'x');
    oversized.extend_from_slice(br#""}}}"#);
    let reply = exchange(&mut stream, &oversized);
    assert_eq!(reply["tag"], 7);
    assert_eq!(
        reply["error"],
        format!(
            "record of {} bytes over max_frame_bytes = 1048576",
            oversized.len()
        )
    );
    let reply = exchange(&mut stream, br#"{"tag":8,"entry":42}"#);
    assert_eq!(reply["tag"], 8);
    assert!(
        reply["error"]
            .as_str()
            .expect("error")
            .starts_with("malformed record: "),
        "{reply}"
    );
    let reply = exchange(&mut stream, b"not json");
    assert_eq!(reply["tag"], 0);
    // Events only the service writes are not a client's to claim.
    for event in ["low_space", "torn_tail_removed"] {
        let record = format!(r#"{{"tag":5,"entry":{{"seq":0,"time_ns":0,"event":"{event}"}}}}"#);
        let reply = exchange(&mut stream, record.as_bytes());
        assert_eq!(
            reply["error"],
            format!("{event} entries are written by the audit service only"),
            "{reply}"
        );
    }
    // The same connection still records.
    let reply = exchange(
        &mut stream,
        br#"{"tag":9,"entry":{"seq":0,"time_ns":0,"event":"shutdown"}}"#,
    );
    assert_eq!(reply, json!({"tag": 9, "seq": 0}));
    assert_eq!(auditor.entries().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_reconnects_when_the_auditor_restarts_and_records_the_gap() {
    let mut d = Daemon::start("", &model_table("demo", "demo.onnx", ""));
    let ok = post_json(&d.socket, "/v2/models/demo/infer", &x("before", 1)).await;
    assert_eq!(ok.status, 200, "{}", ok.error());
    if deepseek_tests::is_root() {
        // The auditor's socket (root's, 0755) is not writable by `nobody`:
        // said at start, while it can still be fixed.
        assert!(
            d.log()
                .contains("audit.socket is not writable by sandbox.user"),
            "{}",
            d.log()
        );
    }
    let auditor = d.auditor.as_mut().expect("auditor");
    auditor.stop(Signal::SIGTERM);
    let refused = post_json(&d.socket, "/v2/models/demo/infer", &x("meanwhile", 1)).await;
    assert_eq!(refused.status, 503, "{}", refused.error());
    assert!(!ready(&d.socket).await);
    auditor.spawn();
    // The daemon reconnects as the user it switched to (nobody, as root).
    std::fs::set_permissions(&auditor.socket, std::fs::Permissions::from_mode(0o666))
        .expect("chmod");
    let after = served_again(&d).await;
    assert_eq!(after.status, 200, "{}", after.error());
    d.signal(Signal::SIGTERM);
    d.wait_exit(Duration::from_secs(10));
    let auditor = d.auditor.as_ref().expect("auditor");
    let entries = auditor.entries();
    let reconnected = entries_of(&entries, "audit_reconnected");
    assert_eq!(reconnected.len(), 1, "{entries:#?}");
    let refused: u64 = reconnected[0]["details"]["refused"]
        .as_str()
        .expect("refused")
        .parse()
        .expect("number");
    assert!(refused >= 1, "{}", reconnected[0]);
    let ids: Vec<&str> = entries_of(&entries, "request")
        .iter()
        .filter_map(|e| e["request_id"].as_str())
        .collect();
    assert!(ids.contains(&"after"), "{ids:?}");
    let (code, output) = auditor.verify();
    assert_eq!(code, 0, "{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn records_acknowledged_after_their_clients_were_refused_are_each_corrected_once() {
    let d = demo_with_paused_auditor("timeout_ms = 200");
    let auditor = d.auditor.as_ref().expect("auditor");
    // The auditor cannot answer while stopped: every timeout fires. 200
    // requests, 20 at a time, pile up behind each other.
    let mut refused = Vec::new();
    for wave in 0..10 {
        let requests: Vec<_> = (0..20)
            .map(|i| {
                let socket = d.socket.clone();
                tokio::spawn(async move {
                    post_json(
                        &socket,
                        "/v2/models/demo/infer",
                        &x(&format!("late-{wave}-{i}"), 1),
                    )
                    .await
                    .status
                })
            })
            .collect();
        for request in requests {
            refused.push(request.await.expect("request"));
        }
    }
    let not_ready = !ready(&d.socket).await;
    auditor.signal(Signal::SIGCONT);
    assert!(refused.iter().all(|s| *s == 503), "{refused:?}");
    assert!(not_ready, "a stalled auditor makes the daemon unready");
    let late = |entries: &[Value]| -> usize {
        entries
            .iter()
            .filter(|e| e["event"] == "request" && e["status"] == 200)
            .count()
    };
    eventually("every late record corrected", || {
        let entries = auditor.entries();
        late(&entries) == 200 && entries_of(&entries, "undelivered").len() >= 200
    });
    let entries = auditor.entries();
    let mut corrected: Vec<String> = entries_of(&entries, "undelivered")
        .iter()
        .map(|u| {
            assert_eq!(u["status"], 503);
            u["details"]["refers_to_seq"]
                .as_str()
                .expect("refers_to_seq")
                .to_owned()
        })
        .collect();
    corrected.sort();
    let mut claimed: Vec<String> = entries
        .iter()
        .filter(|e| e["event"] == "request" && e["status"] == 200)
        .map(|e| e["seq"].to_string())
        .collect();
    claimed.sort();
    assert_eq!(corrected, claimed, "each claim corrected exactly once");
    let request = entries
        .iter()
        .find(|e| e["event"] == "request" && e["request_id"] == "late-0-0")
        .expect("a late record");
    let undelivered = entries_of(&entries, "undelivered")
        .into_iter()
        .find(|u| {
            u["details"]["refers_to_seq"]
                .as_str()
                .and_then(|s| s.parse::<u64>().ok())
                == request["seq"].as_u64()
        })
        .expect("its correction");
    assert_eq!(undelivered["request_id"], "late-0-0");
    assert_eq!(undelivered["request_sha256"], request["request_sha256"]);
    assert!(undelivered["seq"].as_u64() > request["seq"].as_u64());
    let after = served_again(&d).await;
    assert_eq!(after.status, 200, "{}", after.error());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_waits_for_an_auditor_that_is_not_ready_yet() {
    let dir = shared_tempdir();
    let auditor = Auditor::start(&dir.path().join("audit"));
    // Stopped: connections wait in its backlog, as while it verifies a
    // long log.
    auditor.pause();
    let socket = dir.path().join("deepseekd.sock");
    let models = model_table("demo", "demo.onnx", "");
    let config = write_config_audited(
        dir.path(),
        &socket,
        &ort_library(),
        "",
        "",
        &models,
        &format!("{}timeout_ms = 100\n", auditor.table()),
    );
    let d = Daemon::spawn_with_config(dir, socket, config, &[]);
    eventually("the start record is sent", || {
        d.log().contains("recording the start")
    });
    // Ten times the per-request timeout: the daemon used to exit here.
    std::thread::sleep(Duration::from_secs(1));
    auditor.signal(Signal::SIGCONT);
    d.wait_ready();
    let ok = post_json(&d.socket, "/v2/models/demo/infer", &x("first", 1)).await;
    assert_eq!(ok.status, 200, "{}", ok.error());
    assert_eq!(entries_of(&auditor.entries(), "start").len(), 1);
}

#[test]
fn the_auditor_listens_only_once_its_log_is_verified() {
    let dir = shared_tempdir();
    let mut auditor = Auditor::start(&dir.path().join("audit"));
    let mut stream = UnixStream::connect(&auditor.socket).expect("connect");
    let reply = exchange(
        &mut stream,
        br#"{"tag":1,"entry":{"seq":0,"time_ns":0,"event":"shutdown"}}"#,
    );
    assert_eq!(reply["seq"], 0);
    drop(stream);
    auditor.stop(Signal::SIGTERM);
    // An edited entry: the log no longer verifies against its checkpoint.
    let entries = auditor.log_dir.join("entries.log");
    let text = std::fs::read_to_string(&entries).expect("entries");
    std::fs::write(&entries, text.replace("shutdown", "start")).expect("tamper");
    std::fs::remove_file(&auditor.socket).expect("remove the old socket");
    let output = std::process::Command::new(deepseek_tests::binary("deepseek-audit"))
        .arg("--config")
        .arg(&auditor.config)
        .arg("serve")
        .output()
        .expect("deepseek-audit serve");
    assert_eq!(
        output.status.code(),
        Some(74),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !auditor.socket.exists(),
        "a client could have connected to an auditor that was never going to record"
    );
}

/// Bytes waiting unread on the auditor's side of its connections: a record
/// the daemon sent to an auditor that cannot read it (stopped).
fn unread_by_auditor(socket: &std::path::Path) -> u64 {
    let out = std::process::Command::new("ss")
        .args(["-x", "-n"])
        .output()
        .expect("ss (iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&*socket.to_string_lossy()))
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_whose_client_left_while_it_was_recorded_is_marked_undelivered() {
    let d = demo_with_paused_auditor("timeout_ms = 600000");
    let auditor = d.auditor.as_ref().expect("auditor");
    let body = serde_json::to_vec(&x("gone", 1)).expect("json");
    let mut client = UnixStream::connect(&d.socket).expect("connect");
    write!(
        client,
        "POST /v2/models/demo/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .expect("head");
    client.write_all(&body).expect("body");
    // The inference ran and its record is on its way to the stopped
    // auditor: the client leaves before the acknowledgement.
    eventually("the record waits for the auditor", || {
        unread_by_auditor(&auditor.socket) > 0
    });
    drop(client);
    auditor.signal(Signal::SIGCONT);
    eventually("an undelivered entry", || {
        !entries_of(&auditor.entries(), "undelivered").is_empty()
    });
    let entries = auditor.entries();
    let request = entries
        .iter()
        .find(|e| e["event"] == "request" && e["request_id"] == "gone")
        .expect("the record");
    assert_eq!(request["status"], 200);
    let undelivered = entries_of(&entries, "undelivered")[0];
    assert_eq!(undelivered["status"], 499);
    assert_eq!(undelivered["request_id"], "gone");
    assert_eq!(
        undelivered["details"]["refers_to_seq"],
        request["seq"].to_string()
    );
}

#[test]
fn refused_peers_are_logged_at_most_once_a_second() {
    use std::os::unix::process::CommandExt;
    if !deepseek_tests::is_root() {
        eprintln!("skipped: connecting as another uid needs root");
        return;
    }
    let dir = shared_tempdir();
    let auditor = Auditor::start(&dir.path().join("audit"));
    std::fs::set_permissions(&auditor.socket, std::fs::Permissions::from_mode(0o666))
        .expect("chmod");
    let started = Instant::now();
    // uid 4242 is not in the auditor's allow-list: 200 connections.
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            "import socket, sys\nfor _ in range(200):\n    s = socket.socket(socket.AF_UNIX)\n    s.connect(sys.argv[1])\n    s.recv(1)\n    s.close()\n",
        ])
        .arg(&auditor.socket)
        .uid(4242)
        .gid(4242)
        .status()
        .expect("python3");
    assert!(status.success());
    let elapsed = started.elapsed();
    let log = std::fs::read_to_string(auditor.dir.join("audit.stderr")).expect("stderr");
    let lines = log.matches("refused peer uid=4242").count() as u64;
    assert!(lines >= 1, "{log}");
    assert!(
        lines <= elapsed.as_secs() + 2,
        "{lines} lines in {elapsed:?}:\n{log}"
    );
}
