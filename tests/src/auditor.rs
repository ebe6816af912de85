//! A real `deepseek-audit serve` for the daemon under test to record with.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::fixtures::{binary, is_root};

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
        Self::start_configured(dir, log_dir, min_free_bytes, "")
    }

    /// Like [`Auditor::start_with`], with `extra` lines in its configuration
    /// (a key `extra` sets replaces the harness's). Unless `extra` says
    /// otherwise, the auditor writes its metrics to `metrics.prom` in `dir`
    /// each second.
    pub fn start_configured(dir: &Path, log_dir: &Path, min_free_bytes: u64, extra: &str) -> Self {
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
        // The harness's settings, but for the keys `extra` sets itself.
        let sets = |key: &str| {
            extra
                .lines()
                .any(|line| line.split('=').next().is_some_and(|k| k.trim() == key))
        };
        let defaults: String = [
            ("checkpoint_every", "10".to_owned()),
            ("checkpoint_interval_secs", "86400".to_owned()),
            ("min_free_bytes", min_free_bytes.to_string()),
            ("syslog", "false".to_owned()),
            (
                "metrics_file",
                format!("\"{}\"", dir.join("metrics.prom").display()),
            ),
            ("metrics_interval_secs", "1".to_owned()),
        ]
        .into_iter()
        .filter(|(key, _)| !sets(key))
        .map(|(key, value)| format!("{key} = {value}\n"))
        .collect();
        fs::write(
            &config,
            format!(
                "socket = \"{}\"\nlog_dir = \"{}\"\nsigning_key = \"{}\"\n{verifier}\nallowed_uids = [{}]\n{defaults}{extra}\n",
                socket.display(),
                log_dir.display(),
                key.display(),
                // The daemon under test connects first as this uid, and
                // reconnects as the one it switched to (`nobody`).
                if is_root() {
                    format!("{}, 65534", nix::unistd::Uid::current())
                } else {
                    nix::unistd::Uid::current().to_string()
                },
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

    /// The running service's pid.
    pub fn pid(&self) -> i32 {
        let child = self.child.as_ref().expect("auditor running");
        i32::try_from(child.id()).expect("pid fits")
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

    /// The first entry for which `wanted` holds, once recorded; panics
    /// naming `what` if none is within `patience` (a hang detector).
    pub fn wait_for(
        &self,
        what: &str,
        patience: Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(entry) = self.entries().into_iter().find(|e| wanted(e)) {
                return entry;
            }
            assert!(Instant::now() < deadline, "no {what} record");
            std::thread::sleep(Duration::from_millis(20));
        }
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
