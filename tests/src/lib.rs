//! Test harness: starts the real `deepseekd` binary on a temporary socket
//! with a generated configuration, and talks HTTP/1.1 to it over that socket.
//!
//! Nothing here is mocked: the daemon loads the real ONNX Runtime library
//! (`.ort/cpu`, fetched by `make test`) and the committed fixture models.
#![forbid(unsafe_code)]

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// The workspace root, where `fixtures/` and `.ort/` live.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// A committed fixture model.
pub fn model(name: &str) -> PathBuf {
    workspace().join("fixtures/models").join(name)
}

/// The ONNX Runtime library the tests load: `$DEEPSEEK_TEST_ORT_LIBRARY`, or
/// the one `make test` fetches into `.ort/cpu`.
pub fn ort_library() -> PathBuf {
    let path = std::env::var_os("DEEPSEEK_TEST_ORT_LIBRARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".ort/cpu/libonnxruntime.so.1.31.1"));
    assert!(
        path.exists(),
        "ONNX Runtime library {} is missing: run `make test`, or `packaging/fetch-onnxruntime.sh cpu .ort/cpu`",
        path.display()
    );
    path
}

/// A binary built from this workspace, found next to the test executable
/// (`target/<profile>/deps/..`), so custom target directories work.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace` (make test does)",
        path.display()
    );
    path
}

/// Whether this process may create users' connections and read other
/// processes' /proc entries: the peer tests need root.
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// A `[[model]]` table for the configuration.
pub fn model_table(name: &str, file: &str, extra: &str) -> String {
    format!(
        "[[model]]\nname = \"{name}\"\npath = \"{}\"\n{extra}\n",
        model(file).display()
    )
}

/// The Python of the virtual environment `make test` creates
/// (`$DEEPSEEK_TEST_PYTHON` overrides), checked to import `modules`.
pub fn python(modules: &[&str]) -> PathBuf {
    let path = std::env::var_os("DEEPSEEK_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv/bin/python"));
    assert!(
        path.exists(),
        "{} is missing: run `make test` (it creates .venv with the pinned Python tools)",
        path.display()
    );
    let import = Command::new(&path)
        .args(["-c", &format!("import {}", modules.join(", "))])
        .output()
        .expect("run python");
    assert!(
        import.status.success(),
        "{} cannot import {}: run `make test` (it installs them into .venv)\n{}",
        path.display(),
        modules.join(", "),
        String::from_utf8_lossy(&import.stderr)
    );
    path
}

/// Writes a configuration with ONNX Runtime at `library` and `models` into
/// `dir`, runs the daemon on it and returns its exit code and stderr: for
/// tests of what makes it refuse to start.
pub fn run_with_models(dir: &Path, library: &Path, models: &str) -> (i32, String) {
    let config = write_config(dir, &dir.join("d.sock"), library, "", "", models);
    run_daemon(
        &["--config", config.to_str().expect("utf8")],
        Duration::from_secs(30),
    )
}

/// The committed tiny DeepSeek-R1-style causal LM (fixtures/llm/tiny-r1).
pub fn llm_fixture() -> PathBuf {
    workspace().join("fixtures/llm/tiny-r1")
}

/// `fixtures/llm/tiny-r1/expected.json`: the prompts and the greedy
/// outputs recorded with Python onnxruntime.
pub fn llm_expected() -> Value {
    let bytes = fs::read(llm_fixture().join("expected.json")).expect("expected.json");
    serde_json::from_slice(&bytes).expect("expected.json is JSON")
}

/// Token ids as `expected.json` lists them.
pub fn token_ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| u32::try_from(v.as_u64().expect("id")).expect("u32"))
        .collect()
}

/// A `[[model]]` table serving the directory `dir` as a causal LM named
/// `name` over the OpenAI API, on one intra-op thread (the fixture's steps
/// are tiny; more threads only add scheduling noise).
pub fn llm_table(name: &str, dir: &Path, extra: &str) -> String {
    format!(
        "[[model]]\nname = \"{name}\"\nkind = \"causal-lm\"\npath = \"{}\"\nintra_op_threads = 1\n{extra}\n",
        dir.display()
    )
}

