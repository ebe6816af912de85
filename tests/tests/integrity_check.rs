//! The daily timer's command, `deepseek-audit integrity-check`, against
//! the real `deepseek-integrity`: the same report byte for byte and the
//! same exit code, and the recorded report digest is the SHA-256 of what
//! `deepseek-integrity --format json check` prints.

use std::path::Path;
use std::process::Command;

use deepseek_tests::{Auditor, binary, shared_tempdir};
use nix::sys::signal::Signal;
use sha2::{Digest, Sha256};

/// Runs a binary: exit code and stdout (stderr is shown on failure).
fn run(name: &str, args: &[&str]) -> (i32, String) {
    let output = Command::new(binary(name)).args(args).output().expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let code = output.status.code().unwrap_or(-1);
    if !matches!(code, 0 | 4) {
        panic!(
            "{name} {args:?}: exit {code}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    (code, stdout)
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A watched tree, a key from `deepseek-integrity keygen` and a database
/// from its `init`; returns the configuration's path.
fn integrity_setup(dir: &Path) -> String {
    std::fs::create_dir_all(dir.join("tree")).expect("tree");
    std::fs::write(dir.join("tree/a.conf"), b"alpha\n").expect("write");
    let key = dir.join("integrity.key");
    let (_, out) = run(
        "deepseek-integrity",
        &["keygen", "--out", key.to_str().expect("utf8")],
    );
    let verifier = out
        .lines()
        .find(|l| l.starts_with("verifier_key"))
        .expect("verifier line");
    let config = dir.join("integrity.toml");
    std::fs::write(
        &config,
        format!(
            "database = \"{}\"\nsigning_key = \"{}\"\n{verifier}\n[[rule]]\npath = \"{}\"\n",
            dir.join("integrity.db").display(),
            key.display(),
            dir.join("tree").display()
        ),
    )
    .expect("integrity.toml");
    let config = config.to_str().expect("utf8").to_owned();
    run("deepseek-integrity", &["--config", &config, "init"]);
    config
}

#[test]
fn integrity_check_prints_and_exits_as_deepseek_integrity_check_and_records_its_report() {
    let dir = shared_tempdir();
    let config = integrity_setup(dir.path());
    let mut auditor = Auditor::start(&dir.path().join("audit"));
    let audit_config = auditor.config.to_str().expect("utf8").to_owned();
    let timer = [
        "--config",
        &audit_config,
        "integrity-check",
        "--integrity-config",
        &config,
    ];
    for (state, expected) in [("clean", 0), ("changed", 4)] {
        if state == "changed" {
            std::fs::write(dir.path().join("tree/a.conf"), b"ALPHA\n").expect("edit");
        }
        let (code, report) = run("deepseek-integrity", &["--config", &config, "check"]);
        assert_eq!(code, expected, "{report}");
        let (code, recorded) = run("deepseek-audit", &timer);
        assert_eq!(code, expected, "{recorded}");
        assert_eq!(recorded, report, "{state}: the same human report");
    }
    let (_, json) = run(
        "deepseek-integrity",
        &["--config", &config, "--format", "json", "check"],
    );
    assert_eq!(auditor.stop(Signal::SIGTERM), Some(0));
    let entries = auditor.entries();
    assert_eq!(entries.len(), 2, "{entries:#?}");
    assert_eq!(entries[0]["details"]["exit_code"], "0");
    assert_eq!(entries[1]["event"], "integrity_check");
    assert_eq!(entries[1]["details"]["exit_code"], "4");
    assert_eq!(
        entries[1]["details"]["report_sha256"],
        sha256_hex(json.as_bytes())
    );
    let (code, out) = auditor.verify();
    assert_eq!(code, 0, "{out}");
}
