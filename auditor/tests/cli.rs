//! The real `deepseek-audit` binary: keygen, the service with concurrent
//! writers, a crash (SIGKILL) during a burst, and `log verify`,
//! `log prove` and `log check-proof` on the result.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{KillOnDrop, append, audit, serve, setup};

#[test]
fn every_acknowledged_record_survives_a_crash_and_the_log_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    setup(dir.path());
    let config = dir.path().join("audit.toml");
    let config = config.to_str().expect("utf8");
    let mut service = serve(dir.path());
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let dir = dir.path().to_owned();
            std::thread::spawn(move || append(&dir, 3000))
        })
        .collect();
    // Kill it in the middle of the burst: once some records are on disk.
    let entries_path = dir.path().join("log/entries.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read(&entries_path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
        < 100
    {
        assert!(Instant::now() < deadline, "no records written");
        std::thread::sleep(Duration::from_millis(2));
    }
    service.kill().expect("SIGKILL during the burst");
    let _ = service.wait();
    let acked: Vec<u64> = writers
        .into_iter()
        .flat_map(|w| w.join().expect("writer"))
        .collect();
    assert!(
        !acked.is_empty(),
        "records were acknowledged before the crash"
    );
    // A torn tail, as a crash mid-write leaves.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("log/entries.log"))
        .expect("log");
    file.write_all(br#"{"seq":99999,"pr"#).expect("torn");
    drop(file);
    let mut service = serve(dir.path());
    // The service listens before its writer has appended the removal
    // record: wait for that record (a complete line) before reading.
    let deadline = Instant::now() + Duration::from_secs(10);
    let entries = loop {
        let entries = std::fs::read_to_string(dir.path().join("log/entries.log")).expect("log");
        if entries.ends_with('\n')
            && entries
                .lines()
                .last()
                .is_some_and(|l| l.contains("torn_tail_removed"))
        {
            break entries;
        }
        assert!(Instant::now() < deadline, "the removal is not recorded");
        std::thread::sleep(Duration::from_millis(10));
    };
    let (code, out) = audit(&["--config", config, "log", "verify"]);
    assert_eq!(code, 0, "{out}");
    let recorded = entries.lines().count() as u64;
    assert!(
        acked.iter().all(|&seq| seq < recorded),
        "an acknowledged record is missing: {recorded} entries"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(service.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = service.wait();
    let (code, out) = audit(&["--config", config, "log", "verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("unsealed tail 0"),
        "shutdown seals the log: {out}"
    );
    let (code, proof) = audit(&["--config", config, "log", "prove", "3"]);
    assert_eq!(code, 0, "{proof}");
    let proof_file = dir.path().join("proof.json");
    std::fs::write(&proof_file, &proof).expect("proof");
    let (code, out) = audit(&[
        "--config",
        config,
        "log",
        "check-proof",
        proof_file.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("entry 3 is included in the"), "{out}");
    std::fs::write(
        &proof_file,
        proof.replacen("\\\"demo\\\"", "\\\"dem0\\\"", 1),
    )
    .expect("forged");
    assert_eq!(
        audit(&[
            "--config",
            config,
            "log",
            "check-proof",
            proof_file.to_str().expect("utf8")
        ])
        .0,
        2
    );
    let missing = dir.path().join("missing.json");
    let (code, out) = audit(&[
        "--config",
        config,
        "log",
        "check-proof",
        missing.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!("cannot read {}", missing.display())),
        "{out}"
    );
}

#[test]
fn an_edited_entry_is_located() {
    let dir = tempfile::tempdir().expect("tempdir");
    setup(dir.path());
    let mut service = serve(dir.path());
    assert_eq!(append(dir.path(), 20).len(), 20);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(service.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = service.wait();
    let path = dir.path().join("log/entries.log");
    let mut lines: Vec<String> = std::fs::read_to_string(&path)
        .expect("log")
        .lines()
        .map(str::to_owned)
        .collect();
    lines[7] = lines[7].replace("\"status\":200", "\"status\":201");
    std::fs::write(
        &path,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .expect("edit");
    let (code, out) = audit(&[
        "--config",
        dir.path().join("audit.toml").to_str().expect("utf8"),
        "log",
        "verify",
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("entry 8: does not chain to entry 7: entry 7 was changed"),
        "{out}"
    );
}

#[test]
fn a_signing_key_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    setup(dir.path());
    std::fs::set_permissions(
        dir.path().join("audit.key"),
        std::fs::Permissions::from_mode(0o640),
    )
    .expect("chmod");
    let (code, out) = audit(&[
        "--config",
        dir.path().join("audit.toml").to_str().expect("utf8"),
        "serve",
    ]);
    assert_eq!(code, 78, "{out}");
    assert!(
        out.contains("group and others must have no access (chmod 600)"),
        "{out}"
    );
}

#[test]
fn show_and_export_list_the_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    setup(dir.path());
    let mut service = serve(dir.path());
    assert_eq!(append(dir.path(), 3).len(), 3);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(service.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = service.wait();
    let config = dir.path().join("audit.toml");
    let (code, out) = audit(&["--config", config.to_str().expect("utf8"), "log", "show"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(
        out.lines()
            .all(|l| l.contains("request") && l.contains("demo") && l.ends_with("200")),
        "{out}"
    );
    let (code, out) = audit(&[
        "--config",
        config.to_str().expect("utf8"),
        "log",
        "export",
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{out}");
    let entries: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(entries.as_array().map(Vec::len), Some(3));
    assert_eq!(entries[2]["seq"], 2);
}

#[test]
fn a_wrong_log_directory_is_an_error_not_an_empty_clean_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    setup(dir.path());
    let config = dir.path().join("audit.toml");
    let (code, out) = audit(&["--config", config.to_str().expect("utf8"), "log", "verify"]);
    assert_eq!(code, 74, "{out}");
    assert!(
        out.contains("entries.log: No such file or directory"),
        "{out}"
    );
}

#[test]
fn serve_refuses_to_append_to_a_tampered_log_or_replace_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    setup(dir.path());
    let config = dir.path().join("audit.toml");
    let config = config.to_str().expect("utf8");
    let mut service = serve(dir.path());
    assert_eq!(append(dir.path(), 30).len(), 30);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(service.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = service.wait();
    // Rewrite the tail consistently, as an attacker with write access would.
    let path = dir.path().join("log/entries.log");
    let lines: Vec<String> = std::fs::read_to_string(&path)
        .expect("log")
        .lines()
        .map(str::to_owned)
        .collect();
    std::fs::write(
        &path,
        lines[..10]
            .iter()
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    )
    .expect("truncate");
    let (code, out) = audit(&["--config", config, "serve"]);
    assert_eq!(code, 74, "{out}");
    assert!(out.contains("refusing to append"), "{out}");
    assert!(out.contains("the log was truncated"), "{out}");
    // A regular file where the socket goes is never removed.
    std::fs::write(
        &path,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .expect("restore");
    let socket = dir.path().join("audit.sock");
    let _ = std::fs::remove_file(&socket);
    std::fs::write(&socket, b"precious").expect("file");
    let (code, out) = audit(&["--config", config, "serve"]);
    assert_eq!(code, 71, "{out}");
    assert_eq!(std::fs::read(&socket).expect("kept"), b"precious");
}

/// Receives datagrams until one starts with `prefix`.
fn notified(notify: &std::os::unix::net::UnixDatagram, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = notify.recv(&mut buffer) {
            let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
            if message.starts_with(prefix) {
                return message;
            }
        }
    }
    panic!("no {prefix} notification within 10 s");
}

#[test]
fn serve_takes_the_socket_systemd_passes_and_tells_systemd_when_ready() {
    if Command::new("systemd-socket-activate")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-socket-activate is not installed (apt-get install systemd)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    setup(dir.path());
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("bind");
    notify
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    // As deepseek-audit.socket does: systemd binds, the service inherits.
    let service = Command::new("systemd-socket-activate")
        .arg("--listen")
        .arg(dir.path().join("audit.sock"))
        // It passes on only the variables named here.
        .arg("--setenv=NOTIFY_SOCKET")
        .arg(env!("CARGO_BIN_EXE_deepseek-audit"))
        .arg("--config")
        .arg(dir.path().join("audit.toml"))
        .arg("serve")
        .env("NOTIFY_SOCKET", &notify_path)
        .stderr(std::fs::File::create(dir.path().join("serve.err")).expect("log"))
        .spawn()
        .expect("systemd-socket-activate");
    let service = KillOnDrop(service);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir.path().join("audit.sock").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Like systemd without an explicit start, systemd-socket-activate starts
    // the service only when the first client connects.
    assert_eq!(append(dir.path(), 3).len(), 3);
    let ready = notified(&notify, "READY=1");
    assert!(
        ready.contains("STATUS=recording; the log verified"),
        "{ready}"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(service.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    notified(&notify, "STOPPING=1");
    let mut service = service;
    assert_eq!(service.0.wait().expect("wait").code(), Some(0));
    let (code, out) = audit(&[
        "--config",
        dir.path().join("audit.toml").to_str().expect("utf8"),
        "log",
        "verify",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("log verified: 3 entries"), "{out}");
}

/// The name of the user running the tests.
fn current_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::current())
        .expect("user database")
        .expect("the current user has a name")
        .name
}

/// Like [`setup`], with the names a packaged, static `audit.toml` uses:
/// `allowed_users` and the `verifier_key_file` that keygen wrote.
fn setup_by_name(dir: &Path, users: &str) {
    let public = dir.join("audit.pub");
    let (code, out) = audit(&[
        "keygen",
        "--name",
        "deepseek-audit/test",
        "--out",
        dir.join("audit.key").to_str().expect("utf8"),
        "--verifier-out",
        public.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        std::fs::metadata(&public)
            .expect("key")
            .permissions()
            .mode()
            & 0o777,
        0o644
    );
    assert_eq!(
        format!(
            "verifier_key = \"{}\"",
            std::fs::read_to_string(&public).expect("read").trim()
        ),
        out.trim()
    );
    std::fs::write(
        dir.join("audit.toml"),
        format!(
            "socket = \"{0}/audit.sock\"\nlog_dir = \"{0}/log\"\nsigning_key = \"{0}/audit.key\"\nverifier_key_file = \"{1}\"\nallowed_users = {users}\nmin_free_bytes = 1\nsyslog = false\n",
            dir.display(),
            public.display()
        ),
    )
    .expect("config");
}

#[test]
fn serve_allows_users_by_name_and_log_verify_reads_the_verifier_key_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    setup_by_name(dir.path(), &format!("[\"{}\"]", current_user()));
    let mut service = serve(dir.path());
    assert_eq!(append(dir.path(), 5).len(), 5);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(service.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = service.wait();
    let config = dir.path().join("audit.toml");
    let (code, out) = audit(&["--config", config.to_str().expect("utf8"), "log", "verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("log verified: 5 entries"), "{out}");
    // keygen never writes over an existing verifier key file, and leaves
    // no signing key behind when it refuses.
    let fresh = dir.path().join("fresh.key");
    let (code, out) = audit(&[
        "keygen",
        "--name",
        "deepseek-audit/test",
        "--out",
        fresh.to_str().expect("utf8"),
        "--verifier-out",
        dir.path().join("audit.pub").to_str().expect("utf8"),
    ]);
    assert_eq!(code, 74, "{out}");
    assert!(
        out.contains("already exists; refusing to overwrite a verifier key"),
        "{out}"
    );
    assert!(!fresh.exists());
}

#[test]
fn serve_refuses_an_unknown_user_or_an_empty_allow_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    setup_by_name(dir.path(), "[\"no-such-user-42\"]");
    let config = dir.path().join("audit.toml");
    let (code, out) = audit(&["--config", config.to_str().expect("utf8"), "serve"]);
    assert_eq!(code, 78, "{out}");
    assert_eq!(
        out.trim(),
        format!(
            "deepseek-audit: error: {}: allowed_users: user \"no-such-user-42\" does not exist on this system",
            config.display()
        )
    );
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace(
            "allowed_users = [\"no-such-user-42\"]",
            "allowed_users = []",
        ),
    )
    .expect("config");
    let (code, out) = audit(&["--config", config.to_str().expect("utf8"), "serve"]);
    assert_eq!(code, 78, "{out}");
    assert!(
        out.contains("allowed_users: empty, and so is allowed_uids: no peer could append a record"),
        "{out}"
    );
    assert!(!dir.path().join("audit.sock").exists(), "never listened");
}