/// A temporary directory other users can traverse and read: the daemon
/// reads models and configurations in it after switching to `nobody`.
pub fn shared_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// The `[sandbox]` table the tests use: the real lockdown, switching to
/// `nobody`, when the tests run as root (as on CI). Without root the daemon
/// cannot empty its capability bounding set, so it runs unconfined, and the
/// tests that check the sandbox itself skip and say so.
pub fn sandbox_table(extra: &str) -> String {
    if is_root() {
        format!("[sandbox]\nuser = \"nobody\"\n{extra}\n")
    } else {
        eprintln!("note: not root, so the daemon under test runs with sandbox.enforce = false");
        format!("[sandbox]\nenforce = false\n{extra}\n")
    }
}

/// Signs an integrity database covering the directories of the models in
/// `tables` (the `[[model]]` tables of a configuration), with a fresh key in
/// `dir`, using the integrity library the daemon itself verifies with.
/// Returns the `[integrity]` table pointing at it.
pub fn integrity_table(dir: &Path, tables: &str) -> String {
    let parsed: toml::Table = toml::from_str(tables).unwrap_or_default();
    let mut model_dirs: Vec<PathBuf> = parsed
        .get("model")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let path = Path::new(m.get("path")?.as_str()?);
            // A causal LM's path is its directory; a tensor model's, its file.
            if m.get("kind").and_then(|k| k.as_str()) == Some("causal-lm") {
                Some(path.to_owned())
            } else {
                Some(path.parent()?.to_owned())
            }
        })
        .collect();
    model_dirs.sort();
    model_dirs.dedup();
    let key_path = dir.join("integrity.key");
    let key = deepseek_integrity::keys::Signer25519::generate(&key_path).expect("integrity key");
    let database = dir.join("integrity.db");
    let rules: String = model_dirs
        .iter()
        .map(|d| format!("[[rule]]\npath = \"{}\"\nrecursive = false\npreset = \"model\"\ndigest = \"sha256\"\n", d.display()))
        .collect();
    let config_text = format!(
        "database = \"{}\"\nsigning_key = \"{}\"\nverifier_key = \"{}\"\n{rules}",
        database.display(),
        key_path.display(),
        key.verifier()
    );
    if !model_dirs.is_empty() {
        let config =
            deepseek_integrity::config::Config::parse(&dir.join("integrity.toml"), &config_text)
                .expect("integrity config");
        let options = deepseek_integrity::scan::Options {
            jobs: 2,
            progress: false,
        };
        let entries = deepseek_integrity::scan::scan(
            &config,
            &options,
            &std::sync::atomic::AtomicBool::new(false),
        )
        .expect("scan models");
        deepseek_integrity::database::store(
            &database,
            &deepseek_integrity::database::encode(&entries, &key),
        )
        .expect("store database");
        fs::write(dir.join("integrity.toml"), &config_text).expect("integrity config");
    }
    format!(
        "[integrity]\ndatabase = \"{}\"\nverifier_key = \"{}\"\n",
        database.display(),
        key.verifier()
    )
}

/// Writes `deepseekd.toml` into `dir`: the socket at `socket`, `library` as
/// ONNX Runtime, `server_extra` inside `[server]` (the test's own uid is
/// allowed), `sandbox_extra` inside `[sandbox]`, an `[integrity]` table with
/// a database signed for the models, then `rest` (tables).
///
/// The daemon is not required to reach an auditor here (these configurations
/// serve startup and lockdown tests); [`Daemon::spawn`] runs a real one.
pub fn write_config(
    dir: &Path,
    socket: &Path,
    library: &Path,
    server_extra: &str,
    sandbox_extra: &str,
    rest: &str,
) -> PathBuf {
    let unaudited = format!(
        "[audit]\nrequired = false\nsocket = \"{}\"\n",
        dir.join("no-auditor.sock").display()
    );
    write_config_audited(
        dir,
        socket,
        library,
        server_extra,
        sandbox_extra,
        rest,
        &unaudited,
    )
}

/// Like [`write_config`], with `audit` as the `[audit]` table.
pub fn write_config_audited(
    dir: &Path,
    socket: &Path,
    library: &Path,
    server_extra: &str,
    sandbox_extra: &str,
    rest: &str,
    audit: &str,
) -> PathBuf {
    let config = dir.join("deepseekd.toml");
    let text = format!(
        "[server]\nsocket = \"{}\"\nallowed_groups = []\nallowed_uids = [{}]\n{server_extra}\n\n{}\n{}\n{audit}\n[runtime]\nlibrary = \"{}\"\n\n{rest}",
        socket.display(),
        nix::unistd::Uid::current(),
        sandbox_table(sandbox_extra),
        integrity_table(dir, rest),
        library.display()
    );
    fs::write(&config, text).expect("write config");
    config
}

