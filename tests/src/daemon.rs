//! The real `deepseekd` binary: started on a temporary socket with a
//! generated configuration (and its own auditor), or run to completion.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::auditor::Auditor;
use crate::client::{get, post_json};
use crate::config::{write_config, write_config_audited};
use crate::fixtures::{binary, ort_library, python, shared_tempdir, workspace};

/// Runs the Python script `tests/python/SCRIPT` (with the venv that has
/// `modules`) on `d`'s socket and `args`; its stdout, once it succeeded.
/// A failure shows its output and the daemon's log.
pub fn run_client_script(d: &Daemon, script: &str, args: &[&str], modules: &[&str]) -> String {
    let output = Command::new(python(modules))
        .arg(workspace().join("tests/python").join(script))
        .arg(&d.socket)
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| panic!("run tests/python/{script}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "tests/python/{script} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}\n--- daemon log\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        d.log()
    );
    stdout
}

/// Writes a configuration with ONNX Runtime at `library` and `models` into
/// `dir`, runs the daemon on it and returns its exit code and stderr: for
/// tests of what makes it refuse to start.
pub fn run_with_models(dir: &Path, library: &Path, models: &str) -> (i32, String) {
    run_configured(dir, library, models, &[])
}

/// [`run_with_models`] for `deepseekd check-config`.
pub fn check_config_with_models(dir: &Path, library: &Path, models: &str) -> (i32, String) {
    run_configured(dir, library, models, &["check-config"])
}

fn run_configured(dir: &Path, library: &Path, models: &str, command: &[&str]) -> (i32, String) {
    let config = write_config(dir, &dir.join("d.sock"), library, "", "", models);
    let mut args = vec!["--config", config.to_str().expect("utf8")];
    args.extend(command);
    run_daemon(&args, Duration::from_secs(30))
}

/// Where [`Daemon::start_traced`] has strace write, in the daemon's directory.
const TRACE: &str = "trace";

/// A running daemon; killed when dropped.
#[derive(Debug)]
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub stderr: PathBuf,
    child: Option<Child>,
    /// The auditor this daemon records with, when the harness started one.
    pub auditor: Option<Auditor>,
}

impl Daemon {
    /// Writes a configuration with `server_extra` in `[server]`, the test
    /// ONNX Runtime library and `models` (from
    /// [`model_table`](crate::model_table)), starts the daemon and waits until
    /// it reports ready.
    pub fn start(server_extra: &str, models: &str) -> Self {
        let daemon = Self::spawn(server_extra, models);
        daemon.wait_ready();
        daemon
    }

    /// Like [`Daemon::start`] but returns at once, ready or not.
    pub fn spawn(server_extra: &str, models: &str) -> Self {
        Self::spawn_sandboxed(server_extra, "", models)
    }

    /// Like [`Daemon::spawn`], with `sandbox_extra` in `[sandbox]`.
    pub fn spawn_sandboxed(server_extra: &str, sandbox_extra: &str, models: &str) -> Self {
        Self::spawn_full(server_extra, sandbox_extra, "", models)
    }

    /// Like [`Daemon::spawn_sandboxed`], with `audit_extra` in `[audit]`.
    pub fn spawn_full(
        server_extra: &str,
        sandbox_extra: &str,
        audit_extra: &str,
        models: &str,
    ) -> Self {
        Self::spawn_wrapped(server_extra, sandbox_extra, audit_extra, models, &[])
    }

    /// Like [`Daemon::spawn_full`], started under `wrapper` (such as `env
    /// VAR=value`; see [`Daemon::spawn_with_config`]).
    pub fn spawn_wrapped(
        server_extra: &str,
        sandbox_extra: &str,
        audit_extra: &str,
        models: &str,
        wrapper: &[&str],
    ) -> Self {
        // Traversable by other uids: the daemon runs as `nobody`, and in
        // the peer test the allow-list, not the directory, must decide.
        let dir = shared_tempdir();
        let socket = dir.path().join("deepseekd.sock");
        let auditor = Auditor::start(&dir.path().join("audit"));
        let config = write_config_audited(
            dir.path(),
            &socket,
            &ort_library(),
            server_extra,
            sandbox_extra,
            models,
            &format!("{}{audit_extra}\n", auditor.table()),
        );
        let mut daemon = Self::spawn_with_config(dir, socket, config, wrapper);
        daemon.auditor = Some(auditor);
        daemon
    }

    /// Like [`Daemon::start`], with `record_content = true` in `[audit]`.
    pub fn start_recording_content(models: &str) -> Self {
        let daemon = Self::spawn_full("", "", "record_content = true", models);
        daemon.wait_ready();
        daemon
    }

