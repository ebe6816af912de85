//! The daemon's life: the queue, graceful shutdown, socket activation, the
//! peer allow-list, what it holds open, and refusing to start when it cannot
//! run as configured.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use deepseek_tests::{
    Connection, Daemon, binary, get, inet_inodes, is_root, model_table, ort_library, post_json,
    run_daemon, run_with_models, shared_tempdir, socket_inodes, write_config,
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

/// A request that keeps a session of the `slow` model busy for a while.
fn slow_request(iterations: i64) -> Value {
    json!({"inputs": [
        {"name": "iterations", "shape": [], "datatype": "INT64", "data": [iterations]},
        {"name": "x", "shape": [1, 256], "datatype": "FP32", "data": vec![0.01f32; 256]},
    ]})
}

/// Iterations that take at least `at_least` on this machine, measured rather
/// than assumed (the machines' speed varies).
async fn iterations_for(d: &Daemon, at_least: Duration) -> i64 {
    let started = Instant::now();
    let response = post_json(&d.socket, "/v2/models/slow/infer", &slow_request(20_000)).await;
    assert_eq!(response.status, 200);
    let per_iteration = started.elapsed().as_secs_f64() / 20_000.0;
    (at_least.as_secs_f64() / per_iteration).ceil() as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_answers_503_and_recovers() {
    let d = Daemon::start(
        "",
        &model_table(
            "slow",
            "slow.onnx",
            "sessions = 1\nqueue_depth = 1\nintra_op_threads = 1",
        ),
    );
    let iterations = iterations_for(&d, Duration::from_secs(2)).await;
    let socket = d.socket.clone();
    let running = tokio::spawn(async move {
        post_json(&socket, "/v2/models/slow/infer", &slow_request(iterations)).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let socket = d.socket.clone();
    let queued =
        tokio::spawn(
            async move { post_json(&socket, "/v2/models/slow/infer", &slow_request(1)).await },
        );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = post_json(&d.socket, "/v2/models/slow/infer", &slow_request(1)).await;
    assert_eq!(refused.status, 503);
    assert_eq!(
        refused.error(),
        "model \"slow\" is busy: its request queue is full, retry later"
    );
    assert_eq!(running.await.expect("running").status, 200);
    assert_eq!(queued.await.expect("queued").status, 200);
    assert_eq!(
        post_json(&d.socket, "/v2/models/slow/infer", &slow_request(1))
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_in_flight_requests_then_exits_0() {
    let mut d = Daemon::start(
        "",
        &model_table("slow", "slow.onnx", "intra_op_threads = 1"),
    );
    let iterations = iterations_for(&d, Duration::from_secs(2)).await;
    let socket = d.socket.clone();
    let in_flight = tokio::spawn(async move {
        post_json(&socket, "/v2/models/slow/infer", &slow_request(iterations)).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.signal(Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // No longer accepting: the socket file is gone or refuses connections.
    assert!(
        get(&d.socket, "/v2/health/live").await.is_err(),
        "still accepting after SIGTERM"
    );
    let response = in_flight.await.expect("in-flight request");
    assert_eq!(response.status, 200, "in-flight request completed");
    assert_eq!(response.json()["outputs"][0]["shape"], json!([1, 256]));
    let status = d.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "log:\n{}", d.log());
    // The file stays (a sandboxed daemon may not unlink it; the next start
    // replaces it), but nobody answers on it any more.
    assert!(
        get(&d.socket, "/v2/health/live").await.is_err(),
        "still answering after exit"
    );
    let log = d.log();
    assert!(log.contains("shutting down signal=\"SIGTERM\""), "{log}");
    assert!(log.contains("exiting code=0"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn holds_no_inet_socket_only_its_unix_socket() {
    let d = Daemon::start("", &model_table("demo", "demo.onnx", ""));
    let ok = post_json(&d.socket, "/v2/models/demo/infer", &json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})).await;
    assert_eq!(ok.status, 200);
    let held = socket_inodes(d.pid());
    assert!(!held.is_empty(), "the daemon holds its listening socket");
    for table in ["tcp", "tcp6", "udp", "udp6"] {
        let inet = inet_inodes(d.pid(), table);
        let shared: Vec<_> = held.iter().filter(|inode| inet.contains(inode)).collect();
        assert!(shared.is_empty(), "daemon holds {table} sockets {shared:?}");
    }
    let unix = std::fs::read_to_string(format!("/proc/{}/net/unix", d.pid())).expect("net/unix");
    let socket = d.socket.display().to_string();
    assert!(
        unix.lines().any(|l| l.ends_with(&socket)),
        "listening socket {socket} in /proc/net/unix"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_outside_the_allow_list_gets_403_and_is_logged() {
    if !is_root() {
        eprintln!("skipped: connecting as another uid needs root");
        return;
    }
    let d = Daemon::start(
        "socket_mode = 0o666\nallow_world_connect = true",
        &model_table("demo", "demo.onnx", ""),
    );
    let output = Command::new(binary("peer-client"))
        .arg(&d.socket)
        .arg("/v2/health/live")
        // Not nobody: in a container whose user namespace maps only some
        // ids, 65534 is the overflow id, refused for another reason.
        .uid(4242)
        .gid(4242)
        .output()
        .expect("run peer-client as uid 4242");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "peer-client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("403"));
    let body: Value = serde_json::from_str(lines.next().expect("body")).expect("json");
    assert_eq!(
        body["error"],
        "uid 4242 gid 4242 is not allowed to use this socket"
    );
    let log = d.log();
    assert!(
        log.lines()
            .any(|l| l.contains("peer not in the allow-list")
                && l.contains("uid=4242 gid=4242 pid=")),
        "refusal logged with uid, gid and pid:\n{log}"
    );
    // The refusal is in the audit log too, recorded in the background (the
    // refused peer waits for nothing).
    let auditor = d.auditor.as_ref().expect("auditor");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let entries = auditor.entries();
        if entries.iter().any(|e| {
            e["event"] == "denied_peer"
                && e["peer"]["uid"] == 4242
                && e["details"]["reason"] == "not_allowed"
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "{entries:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The daemon's own uid is still served.
    assert_eq!(
        get(&d.socket, "/v2/health/live")
            .await
            .expect("live")
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn takes_its_socket_from_systemd() {
    if Command::new("systemd-socket-activate")
        .arg("--help")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-socket-activate is not installed (apt-get install systemd)");
        return;
    }
    let dir = shared_tempdir();
    let socket = dir.path().join("activated.sock");
    let unused = dir.path().join("unused.sock");
    let config = write_config(
        dir.path(),
        &unused,
        &ort_library(),
        "",
        "",
        &model_table("demo", "demo.onnx", ""),
    );
    let listen = format!("--listen={}", socket.display());
    let mut d =
        Daemon::spawn_with_config(dir, socket, config, &["systemd-socket-activate", &listen]);
    // systemd-socket-activate starts the daemon on the first connection.
    d.wait_ready();
    assert!(
        !unused.exists(),
        "server.socket is ignored when systemd passes one"
    );
    assert!(
        d.log().contains("listening socket inherited from systemd"),
        "{}",
        d.log()
    );
    d.signal(Signal::SIGTERM);
    // A hang detector, not a speed test: on a machine busy with other
    // builds, its exit once took over 10 s.
    assert_eq!(d.wait_exit(Duration::from_secs(30)).code(), Some(0));
}

/// Writes a config with `runtime` and `models` and runs the daemon on it.
fn start_failure(runtime_library: &str, models: &str) -> (i32, String) {
    run_with_models(shared_tempdir().path(), Path::new(runtime_library), models)
}

#[test]
fn refuses_to_start_without_onnx_runtime() {
    let (code, stderr) = start_failure(
        "/nonexistent/libonnxruntime.so.1.31.1",
        &model_table("demo", "demo.onnx", ""),
    );
    assert_eq!(code, 69, "{stderr}");
    assert!(
        stderr.contains("ONNX Runtime library /nonexistent/libonnxruntime.so.1.31.1 (runtime.library) does not exist"),
        "{stderr}"
    );
}

#[test]
fn a_cuda_library_dir_without_the_libraries_exits_69_naming_it() {
    // Before the fix the error was made before ONNX Runtime was loaded, and
    // ort aborted looking for a default library.
    let cuda = shared_tempdir();
    let runtime = format!("cuda_library_dir = \"{}\"\n", cuda.path().display());
    let (code, stderr) = start_failure(
        ort_library().to_str().expect("utf8"),
        &(runtime + &model_table("demo", "demo.onnx", "")),
    );
    assert_eq!(code, 69, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot preload CUDA libraries from {} (runtime.cuda_library_dir)",
            cuda.path().display()
        )),
        "{stderr}"
    );
}

#[test]
fn refuses_an_onnx_runtime_of_another_version() {
    // A stand-in library that reports version 1.20.0 through the real C ABI
    // entry point, compiled here so the check meets a real shared object.
    let dir = shared_tempdir();
    let source = dir.path().join("fake.c");
    std::fs::write(
        &source,
        "static const char* v(void) { return \"1.20.0\"; }\n\
         static const void* api(unsigned x) { (void)x; return 0; }\n\
         struct base { const void* (*get_api)(unsigned); const char* (*version)(void); };\n\
         static const struct base b = { api, v };\n\
         const struct base* OrtGetApiBase(void) { return &b; }\n",
    )
    .expect("source");
    let library = dir.path().join("libonnxruntime.so.1.20.0");
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source)
        .status();
    if !built.is_ok_and(|s| s.success()) {
        eprintln!("skipped: no C compiler to build the stand-in library");
        return;
    }
    let (code, stderr) = start_failure(
        library.to_str().expect("utf8"),
        &model_table("demo", "demo.onnx", ""),
    );
    assert_eq!(code, 69, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "ONNX Runtime library {} (runtime.library) is version 1.20.0, expected 1.31.x",
            library.display()
        )),
        "{stderr}"
    );
}

#[test]
fn refuses_a_model_file_that_is_not_onnx() {
    let dir = shared_tempdir();
    let bad = dir.path().join("bad.onnx");
    std::fs::write(&bad, b"this is not a protobuf").expect("write");
    let models = format!("[[model]]\nname = \"bad\"\npath = \"{}\"\n", bad.display());
    let (code, stderr) = start_failure(ort_library().to_str().expect("utf8"), &models);
    assert_eq!(code, 65, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "model \"bad\": ONNX Runtime cannot load {}",
            bad.display()
        )),
        "{stderr}"
    );
}

#[test]
fn refuses_a_missing_model_file_naming_its_key() {
    let models = "[[model]]\nname = \"gone\"\npath = \"/nonexistent/gone.onnx\"\n";
    let (code, stderr) = start_failure(ort_library().to_str().expect("utf8"), models);
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains("model \"gone\" (model[0].path): cannot read /nonexistent/gone.onnx: No such file or directory"),
        "{stderr}"
    );
}

#[test]
fn cuda_without_the_cuda_provider_fails_unless_fallback_is_allowed() {
    // The CPU build of ONNX Runtime has no CUDA provider, just like a GPU
    // server whose driver is missing: the model must not silently run on CPU.
    let (code, stderr) = start_failure(
        ort_library().to_str().expect("utf8"),
        &model_table("demo", "demo.onnx", "device = \"cuda\""),
    );
    assert_eq!(code, 69, "{stderr}");
    assert!(
        stderr.contains(
            "model \"demo\": the CUDA execution provider could not be registered on device 0"
        ) && stderr.contains("set allow_cpu_fallback = true"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cpu_fallback_is_logged_and_shown_in_the_metadata() {
    let d = Daemon::start(
        "",
        &model_table(
            "demo",
            "demo.onnx",
            "device = \"cuda\"\nallow_cpu_fallback = true",
        ),
    );
    let meta = get(&d.socket, "/v2/models/demo")
        .await
        .expect("metadata")
        .json();
    assert_eq!(meta["parameters"]["requested_device"], "cuda");
    assert_eq!(meta["parameters"]["device"], "cpu");
    assert_eq!(meta["parameters"]["cpu_fallback"], true);
    assert!(
        meta["parameters"]["cpu_fallback_reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    assert!(d.log().contains(
        "CUDA execution provider unavailable; running on the CPU because allow_cpu_fallback = true"
    ));
    let ok = post_json(&d.socket, "/v2/models/demo/infer", &json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})).await;
    assert_eq!(ok.json()["outputs"][1]["data"], json!([24.0]));
}

#[test]
fn refuses_to_replace_a_file_that_is_not_a_socket() {
    let dir = shared_tempdir();
    let path = dir.path().join("d.sock");
    std::fs::write(&path, b"keep me").expect("write");
    let config = write_config(
        dir.path(),
        &path,
        &ort_library(),
        "",
        "",
        &model_table("demo", "demo.onnx", ""),
    );
    let (code, stderr) = run_daemon(
        &["--config", config.to_str().expect("utf8")],
        Duration::from_secs(30),
    );
    assert_eq!(code, 71, "{stderr}");
    assert!(
        stderr.contains("exists and is not a socket; refusing to remove it"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&path).expect("kept"), b"keep me");
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_served_before_every_model_is_loaded_and_locked_down() {
    // `sleepy` takes seconds to warm up. A client that connects meanwhile
    // waits in the listen backlog and is answered only after the lockdown.
    let d = Daemon::spawn("", &model_table("sleepy", "sleepy.onnx", ""));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.socket.exists() {
        assert!(
            Instant::now() < deadline,
            "no socket after 10 s:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ready = get(&d.socket, "/v2/health/ready").await.expect("ready");
    assert_eq!((ready.status, ready.json()), (200, json!({"ready": true})));
    let log = d.log();
    let complete = log.find("lockdown complete; ready").expect("ready logged");
    let answered = log.find("path=/v2/health/ready").expect("request logged");
    assert!(
        complete < answered,
        "a request was answered before the lockdown completed:\n{log}"
    );
}

#[test]
fn a_model_whose_warm_up_fails_is_refused_with_a_hint() {
    // Zeros as the target shape of a reshape cannot work: the warm-up fails.
    let (code, stderr) = start_failure(
        ort_library().to_str().expect("utf8"),
        &model_table("reshape", "reshape.onnx", ""),
    );
    assert_eq!(code, 65, "{stderr}");
    assert!(
        stderr.contains("model \"reshape\": the warm-up run on zero-valued inputs failed")
            && stderr.contains("set warm_up = false in its [[model]] table"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line_without_request_content() {
    let d = Daemon::start(
        "",
        &format!(
            "[log]\nformat = \"json\"\n\n{}",
            model_table("demo", "demo.onnx", "")
        ),
    );
    let secret = 1234.5;
    let x = json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [secret, 0, 0, 0]}]});
    assert_eq!(
        post_json(&d.socket, "/v2/models/demo/infer", &x)
            .await
            .status,
        200
    );
    let log = d.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let request = lines
        .iter()
        .find(|l| l["message"] == "request" && l["path"] == "/v2/models/demo/infer")
        .unwrap_or_else(|| panic!("no access log line:\n{log}"));
    assert_eq!(request["status"], 200);
    assert_eq!(request["level"], "INFO");
    assert!(
        request["uid"].is_u64() && request["pid"].is_u64(),
        "{request}"
    );
    assert!(
        !log.contains("1234.5"),
        "request content must never be logged:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_limit_wait_for_a_free_slot() {
    let d = Daemon::start("max_connections = 1", &model_table("demo", "demo.onnx", ""));
    let mut first = Connection::open(&d.socket).await.expect("first connection");
    let live = first
        .send("GET", "/v2/health/live", &[], Bytes::new())
        .await
        .expect("first request");
    assert_eq!(live.status, 200);
    // The kernel accepts the second connection into the backlog, but the
    // daemon does not serve it while the first holds the only slot.
    let socket = d.socket.clone();
    let second = tokio::spawn(async move { get(&socket, "/v2/health/live").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !second.is_finished(),
        "second connection served beyond max_connections = 1"
    );
    drop(first);
    let response = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("served once the first connection closed")
        .expect("task")
        .expect("request");
    assert_eq!(response.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_is_logged_and_ignored() {
    let mut d = Daemon::start("", &model_table("demo", "demo.onnx", ""));
    d.signal(Signal::SIGHUP);
    // The signal is handled on its own task: wait for its line (however
    // slow the machine), then the daemon must still serve.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d
        .log()
        .contains("SIGHUP ignored: deepseekd does not reload its configuration")
    {
        assert!(
            Instant::now() < deadline,
            "no SIGHUP line within 60 s: {}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        get(&d.socket, "/v2/health/ready")
            .await
            .expect("still serving")
            .status,
        200
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn a_missing_cuda_directory_is_a_configuration_error_naming_its_key() {
    let models = format!(
        "{}\n",
        model_table(
            "demo",
            "demo.onnx",
            "device = \"cuda\"\nallow_cpu_fallback = true"
        )
    );
    let dir = shared_tempdir();
    let config = write_config(
        dir.path(),
        &dir.path().join("d.sock"),
        &ort_library(),
        "",
        "cuda_cache_dir = \"/nonexistent/cuda-cache\"",
        &models,
    );
    let (code, stderr) = run_daemon(
        &["--config", config.to_str().expect("utf8")],
        Duration::from_secs(30),
    );
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains("sandbox.cuda_cache_dir: /nonexistent/cuda-cache is not a directory"),
        "{stderr}"
    );
}

#[test]
fn without_a_reachable_auditor_the_daemon_refuses_to_start() {
    let dir = shared_tempdir();
    let audit = format!(
        "[audit]\nsocket = \"{}\"\n",
        dir.path().join("nobody-listens.sock").display()
    );
    let config = deepseek_tests::write_config_audited(
        dir.path(),
        &dir.path().join("d.sock"),
        &ort_library(),
        "",
        "",
        &model_table("demo", "demo.onnx", ""),
        &audit,
    );
    let (code, stderr) = run_daemon(
        &["--config", config.to_str().expect("utf8")],
        Duration::from_secs(30),
    );
    assert_eq!(code, 69, "{stderr}");
    assert!(
        stderr.contains(
            "cannot reach the auditor (audit.socket); refusing to start while audit.required = true"
        ),
        "{stderr}"
    );
}