/// Where [`Daemon::start_traced`] has strace write, in the daemon's directory.
const TRACE: &str = "trace";

/// A running `deepseek-audit serve` with its own key and log; killed when
/// dropped.
#[derive(Debug)]
pub struct Auditor {
    pub dir: PathBuf,
    pub log_dir: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
}

impl Auditor {
    /// Creates a key and a configuration in `dir` and starts the service
    /// (sealing every 10 entries, and never by the clock, so that what is
    /// sealed never depends on the machine's speed), accepting records from this process's uid (the daemon connects
    /// before it switches users, so the auditor sees the uid it started as)
    /// and, as root, from `nobody`'s (the uid the daemon reconnects as).
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, &dir.join("log"), 1)
    }

    /// Like [`Auditor::start`], with the log in `log_dir` and the service
    /// stopping when its filesystem has less than `min_free_bytes` free.
    pub fn start_with(dir: &Path, log_dir: &Path, min_free_bytes: u64) -> Self {
        fs::create_dir_all(dir).expect("auditor dir");
        let key = dir.join("audit.key");
        let keygen = Command::new(binary("deepseek-audit"))
            .args(["keygen", "--name", "deepseek-audit/test", "--out"])
            .arg(&key)
            .output()
            .expect("deepseek-audit keygen");
        let verifier = String::from_utf8_lossy(&keygen.stdout).trim().to_owned();
        assert!(
            verifier.starts_with("verifier_key = "),
            "keygen: {verifier}"
        );
        let socket = dir.join("audit.sock");
        let config = dir.join("audit.toml");
        fs::write(
            &config,
            format!(
                "socket = \"{}\"\nlog_dir = \"{}\"\nsigning_key = \"{}\"\n{verifier}\nallowed_uids = [{}]\ncheckpoint_every = 10\ncheckpoint_interval_secs = 86400\nmin_free_bytes = {min_free_bytes}\nsyslog = false\n",
                socket.display(),
                log_dir.display(),
                key.display(),
                // The daemon under test connects first as this uid, and
                // reconnects as the one it switched to (`nobody`).
                if is_root() {
                    format!("{}, 65534", nix::unistd::Uid::current())
                } else {
                    nix::unistd::Uid::current().to_string()
                }
            ),
        )
        .expect("audit config");
        let mut auditor = Self {
            dir: dir.to_owned(),
            log_dir: log_dir.to_owned(),
            socket,
            config,
            child: None,
        };
        auditor.spawn();
        auditor
    }

    /// Starts (or restarts) the service on the same log.
    pub fn spawn(&mut self) {
        let log = fs::File::create(self.dir.join("audit.stderr")).expect("log");
        let child = Command::new(binary("deepseek-audit"))
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn deepseek-audit");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "the auditor did not listen within 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `[audit]` for a daemon that must record with this auditor.
    pub fn table(&self) -> String {
        format!("[audit]\nsocket = \"{}\"\n", self.socket.display())
    }

    /// Waits up to `timeout` for the service to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Some(status) = child.try_wait().ok()? {
                self.child = None;
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (SIGSTOP, SIGCONT) to the running service.
    pub fn signal(&self, signal: Signal) {
        let child = self.child.as_ref().expect("auditor running");
        kill(
            Pid::from_raw(i32::try_from(child.id()).expect("pid")),
            signal,
        )
        .expect("signal the auditor");
    }

    /// Stops the service with SIGSTOP and waits until every one of its
    /// threads has stopped: a record sent after this stays unread.
    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP);
        let pid = self.child.as_ref().expect("auditor running").id();
        let stopped = || {
            fs::read_dir(format!("/proc/{pid}/task"))
                .expect("auditor tasks")
                .filter_map(Result::ok)
                .all(|task| {
                    fs::read_to_string(task.path().join("stat"))
                        .ok()
                        .and_then(|stat| {
                            stat.rsplit_once(") ")
                                .and_then(|(_, rest)| rest.chars().next())
                        })
                        .is_some_and(|state| state == 'T')
                })
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stopped() {
            assert!(Instant::now() < deadline, "the auditor did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the service with `signal` and waits for it.
    pub fn stop(&mut self, signal: Signal) -> Option<i32> {
        let mut child = self.child.take()?;
        kill(
            Pid::from_raw(i32::try_from(child.id()).expect("pid")),
            signal,
        )
        .expect("kill auditor");
        child.wait().ok()?.code()
    }

    /// `deepseek-audit log verify` on this auditor's log: exit code and output.
    pub fn verify(&self) -> (i32, String) {
        let output = Command::new(binary("deepseek-audit"))
            .arg("--config")
            .arg(&self.config)
            .args(["log", "verify"])
            .output()
            .expect("deepseek-audit log verify");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    }

    /// The entries recorded so far, parsed.
    pub fn entries(&self) -> Vec<Value> {
        fs::read_to_string(self.log_dir.join("entries.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("entry"))
            .collect()
    }
}

impl Drop for Auditor {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

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
    /// ONNX Runtime library and `models` (from [`model_table`]), starts the
    /// daemon and waits until it reports ready.
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
            assert!(
                Instant::now() < deadline,
                "deepseekd did not exit within {timeout:?}"
            );
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

/// An HTTP response read from the socket.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// The body as JSON (the whole body, or the JSON part of a binary response).
    pub fn json(&self) -> Value {
        let end = self.json_length().unwrap_or(self.body.len());
        serde_json::from_slice(&self.body[..end]).unwrap_or_else(|e| {
            panic!(
                "response is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// `Inference-Header-Content-Length`, when the response carries binary data.
    pub fn json_length(&self) -> Option<usize> {
        self.headers
            .get("inference-header-content-length")
            .map(|v| v.to_str().expect("ascii").parse().expect("number"))
    }

    /// The binary data after the JSON part.
    pub fn binary(&self) -> &[u8] {
        &self.body[self.json_length().expect("binary response")..]
    }

    /// The `error` message of an error response.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .expect("error is a string")
            .to_owned()
    }
}

/// A keep-alive HTTP/1.1 connection to the daemon's socket.
#[derive(Debug)]
pub struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Connection {
    pub async fn open(socket: &Path) -> std::io::Result<Self> {
        let stream = tokio::net::UnixStream::connect(socket).await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(connection);
        Ok(Self { sender })
    }

    /// Sends one request and reads the whole response.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> std::io::Result<Response> {
        let mut builder = Request::builder().method(method).uri(path);
        // HTTP/1.1 requires a Host header; over a Unix socket any will do.
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("host"))
        {
            builder = builder.header("host", "localhost");
        }
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        let request = builder.body(Full::new(body)).expect("request");
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(std::io::Error::other)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

/// Sends one request over a fresh connection to the Unix socket.
pub async fn request(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> std::io::Result<Response> {
    Connection::open(socket)
        .await?
        .send(method, path, headers, Bytes::from(body))
        .await
}

pub async fn get(socket: &Path, path: &str) -> std::io::Result<Response> {
    request(socket, "GET", path, &[], Vec::new()).await
}

/// POSTs a JSON document.
pub async fn post_json(socket: &Path, path: &str, body: &Value) -> Response {
    request(
        socket,
        "POST",
        path,
        &[("content-type", "application/json".to_owned())],
        serde_json::to_vec(body).expect("json"),
    )
    .await
    .expect("request")
}

/// POSTs `body` as JSON to the daemon's OpenAI endpoint `path`: the status
/// and the answer's `error` object.
pub async fn openai_error(d: &Daemon, path: &str, body: &Value) -> (u16, Value) {
    let response = post_json(&d.socket, path, body).await;
    (response.status, response.json()["error"].clone())
}

/// The headers and body of a KServe binary request: `json` then `binary`.
pub fn binary_request(json: &Value, binary: &[u8]) -> (Vec<(&'static str, String)>, Vec<u8>) {
    let mut body = serde_json::to_vec(json).expect("json");
    let headers = vec![
        ("content-type", "application/octet-stream".to_owned()),
        ("inference-header-content-length", body.len().to_string()),
    ];
    body.extend_from_slice(binary);
    (headers, body)
}

/// POSTs a KServe binary request: `json` followed by `binary`.
pub async fn post_binary(socket: &Path, path: &str, json: &Value, binary: &[u8]) -> Response {
    let (headers, body) = binary_request(json, binary);
    request(socket, "POST", path, &headers, body)
        .await
        .expect("request")
}

/// The inodes of the sockets a process holds open (`/proc/PID/fd`).
pub fn socket_inodes(pid: i32) -> Vec<u64> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read fds")
        .filter_map(|entry| {
            let target = fs::read_link(entry.ok()?.path()).ok()?;
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// The socket inodes listed in one of `/proc/PID/net/{tcp,tcp6,udp,udp6}`.
pub fn inet_inodes(pid: i32, table: &str) -> Vec<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/net/{table}")).expect("read net table");
    text.lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(9)?.parse().ok())
        .collect()
}