    /// Writes a configuration with `models` (see [`write_config`]), starts
    /// the daemon under `strace -f` writing the calls of `syscalls`
    /// (strace's `trace=` list) to a file, and waits until it reports ready;
    /// `None`, the test skipped, where strace is not installed. Stop the
    /// daemon with [`Daemon::signal_daemon_under_wrapper`], then read the
    /// calls with [`Daemon::trace_after_exit`].
    pub fn start_traced(syscalls: &str, models: &str) -> Option<Self> {
        if Command::new("strace").arg("-V").output().is_err() {
            eprintln!("skipped: strace is not installed (apt-get install strace)");
            return None;
        }
        let dir = shared_tempdir();
        let socket = dir.path().join("d.sock");
        let trace = dir.path().join(TRACE).display().to_string();
        let config = write_config(dir.path(), &socket, &ort_library(), "", "", models);
        let daemon = Self::spawn_with_config(
            dir,
            socket,
            config,
            &[
                "strace",
                "-f",
                "-qq",
                "-e",
                &format!("trace={syscalls}"),
                "-o",
                &trace,
            ],
        );
        daemon.wait_ready();
        Some(daemon)
    }

    /// Waits up to 10 s for a daemon from [`Daemon::start_traced`] to exit
    /// and returns the calls strace wrote.
    pub fn trace_after_exit(&mut self) -> String {
        self.wait_exit(Duration::from_secs(10));
        fs::read_to_string(self.dir.path().join(TRACE)).expect("trace")
    }

    /// Starts the daemon on an existing configuration, with extra arguments
    /// placed before `--config`.
    pub fn spawn_with_config(
        dir: tempfile::TempDir,
        socket: PathBuf,
        config: PathBuf,
        wrapper: &[&str],
    ) -> Self {
        let stderr = dir.path().join("stderr.log");
        let log = fs::File::create(&stderr).expect("log file");
        let daemon = binary("deepseekd");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&daemon);
                c
            }
            None => Command::new(&daemon),
        };
        let child = command
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn deepseekd");
        Self {
            dir,
            socket,
            config,
            stderr,
            child: Some(child),
            auditor: None,
        }
    }

    pub fn pid(&self) -> i32 {
        let child = self.child.as_ref().expect("daemon running");
        i32::try_from(child.id()).expect("pid fits")
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        fs::File::open(&self.stderr)
            .and_then(|mut f| f.read_to_string(&mut text))
            .expect("read daemon log");
        text
    }

    /// Polls `/v2/health/ready` for up to 30 s. Runs its own runtime on a
    /// separate thread, so both sync and async tests can call it.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let socket = self.socket.clone();
        let ready = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            while Instant::now() < deadline {
                if runtime
                    .block_on(get(&socket, "/v2/health/ready"))
                    .is_ok_and(|response| response.status == 200)
                {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        })
        .join()
        .expect("readiness poller");
        assert!(
            ready,
            "deepseekd not ready after 30 s; its log:\n{}",
            self.log()
        );
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid()), signal).expect("kill");
    }

    /// Sends `signal` to the daemon started under a wrapper that forks it
    /// (such as strace): the wrapper's child.
    pub fn signal_daemon_under_wrapper(&self, signal: Signal) {
        let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.pid()))
            .expect("children");
        let child: i32 = children
            .split_whitespace()
            .next()
            .and_then(|pid| pid.parse().ok())
            .expect("the wrapper has a child");
        kill(Pid::from_raw(child), signal).expect("kill");
    }

    /// Waits up to `timeout` for the daemon to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("daemon running");
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "deepseekd did not exit within {timeout:?}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the daemon binary to completion (for commands and startup failures)
/// and returns its exit code and stderr.
pub fn run_daemon(args: &[&str], timeout: Duration) -> (i32, String) {
    let mut child = Command::new(binary("deepseekd"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn deepseekd");
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("deepseekd {args:?} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("output");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout),
    )
}

/// POSTs `body` as JSON to the daemon's OpenAI endpoint `path`: the status
/// and the answer's `error` object.
pub async fn openai_error(d: &Daemon, path: &str, body: &Value) -> (u16, Value) {
    let response = post_json(&d.socket, path, body).await;
    (response.status, response.json()["error"].clone())
}

/// Polls `/v1/models/{name}` until `until` holds of it: a state the test
/// itself brings about (the deadline only ends a run that hangs).
pub async fn wait_for_model(d: &Daemon, name: &str, until: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let model = get(&d.socket, &format!("/v1/models/{name}"))
            .await
            .expect("model")
            .json();
        if until(&model) {
            return model;
        }
        assert!(Instant::now() < deadline, "never got there: {model}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
