//! Issue 18, defects 5, 7 and part of 9, against the real binaries: refused
//! peers cannot crowd out allowed clients or flood the audit log, a
//! world-connectable socket is refused unless asked for, the daemon keeps
//! neither inherited descriptors nor the caller's environment, and models
//! are loaded from the bytes whose digest is recorded.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deepseek_tests::{
    Auditor, Daemon, binary, get, is_root, model, model_table, ort_library, run_daemon,
    sandbox_table, shared_tempdir, write_config,
};
use nix::sys::signal::Signal;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// `[server]` keys that let `nobody` reach the socket, so that the allow-list
/// alone refuses it.
const WORLD: &str = "socket_mode = 0o666\nallow_world_connect = true";

/// `peer-client ARGS` as `nobody`.
fn as_nobody(args: &[&str]) -> Command {
    let mut command = Command::new(binary("peer-client"));
    command.args(args).uid(65534).gid(65534);
    command
}

fn denied(entries: &[Value]) -> Vec<&Value> {
    entries
        .iter()
        .filter(|e| e["event"] == "denied_peer")
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_peers_holding_connections_do_not_starve_an_allowed_client() {
    if !is_root() {
        eprintln!("skipped: connecting as another uid needs root");
        return;
    }
    let d = Daemon::start(
        &format!("{WORLD}\nmax_connections = 4"),
        &model_table("demo", "demo.onnx", ""),
    );
    let socket = d.socket.to_str().expect("utf8");
    // Sixteen times the connection limit, connected before the allowed
    // client and never sending a byte: each held a slot until the 30 s
    // header timeout when the allow-list was checked per request.
    let mut holder = as_nobody(&["--hold", "64", socket])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("peer-client --hold");
    let mut line = String::new();
    BufReader::new(holder.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "connected 64");
    let live = tokio::time::timeout(Duration::from_secs(20), get(&d.socket, "/v2/health/live"))
        .await
        .expect("the allowed client is served while refused peers hold their connections")
        .expect("request");
    assert_eq!(live.status, 200);
    drop(holder.stdin.take());
    holder.wait().expect("holder exits");
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_requests_leave_few_small_records_with_a_suppressed_count() {
    if !is_root() {
        eprintln!("skipped: connecting as another uid needs root");
        return;
    }
    let d = Daemon::start(
        &format!("{WORLD}\ndenied_peer_interval_secs = 1"),
        &model_table("demo", "demo.onnx", ""),
    );
    let socket = d.socket.to_str().expect("utf8");
    let long_path = format!("/v2/{}", "a".repeat(60_000));
    let refusals = 100;
    let started = Instant::now();
    let output = as_nobody(&["--repeat", &refusals.to_string(), socket, &long_path])
        .output()
        .expect("peer-client --repeat");
    let elapsed = started.elapsed();
    let statuses = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        statuses.lines().filter(|l| *l == "403").count(),
        refusals,
        "{statuses}"
    );
    // Once the interval has passed, the next refusal is recorded with the
    // count of those left out since the previous record.
    std::thread::sleep(Duration::from_millis(1200));
    let last = as_nobody(&[socket, "/v2/health/live"])
        .output()
        .expect("peer-client");
    assert!(String::from_utf8_lossy(&last.stdout).starts_with("403\n"));
    let auditor = d.auditor.as_ref().expect("auditor");
    let deadline = Instant::now() + Duration::from_secs(60);
    let counted = |entries: &[Value]| -> u64 {
        denied(entries)
            .iter()
            .map(|e| {
                1 + e["details"]["suppressed"]
                    .as_str()
                    .and_then(|n| n.parse::<u64>().ok())
                    .expect("suppressed count")
            })
            .sum()
    };
    let mut entries = auditor.entries();
    while counted(&entries) < refusals as u64 + 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        entries = auditor.entries();
    }
    let records = denied(&entries);
    assert_eq!(counted(&entries), refusals as u64 + 1, "{records:?}");
    // One per interval (1 s) at most, plus the first and the last.
    assert!(
        records.len() as u64 <= elapsed.as_secs() + 3,
        "{} records in {elapsed:?}",
        records.len()
    );
    for record in &records {
        let size = serde_json::to_string(record).expect("json").len();
        assert!(size < 1024, "{size} bytes: {record}");
        assert!(record["details"].get("path").is_none(), "{record}");
        assert_eq!(record["peer"]["uid"], 65534);
    }
}

