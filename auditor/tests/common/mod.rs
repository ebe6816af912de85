//! What the tests of the real binary share: running it, a configuration
//! with a fresh key, the service, and a client that appends records.
#![allow(dead_code, reason = "each test binary uses a part")]

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) fn audit(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_deepseek-audit"))
        .args(args)
        .output()
        .expect("run deepseek-audit");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

pub(crate) fn setup(dir: &Path) -> String {
    setup_with(dir, "")
}

/// `setup`, with `extra` lines appended to audit.toml.
pub(crate) fn setup_with(dir: &Path, extra: &str) -> String {
    let key = dir.join("audit.key");
    let (code, out) = audit(&[
        "keygen",
        "--name",
        "deepseek-audit/test",
        "--out",
        key.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        std::fs::metadata(&key).expect("key").permissions().mode() & 0o777,
        0o600
    );
    let verifier = out.trim().to_owned();
    std::fs::write(
        dir.join("audit.toml"),
        format!(
            "socket = \"{0}/audit.sock\"\nlog_dir = \"{0}/log\"\nsigning_key = \"{0}/audit.key\"\n{verifier}\nallowed_uids = [{1}]\ncheckpoint_every = 50\nmin_free_bytes = 1\nsyslog = false\n{extra}",
            dir.display(),
            nix::unistd::Uid::current()
        ),
    )
    .expect("config");
    verifier
}

pub(crate) fn serve(dir: &Path) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_deepseek-audit"))
        .args([
            "--config",
            dir.join("audit.toml").to_str().expect("utf8"),
            "serve",
        ])
        .stderr(std::fs::File::create(dir.join("serve.err")).expect("log"))
        .stdout(Stdio::null())
        .spawn()
        .expect("serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(dir.join("audit.sock")).is_err() {
        assert!(
            Instant::now() < deadline,
            "not listening: {}",
            std::fs::read_to_string(dir.join("serve.err")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// Sends `count` records on one connection and returns the acknowledged
/// sequence numbers (stops at the first missing answer).
pub(crate) fn append(dir: &Path, count: u64) -> Vec<u64> {
    let mut stream = UnixStream::connect(dir.join("audit.sock")).expect("connect");
    // A service that never answers fails the test instead of hanging it.
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut acked = Vec::new();
    for tag in 0..count {
        let body = format!(
            r#"{{"tag":{tag},"entry":{{"seq":0,"time_ns":0,"event":"request","model":"demo","status":200}}}}"#
        );
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body.as_bytes());
        let mut length = [0u8; 4];
        // The service may be killed at any point: stop at the first failure.
        if stream.write_all(&frame).is_err() || stream.read_exact(&mut length).is_err() {
            break;
        }
        let mut reply = vec![0u8; u32::from_be_bytes(length) as usize];
        if stream.read_exact(&mut reply).is_err() {
            break;
        }
        let reply: serde_json::Value = serde_json::from_slice(&reply).expect("json");
        match reply["seq"].as_u64() {
            Some(seq) => acked.push(seq),
            None => break,
        }
    }
    acked
}

/// A child that a failing test must not leave behind.
pub(crate) struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stops the service with SIGTERM (it seals the log) and waits for it.
pub(crate) fn stop(mut service: Child) -> Option<i32> {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(service.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    service.wait().ok().and_then(|s| s.code())
}

/// Seals a segment about every 10 records.
pub(crate) const SMALL_SEGMENTS: &str = "segment_max_bytes = 2000\n";

pub(crate) fn config(dir: &Path) -> String {
    dir.join("audit.toml").display().to_string()
}

pub(crate) fn segments(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir.join("segments"))
        .map(|items| items.flatten().map(|i| i.path()).collect())
        .unwrap_or_default();
    found.retain(|p| p.extension().is_some_and(|e| e == extension));
    found.sort();
    found
}

/// The verifier key line of audit.toml (`verifier_key = "..."`), as a key.
pub(crate) fn verifier_key(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("audit.toml")).expect("config");
    let line = text
        .lines()
        .find(|l| l.starts_with("verifier_key"))
        .expect("verifier_key");
    line.split('"').nth(1).expect("quoted").to_owned()
}

/// A log of `records` appended records (plus the service's own) in small
/// segments, the service stopped (which seals the active segment too).
pub(crate) fn rotated_log(dir: &Path, records: u64) {
    setup_with(dir, SMALL_SEGMENTS);
    let service = serve(dir);
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let dir = dir.to_owned();
            std::thread::spawn(move || append(&dir, records / 4))
        })
        .collect();
    for writer in writers {
        assert_eq!(writer.join().expect("writer").len() as u64, records / 4);
    }
    assert_eq!(stop(service), Some(0));
}

/// `log archive --to TO --keep-days KEEP` of the log in `d`.
pub(crate) fn archive(d: &Path, keep: &str, to: &Path) -> (i32, String) {
    let to = to.to_str().expect("utf8").to_owned();
    audit(&[
        "-c",
        &config(d),
        "log",
        "archive",
        "--to",
        &to,
        "--keep-days",
        keep,
    ])
}

/// Runs `deepseek-audit ARGS`, and asserts its exit code and that its
/// output says `needle`; returns the output.
pub(crate) fn expect_exit(args: &[&str], code: i32, needle: &str) -> String {
    let (got, out) = audit(args);
    assert_eq!(got, code, "{out}");
    assert!(out.contains(needle), "expected {needle:?} in: {out}");
    out
}
