//! The lockdown, checked against the real kernel: the running daemon's
//! `/proc` view, and probes that apply the daemon's own sandbox code and then
//! try what a compromised daemon would. These need root (the daemon switches
//! to `nobody`, and only root can empty the capability bounding set); without
//! it they skip and say so.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use deepseek_tests::{
    Daemon, binary, get, is_root, model, model_table, ort_library, post_json, shared_tempdir,
    write_config,
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

fn skip_unless_root(test: &str) -> bool {
    if !is_root() {
        eprintln!(
            "skipped {test}: the lockdown switches users and empties the bounding set, which needs root"
        );
    }
    !is_root()
}

/// `/proc/PID/status` as `key -> value` (whitespace collapsed).
fn proc_status(pid: i32) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            Some((
                key.to_owned(),
                value.split_whitespace().collect::<Vec<_>>().join(" "),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kernel_reports_the_running_daemon_locked_down() {
    if skip_unless_root("the_kernel_reports_the_running_daemon_locked_down") {
        return;
    }
    let d = Daemon::start("", &model_table("demo", "demo.onnx", ""));
    let status = proc_status(d.pid());
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status[set], "0000000000000000", "{set}");
    }
    assert_eq!(status["NoNewPrivs"], "1");
    assert_eq!(status["Seccomp"], "2");
    assert_eq!(status["Seccomp_filters"], "3");
    assert_eq!(status["Uid"], "65534 65534 65534 65534");
    assert_eq!(status["Gid"], "65534 65534 65534 65534");
    assert_eq!(status["Groups"], "");
    // Threads made after the lockdown (tokio workers, ONNX Runtime pools)
    // carry it too: every thread's own status says so.
    for task in std::fs::read_dir(format!("/proc/{}/task", d.pid())).expect("tasks") {
        let task = task.expect("task").path();
        let text = std::fs::read_to_string(task.join("status")).expect("task status");
        assert!(
            text.contains("Seccomp:\t2") && text.contains("CapEff:\t0000000000000000"),
            "{}",
            task.display()
        );
    }
    let x = json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]});
    let ok = post_json(&d.socket, "/v2/models/demo/infer", &x).await;
    assert_eq!(
        ok.json()["outputs"][0]["data"],
        json!([3.0, 5.0, 7.0, 9.0]),
        "inference still answers"
    );

    let report = get(&d.socket, "/v2/health/hardening")
        .await
        .expect("hardening")
        .json();
    assert_eq!(report["lockdown"]["enforced"], true);
    let steps: Vec<&str> = report["lockdown"]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["step"].as_str().expect("name"))
        .collect();
    assert_eq!(
        steps,
        [
            "1 prepare",
            "2 switch user",
            "3 no core dumps",
            "4 drop capabilities",
            "5 no_new_privs",
            "6 landlock",
            "7 runtime",
            "8 seccomp",
            "9 verify"
        ]
    );
    assert_eq!(report["lockdown"]["landlock"]["abi"], 6);
    assert_eq!(report["lockdown"]["landlock"]["status"], "fully enforced");
    assert_eq!(report["lockdown"]["seccomp"]["mode"], "enforce");
    assert_eq!(report["kernel"]["cap_bnd"], "0000000000000000");
    assert_eq!(report["kernel"]["seccomp"], "2");
    let log = d.log();
    assert!(
        log.contains("lockdown step=\"6 landlock\" result=ABI 6 fully enforced"),
        "{log}"
    );
}