#[test]
fn a_world_connectable_socket_is_refused_unless_allowed() {
    let models = model_table("demo", "demo.onnx", "");
    // A configuration in `dir`, its socket `dir/d.sock`.
    let config_in = |dir: &Path, server_extra: &str| {
        write_config(
            dir,
            &dir.join("d.sock"),
            &ort_library(),
            server_extra,
            "",
            &models,
        )
    };
    let dir = shared_tempdir();
    let socket = dir.path().join("d.sock");
    let config = config_in(dir.path(), "socket_mode = 0o777");
    let check = |config: &Path| {
        run_daemon(
            &["--config", config.to_str().expect("utf8"), "check-config"],
            Duration::from_secs(30),
        )
    };
    let (code, stderr) = check(&config);
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains("server.socket_mode: 0o777 lets every local user connect")
            && stderr.contains("server.allow_world_connect = true"),
        "{stderr}"
    );
    // Starting refuses it the same way, before anything is opened.
    let (code, stderr) = run_daemon(
        &["--config", config.to_str().expect("utf8")],
        Duration::from_secs(30),
    );
    assert_eq!(code, 78, "{stderr}");
    assert!(!socket.exists());
    let allowed = shared_tempdir();
    let config = config_in(
        allowed.path(),
        "socket_mode = 0o777\nallow_world_connect = true",
    );
    let (code, stderr) = check(&config);
    assert_eq!(code, 0, "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn inherited_descriptors_and_variables_are_gone_after_lockdown() {
    let outside = tempfile::tempdir().expect("tempdir");
    let secret = outside.path().join("inherited.txt");
    std::fs::write(&secret, "not the daemon's").expect("write");
    let script = format!(
        "exec 7<'{}'; exec env DEEPSEEK_TEST_JUNK=1 CUDA_INJECTION64_PATH=/nonexistent \"$0\" \"$@\"",
        secret.display()
    );
    let d = Daemon::spawn_wrapped(
        "",
        "",
        "",
        &model_table("demo", "demo.onnx", ""),
        &["bash", "-c", &script],
    );
    d.wait_ready();
    let targets: Vec<_> = std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .expect("fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .collect();
    assert!(
        !targets.iter().any(|t| t == &secret),
        "the inherited descriptor is still open: {targets:?}"
    );
    // fd 7, and whatever else the test runner left inheritable.
    assert!(
        d.log().lines().any(
            |l| l.contains("closed file descriptors inherited from the caller")
                && (l.contains("[7") || l.contains(" 7,") || l.contains(" 7]"))
        ),
        "{}",
        d.log()
    );
    let hardening = get(&d.socket, "/v2/health/hardening")
        .await
        .expect("hardening")
        .json();
    let kept: Vec<&str> = hardening["lockdown"]["environment"]
        .as_array()
        .expect("environment reported")
        .iter()
        .map(|v| v.as_str().expect("name"))
        .collect();
    assert!(kept.contains(&"ORT_DISABLE_TELEMETRY"), "{kept:?}");
    for name in &kept {
        assert!(
            deepseekd::sandbox::inherited::KEPT_VARIABLES.contains(name),
            "{name} kept: {kept:?}"
        );
    }
}

/// A configuration without an integrity database, recording with `auditor`.
fn unverified_config(dir: &Path, auditor: &Auditor, models: &str) -> std::path::PathBuf {
    let config = dir.join("deepseekd.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nsocket = \"{}\"\nallowed_groups = []\nallowed_uids = [{}]\n\n{}\n[integrity]\nenforce = false\n\n{}\n[runtime]\nlibrary = \"{}\"\n\n{models}",
            dir.join("d.sock").display(),
            nix::unistd::Uid::current(),
            sandbox_table(""),
            auditor.table(),
            ort_library().display()
        ),
    )
    .expect("config");
    config
}

#[test]
fn model_load_records_the_digest_of_the_bytes_loaded() {
    let dir = shared_tempdir();
    let auditor = Auditor::start(&dir.path().join("audit"));
    let config = unverified_config(dir.path(), &auditor, &model_table("demo", "demo.onnx", ""));
    let socket = dir.path().join("d.sock");
    let mut d = Daemon::spawn_with_config(dir, socket, config, &[]);
    d.auditor = Some(auditor);
    d.wait_ready();
    let expected = deepseek_integrity::digest::hex(&Sha256::digest(
        std::fs::read(model("demo.onnx")).expect("model"),
    ));
    let entries = d.auditor.as_ref().expect("auditor").entries();
    let load = entries
        .iter()
        .find(|e| e["event"] == "model_load")
        .expect("model_load recorded");
    // No database to copy it from: it can only come from the loaded bytes.
    assert_eq!(load["model_sha256"], expected.as_str(), "{load}");
}

#[test]
fn a_model_in_a_shared_directory_is_opened_once_after_the_preflight() {
    // fixtures/models holds several models: before, this one was verified
    // with the others and then opened again by path, once per session.
    let Some(mut d) = Daemon::start_traced(
        "open,openat",
        &model_table("demo", "demo.onnx", "sessions = 2"),
    ) else {
        return;
    };
    d.signal_daemon_under_wrapper(Signal::SIGTERM);
    let onnx = format!("\"{}\"", model("demo.onnx").display());
    let calls = d.trace_after_exit();
    let opens: Vec<&str> = calls
        .lines()
        .filter(|l| l.contains(&onnx) && !l.contains("= -1"))
        .collect();
    // The preflight's readability check before the lockdown, then the one
    // read whose bytes are hashed and handed to ONNX Runtime.
    assert_eq!(opens.len(), 2, "{}", opens.join("\n"));
}

#[test]
fn a_changed_model_in_a_shared_directory_is_refused() {
    let dir = shared_tempdir();
    let models = dir.path().join("models");
    std::fs::create_dir(&models).expect("models");
    for file in ["demo.onnx", "multi.onnx"] {
        std::fs::copy(model(file), models.join(file)).expect("copy");
    }
    let tables = format!(
        "[[model]]\nname = \"demo\"\npath = \"{}\"\n[[model]]\nname = \"multi\"\npath = \"{}\"\n",
        models.join("demo.onnx").display(),
        models.join("multi.onnx").display()
    );
    let config = write_config(
        dir.path(),
        &dir.path().join("d.sock"),
        &ort_library(),
        "",
        "",
        &tables,
    );
    let mut bytes = std::fs::read(models.join("demo.onnx")).expect("read");
    let at = bytes
        .windows(10)
        .position(|w| w == b"y = 2x + 1")
        .expect("doc string");
    bytes[at] = b'z';
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(models.join("demo.onnx"))
        .expect("open");
    file.write_all(&bytes).expect("write");
    drop(file);
    let (code, stderr) = run_daemon(
        &["--config", config.to_str().expect("utf8")],
        Duration::from_secs(30),
    );
    assert_eq!(code, 65, "{stderr}");
    assert!(
        stderr.contains("model \"demo\" failed integrity verification")
            && stderr.contains("the integrity database expects"),
        "{stderr}"
    );
}
