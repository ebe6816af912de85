//! `deepseek-audit integrity-check`, the real binary against a real
//! `deepseek-audit serve` and a database signed with a real key by the
//! integrity library's own `init`: every result reaches the log, failed
//! checks included, and an unrecorded check fails closed (74).

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Runs `deepseek-audit`: exit code, stdout, stderr.
fn audit(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_deepseek-audit"))
        .args(args)
        .output()
        .expect("run deepseek-audit");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The auditor's key and `audit.toml` (allowing `uid`), and a watched tree
/// with its integrity key, configuration and signed database.
struct Fixture {
    dir: tempfile::TempDir,
    audit_config: String,
    integrity_config: String,
    service: Option<Child>,
}

impl Fixture {
    fn new(uid: u32) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path();
        let (code, out, err) = audit(&[
            "keygen",
            "--name",
            "deepseek-audit/test",
            "--out",
            path.join("audit.key").to_str().expect("utf8"),
        ]);
        assert_eq!(code, 0, "{out}{err}");
        std::fs::write(
            path.join("audit.toml"),
            format!(
                "socket = \"{0}/audit.sock\"\nlog_dir = \"{0}/log\"\nsigning_key = \"{0}/audit.key\"\n{1}\nallowed_uids = [{uid}]\nmin_free_bytes = 1\nsyslog = false\n",
                path.display(),
                out.trim()
            ),
        )
        .expect("audit.toml");
        std::fs::create_dir_all(path.join("tree/sub")).expect("tree");
        std::fs::write(path.join("tree/a.conf"), b"alpha\n").expect("write");
        std::fs::write(path.join("tree/sub/b.conf"), b"beta\n").expect("write");
        let key = path.join("integrity.key");
        let signer = deepseek_integrity::keys::Signer25519::generate(&key).expect("integrity key");
        std::fs::write(
            path.join("integrity.toml"),
            format!(
                "database = \"{}\"\nsigning_key = \"{}\"\nverifier_key = \"{}\"\n\n[[rule]]\npath = \"{}\"\n",
                path.join("integrity.db").display(),
                key.display(),
                signer.verifier(),
                path.join("tree").display()
            ),
        )
        .expect("integrity.toml");
        let utf8 = |name: &str| path.join(name).to_str().expect("utf8").to_owned();
        let f = Self {
            audit_config: utf8("audit.toml"),
            integrity_config: utf8("integrity.toml"),
            dir,
            service: None,
        };
        // `deepseek-integrity init`, the integrity CLI's own code.
        let init = deepseek_integrity::Cli::try_parse_from([
            "deepseek-integrity",
            "--config",
            f.integrity_config(),
            "init",
        ])
        .expect("command line");
        assert_eq!(deepseek_integrity::run(&init), 0);
        f
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn audit_config(&self) -> &str {
        &self.audit_config
    }
    fn integrity_config(&self) -> &str {
        &self.integrity_config
    }
    fn socket(&self) -> PathBuf {
        self.path().join("audit.sock")
    }

    fn serve(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_deepseek-audit"))
            .args(["--config", self.audit_config(), "serve"])
            .stderr(std::fs::File::create(self.path().join("serve.err")).expect("log"))
            .stdout(Stdio::null())
            .spawn()
            .expect("serve");
        self.service = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(self.socket()).is_err() {
            assert!(Instant::now() < deadline, "not listening");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, and wait: the service seals the log with a checkpoint.
    fn stop(&mut self) {
        if let Some(mut child) = self.service.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            assert_eq!(child.wait().expect("wait").code(), Some(0));
        }
    }

    /// `integrity-check` with `extra` arguments: exit code, stdout, stderr.
    fn check(&self, extra: &[&str]) -> (i32, String, String) {
        let mut args = vec![
            "--config",
            self.audit_config(),
            "integrity-check",
            "--integrity-config",
            self.integrity_config(),
        ];
        args.extend_from_slice(extra);
        audit(&args)
    }

    /// The log's entries, as `log export` prints them.
    fn export(&self) -> Vec<Value> {
        let (code, out, err) = audit(&["--config", self.audit_config(), "log", "export"]);
        assert_eq!(code, 0, "{out}{err}");
        serde_json::from_str::<Value>(&out)
            .expect("json")
            .as_array()
            .expect("array")
            .clone()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mut child) = self.service.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn uid() -> u32 {
    nix::unistd::Uid::current().as_raw()
}

#[test]
fn every_result_is_recorded_failed_checks_included_and_the_log_verifies() {
    let mut f = Fixture::new(uid());
    f.serve();

    // A clean tree: exit 0, the same report deepseek-integrity prints.
    let (code, out, err) = f.check(&[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("check: no differences: 0 added, 0 removed, 0 changed (4 entries in "),
        "{out}"
    );
    assert!(
        err.contains("integrity check (exit 0) recorded as entry 0"),
        "{err}"
    );
    // The JSON report is the one whose SHA-256 the entry holds.
    let (code, json, err) = f.check(&["--format", "json"]);
    assert_eq!(code, 0, "{json}{err}");
    let report: Value = serde_json::from_str(&json).expect("a JSON report");
    assert_eq!(report["exit_code"], 0);

    // One changed file, one added: the summed code 5, the paths named.
    let changed = f.path().join("tree/a.conf");
    std::fs::write(&changed, b"ALPHA\n").expect("edit");
    let added = f.path().join("tree/sub/new.conf");
    std::fs::write(&added, b"new\n").expect("add");
    let (code, out, err) = f.check(&[]);
    assert_eq!(code, 5, "{out}{err}");
    assert!(
        out.contains("\nChanged:\n") && out.contains("sha256"),
        "{out}"
    );

    // A tampered database: exit 26, recorded with its error.
    let database = f.path().join("integrity.db");
    let text = std::fs::read_to_string(&database).expect("database");
    std::fs::write(&database, text.replacen("a.conf", "A.conf", 1)).expect("tamper");
    let (code, out, err) = f.check(&[]);
    assert_eq!(code, 26, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("the integrity check failed (exit 26): database ")
            && err.contains("invalid signature"),
        "{err}"
    );

    // An unreadable integrity configuration: exit 17, recorded too.
    let missing = f.path().join("missing.toml");
    let (code, out, err) = audit(&[
        "--config",
        f.audit_config(),
        "integrity-check",
        "--integrity-config",
        missing.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 17, "{out}{err}");

    f.stop();
    let entries = f.export();
    assert_eq!(entries.len(), 5, "{entries:#?}");
    assert!(entries.iter().all(|e| e["event"] == "integrity_check"));
    let details: Vec<&Value> = entries.iter().map(|e| &e["details"]).collect();

    assert_eq!(details[0]["exit_code"], "0");
    assert_eq!(details[0]["result"], "clean");
    assert_eq!(details[0]["integrity_config"], f.integrity_config());
    assert_eq!(details[0]["database"], database.display().to_string());
    assert_eq!(details[0]["entries"], "4");
    assert_eq!(details[0]["changed"], "0");
    assert!(details[0].get("changed_paths").is_none());
    let sha = deepseek_integrity::digest::hex(&Sha256::digest(json.as_bytes()));
    assert_eq!(details[0]["report_sha256"], sha);
    // The same state gives the same report.
    assert_eq!(details[1]["report_sha256"], sha);

    assert_eq!(details[2]["exit_code"], "5");
    assert_eq!(details[2]["result"], "differences");
    assert_eq!(details[2]["changed"], "1");
    assert_eq!(details[2]["added"], "1");
    assert_eq!(details[2]["removed"], "0");
    let paths = |key: &str| -> Vec<String> {
        serde_json::from_str(details[2][key].as_str().expect(key)).expect("a JSON array")
    };
    assert_eq!(paths("changed_paths"), [changed.display().to_string()]);
    assert_eq!(paths("added_paths"), [added.display().to_string()]);
    assert!(details[2].get("paths_omitted").is_none());

    assert_eq!(details[3]["exit_code"], "26");
    assert_eq!(details[3]["result"], "error");
    let error = details[3]["error"].as_str().expect("error");
    assert!(error.contains("invalid signature"), "{error}");
    assert!(details[3].get("report_sha256").is_none());

    assert_eq!(details[4]["exit_code"], "17");
    assert_eq!(
        details[4]["integrity_config"],
        missing.display().to_string()
    );
    assert!(details[4].get("database").is_none());
    let error = details[4]["error"].as_str().expect("error");
    assert!(
        error.starts_with(&format!(
            "cannot read configuration file {}",
            missing.display()
        )),
        "{error}"
    );

    let (code, out, err) = audit(&["--config", f.audit_config(), "log", "show"]);
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains("integrity_check") && lines[0].ends_with("exit=0"),
        "{out}"
    );
    assert!(lines[2].ends_with("exit=5"), "{out}");
    let (code, out, err) = audit(&["--config", f.audit_config(), "log", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("log verified: 5 entries"), "{out}");
}

#[test]
fn an_unrecorded_check_fails_closed_with_74_naming_the_socket() {
    let f = Fixture::new(uid());
    // No auditor running: the report is printed, the result not recorded.
    let (code, out, err) = f.check(&[]);
    assert_eq!(code, 74, "{out}{err}");
    assert!(out.starts_with("check: no differences"), "{out}");
    assert!(
        err.contains(&format!(
            "the integrity check (exit 0) was NOT recorded in the audit log: cannot connect to the auditor at {}: ",
            f.socket().display()
        )),
        "{err}"
    );
    // 74 wins over the check's own failure.
    std::fs::write(f.path().join("integrity.db"), b"not a database\n").expect("break");
    let (code, _, err) = f.check(&[]);
    assert_eq!(code, 74, "{err}");
    assert!(
        err.contains("the integrity check failed (exit 26): database ")
            && err.contains("is not signed"),
        "{err}"
    );
    assert!(err.contains("(exit 26) was NOT recorded"), "{err}");
}

#[test]
fn a_peer_the_auditor_refuses_fails_closed_with_74() {
    let mut f = Fixture::new(uid().wrapping_add(4242));
    f.serve();
    let (code, out, err) = f.check(&[]);
    assert_eq!(code, 74, "{out}{err}");
    assert!(
        err.contains(&format!(
            "the auditor at {} closed the connection without acknowledging the record",
            f.socket().display()
        )),
        "{err}"
    );
    f.stop();
    assert!(f.export().is_empty());
}

#[test]
fn without_a_usable_audit_toml_nothing_is_checked() {
    let f = Fixture::new(uid());
    let missing = f.path().join("missing-audit.toml");
    let (code, out, err) = audit(&[
        "--config",
        missing.to_str().expect("utf8"),
        "integrity-check",
        "--integrity-config",
        f.integrity_config(),
    ]);
    assert_eq!(code, 78, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains(&format!(
            "cannot read configuration file {}",
            missing.display()
        )) && err.contains("the integrity check was not run"),
        "{err}"
    );
}

#[test]
fn the_exit_codes_are_in_the_help() {
    let (code, out, _) = audit(&["integrity-check", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--integrity-config <PATH>"), "{out}");
    for line in [
        "  0   no differences; recorded",
        "  26  the database signature",
        "  74  the result was NOT recorded",
        "  78  audit.toml is missing or invalid",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
}