/// A configuration for the probes: the demo model copied into a directory
/// anyone may write (so that only Landlock can stop the write probe).
fn probe_config(dir: &Path, sandbox_extra: &str) -> std::path::PathBuf {
    let models = dir.join("models");
    std::fs::create_dir(&models).expect("models dir");
    std::fs::set_permissions(&models, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    std::fs::copy(model("demo.onnx"), models.join("demo.onnx")).expect("copy model");
    let table = format!(
        "[[model]]\nname = \"demo\"\npath = \"{}\"\n",
        models.join("demo.onnx").display()
    );
    write_config(
        dir,
        &dir.join("unused.sock"),
        &ort_library(),
        "",
        sandbox_extra,
        &table,
    )
}

/// Runs one probe; returns its printed outcome, or the signal that killed it.
fn probe(config: &Path, name: &str, extra: &[&str]) -> Result<String, i32> {
    let output = Command::new(binary("sandbox-probe"))
        .arg(config)
        .arg(name)
        .args(extra)
        .output()
        .expect("run sandbox-probe");
    match output.status.signal() {
        Some(signal) => Err(signal),
        None => {
            let stdout = String::from_utf8_lossy(&output.stdout);
            Ok(stdout.lines().last().unwrap_or_default().to_owned())
        }
    }
}

#[test]
fn a_compromised_daemon_cannot_reach_files_network_or_privileges() {
    if skip_unless_root("a_compromised_daemon_cannot_reach_files_network_or_privileges") {
        return;
    }
    let dir = shared_tempdir();
    let config = probe_config(dir.path(), "");
    let sigsys = libc_sigsys();
    let expectations: &[(&str, Result<&str, i32>)] = &[
        // Positive controls: what the daemon needs still works.
        ("read-model", Ok("ok")),
        ("unix-socket", Ok("ok")),
        // Landlock: outside the granted paths, even world-readable files.
        ("read-passwd", Ok("denied EACCES: Permission denied")),
        ("read-shadow", Ok("denied EACCES: Permission denied")),
        // Landlock: the model directory is read-only though anyone may write it.
        ("write-model-dir", Ok("denied EACCES: Permission denied")),
        // seccomp: no network socket of any family but AF_UNIX.
        (
            "inet-socket",
            Ok("denied EAFNOSUPPORT: Address family not supported by protocol"),
        ),
        (
            "inet6-socket",
            Ok("denied EAFNOSUPPORT: Address family not supported by protocol"),
        ),
        // seccomp: never a new program, a new process, a debugger or an unlisted syscall.
        ("execve", Err(sigsys)),
        ("spawn", Err(sigsys)),
        ("ptrace", Err(sigsys)),
        // seccomp: no datagram socket to reach /dev/log or other world-writable sockets.
        ("unix-datagram", Err(sigsys)),
        // seccomp: W^X, no memory becomes executable after being writable.
        ("make-exec", Err(sigsys)),
        ("unlisted-syscall", Err(sigsys)),
    ];
    for (name, expected) in expectations {
        let got = probe(&config, name, &[]);
        assert_eq!(got.as_deref().map_err(|s| *s), *expected, "probe {name}");
    }
    assert!(
        !dir.path().join("models/planted").exists(),
        "nothing was written"
    );
}

/// SIGSYS, the signal seccomp kills with.
fn libc_sigsys() -> i32 {
    Signal::SIGSYS as i32
}

#[test]
fn landlock_refuses_tcp_even_when_seccomp_only_logs() {
    if skip_unless_root("landlock_refuses_tcp_even_when_seccomp_only_logs") {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port().to_string();
    let dir = shared_tempdir();
    let config = probe_config(dir.path(), "seccomp = \"log\"");
    // In log mode seccomp lets socket(AF_INET) through; Landlock still
    // refuses the connect.
    assert_eq!(
        probe(&config, "tcp-connect", &[&port]),
        Ok("denied EACCES: Permission denied".to_owned())
    );
    assert!(
        listener.accept().is_err(),
        "no connection reached the listener"
    );
}

#[test]
fn threads_before_and_after_the_lockdown_are_confined() {
    if skip_unless_root("threads_before_and_after_the_lockdown_are_confined") {
        return;
    }
    let dir = shared_tempdir();
    let config = probe_config(dir.path(), "");
    // A thread made before seccomp (as tokio's and ONNX Runtime's are) gets
    // the filter too (TSYNC): its unlisted syscall kills the process.
    assert_eq!(
        probe(&config, "thread-before-seccomp", &[]),
        Err(libc_sigsys())
    );
    // A thread made after the lockdown inherits Landlock.
    assert_eq!(
        probe(&config, "thread-after", &[]),
        Ok("denied EACCES: Permission denied".to_owned())
    );
    // A thread that exists before Landlock would escape it (ABI < 8), so
    // the lockdown refuses to run at all.
    let refused = probe(&config, "thread-before-landlock", &[]).expect("not killed");
    assert_eq!(
        refused,
        "lockdown failed: lockdown step 6 landlock failed: 2 threads exist; Landlock before ABI 8 would not confine the other 1"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn onnx_runtime_never_reaches_for_the_network() {
    // ONNX Runtime's PyPI build carries a telemetry client that, unless
    // ORT_DISABLE_TELEMETRY is set, starts DNS lookups of Microsoft's
    // collector about 9 s after start. Watch the daemon for 12 s.
    let Some(mut d) = Daemon::start_traced(
        "socket,connect,sendto,openat",
        &model_table("demo", "demo.onnx", ""),
    ) else {
        return;
    };
    tokio::time::sleep(Duration::from_secs(12)).await;
    let alive = get(&d.socket, "/v2/health/live")
        .await
        .is_ok_and(|r| r.status == 200);
    if alive {
        d.signal_daemon_under_wrapper(Signal::SIGTERM);
    }
    let calls = d.trace_after_exit();
    let inet: Vec<&str> = calls.lines().filter(|l| l.contains("AF_INET")).collect();
    assert!(
        inet.is_empty(),
        "the daemon tried the network:\n{}",
        inet.join("\n")
    );
    assert!(
        !calls.contains("onnxruntime.db"),
        "ONNX Runtime opened its telemetry database"
    );
    // (Had it tried, seccomp would have killed it: the telemetry client's
    // other syscalls are not in the allow-list.)
    assert!(
        alive,
        "the daemon died:\n{}",
        calls.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unenforced_sandbox_is_logged_loudly_and_reported() {
    let d = Daemon::spawn_sandboxed("", "enforce = false", &model_table("demo", "demo.onnx", ""));
    d.wait_ready();
    assert!(
        d.log()
            .contains("ERROR SANDBOX DISABLED (sandbox.enforce = false)"),
        "{}",
        d.log()
    );
    let report = get(&d.socket, "/v2/health/hardening")
        .await
        .expect("hardening")
        .json();
    assert_eq!(report["lockdown"]["enforced"], false);
    assert_eq!(report["lockdown"]["seccomp"], Value::Null);
    assert_eq!(report["kernel"]["seccomp"], "0");
}

#[test]
fn an_unknown_service_user_is_a_configuration_error() {
    if skip_unless_root("an_unknown_service_user_is_a_configuration_error") {
        return;
    }
    let dir = shared_tempdir();
    let config = write_config(
        dir.path(),
        &dir.path().join("d.sock"),
        &ort_library(),
        "",
        "",
        &model_table("demo", "demo.onnx", ""),
    );
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("user = \"nobody\"", "user = \"no-such-user-7\"");
    std::fs::write(&config, text).expect("config");
    let (code, stderr) = deepseek_tests::run_daemon(
        &["--config", config.to_str().expect("utf8")],
        Duration::from_secs(30),
    );
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains("sandbox.user: user \"no-such-user-7\" does not exist"),
        "{stderr}"
    );
}
