//! The daemon loads only models that match the signed integrity database,
//! verified with the integrity library itself, and serves them again once an
//! operator accepts a change with `deepseek-integrity update`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use deepseek_tests::{
    Auditor, Daemon, binary, model, ort_library, post_json, run_daemon, run_with_models,
    shared_tempdir, write_config, write_config_audited,
};
use serde_json::json;

/// A model directory of its own holding a copy of the demo model, and a
/// configuration whose integrity database was signed over it.
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let models = dir.join("models");
    std::fs::create_dir(&models).expect("models dir");
    let onnx = models.join("demo.onnx");
    std::fs::copy(model("demo.onnx"), &onnx).expect("copy");
    let table = format!(
        "[[model]]\nname = \"demo\"\npath = \"{}\"\n",
        onnx.display()
    );
    let config = write_config(dir, &dir.join("d.sock"), &ort_library(), "", "", &table);
    (onnx, config)
}

fn start(config: &Path) -> (i32, String) {
    run_daemon(
        &["--config", config.to_str().expect("utf8")],
        Duration::from_secs(30),
    )
}

/// Flips one byte inside the model's doc string: still a valid model, but
/// not the approved one.
fn flip_a_byte(onnx: &Path) {
    let mut bytes = std::fs::read(onnx).expect("read");
    let at = bytes
        .windows(10)
        .position(|w| w == b"y = 2x + 1")
        .expect("doc string");
    bytes[at] = b'z';
    std::fs::write(onnx, bytes).expect("write");
}

#[test]
fn a_model_with_one_flipped_byte_is_refused_and_served_after_update() {
    let dir = shared_tempdir();
    let (onnx, config) = setup(dir.path());
    flip_a_byte(&onnx);
    let (code, stderr) = start(&config);
    assert_eq!(code, 65, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "model \"demo\" failed integrity verification, not loaded: {}: sha256 is ",
            onnx.display()
        )) && stderr.contains("the integrity database expects"),
        "{stderr}"
    );
    // The operator reviews the change and accepts it.
    let update = Command::new(binary("deepseek-integrity"))
        .args([
            "--config",
            dir.path().join("integrity.toml").to_str().expect("utf8"),
            "update",
        ])
        .output()
        .expect("deepseek-integrity update");
    let out = String::from_utf8_lossy(&update.stdout);
    assert_eq!(
        update.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&update.stderr)
    );
    assert!(out.contains("1 changed"), "{out}");
    let dir_path = dir.path().to_owned();
    let socket = dir_path.join("d.sock");
    let mut d = Daemon::spawn_with_config(dir, socket, config, &[]);
    d.wait_ready();
    assert!(
        d.log()
            .contains("model files match the signed integrity database model=demo files=1")
            && d.log().contains("from_verified_bytes=true"),
        "{}",
        d.log()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let x = json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]});
    let response = runtime.block_on(post_json(&d.socket, "/v2/models/demo/infer", &x));
    assert_eq!(response.json()["outputs"][1]["data"], json!([24.0]));
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn a_refused_model_is_recorded_in_the_audit_log() {
    let dir = shared_tempdir();
    let models = dir.path().join("models");
    std::fs::create_dir(&models).expect("models dir");
    let onnx = models.join("demo.onnx");
    std::fs::copy(model("demo.onnx"), &onnx).expect("copy");
    let table = format!(
        "[[model]]\nname = \"demo\"\npath = \"{}\"\n",
        onnx.display()
    );
    let mut auditor = Auditor::start(&dir.path().join("audit"));
    let config = write_config_audited(
        dir.path(),
        &dir.path().join("d.sock"),
        &ort_library(),
        "",
        "",
        &table,
        &auditor.table(),
    );
    flip_a_byte(&onnx);
    let (code, stderr) = start(&config);
    assert_eq!(code, 65, "{stderr}");
    auditor.stop(nix::sys::signal::Signal::SIGTERM);
    let entries = auditor.entries();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let refused = &entries[0];
    assert_eq!(refused["event"], "model_refused", "{refused}");
    assert_eq!(refused["model"], "demo");
    assert_eq!(refused["details"]["path"], onnx.display().to_string());
    assert!(
        refused["details"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("the integrity database expects")),
        "{refused}"
    );
    let (verified, out) = auditor.verify();
    assert_eq!(verified, 0, "{out}");
}

#[test]
fn an_extra_or_a_missing_file_in_the_model_directory_is_refused() {
    let dir = shared_tempdir();
    let (onnx, config) = setup(dir.path());
    let planted = onnx.with_file_name("demo.onnx_data");
    std::fs::write(&planted, b"weights nobody approved").expect("write");
    let (code, stderr) = start(&config);
    assert_eq!(code, 65, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} is not in the integrity database (an extra file)",
            planted.display()
        )),
        "{stderr}"
    );
    std::fs::remove_file(&planted).expect("rm");
    std::fs::remove_file(&onnx).expect("rm model");
    let (code, stderr) = start(&config);
    assert_eq!(
        code, 78,
        "a missing model file is caught before anything: {stderr}"
    );
}

#[test]
fn a_database_signed_by_another_key_or_edited_is_refused() {
    let dir = shared_tempdir();
    let (_onnx, config) = setup(dir.path());
    let database = dir.path().join("integrity.db");
    let original = std::fs::read_to_string(&database).expect("db");
    let edited = original.replacen("size=", "size=1", 1);
    std::fs::write(&database, edited).expect("edit");
    let (code, stderr) = start(&config);
    assert_eq!(code, 65, "{stderr}");
    assert!(
        stderr.contains("has an invalid signature: it was modified after signing"),
        "{stderr}"
    );
    // A validly signed database, by a key that is not the pinned one.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).expect("dir");
    let foreign =
        deepseek_tests::integrity_table(&other, &std::fs::read_to_string(&config).expect("config"));
    assert!(foreign.contains("verifier_key"));
    std::fs::copy(other.join("integrity.db"), &database).expect("swap database");
    let (code, stderr) = start(&config);
    assert_eq!(code, 65, "{stderr}");
    assert!(
        stderr.contains("not by the pinned verifier key"),
        "{stderr}"
    );
}

#[test]
fn a_symlinked_model_is_refused_even_when_recorded() {
    // A symlink could point at content the database never saw; model
    // directories may hold regular files only.
    let dir = shared_tempdir();
    let elsewhere = dir.path().join("elsewhere.onnx");
    std::fs::copy(model("demo.onnx"), &elsewhere).expect("copy");
    let models = dir.path().join("models");
    std::fs::create_dir(&models).expect("dir");
    let onnx = models.join("demo.onnx");
    std::os::unix::fs::symlink(&elsewhere, &onnx).expect("symlink");
    let table = format!(
        "[[model]]\nname = \"demo\"\npath = \"{}\"\n",
        onnx.display()
    );
    let (code, stderr) = run_with_models(dir.path(), &ort_library(), &table);
    assert_eq!(code, 65, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: type is symlink, the integrity database expects a regular file",
            onnx.display()
        )),
        "{stderr}"
    );
}

/// `path` with every line starting with `prefix` replaced by `line`.
fn replace_lines(path: &Path, prefix: &str, line: &str) {
    let text = std::fs::read_to_string(path).expect("read");
    let text: Vec<&str> = text
        .lines()
        .map(|l| if l.starts_with(prefix) { line } else { l })
        .collect();
    std::fs::write(path, text.join("\n") + "\n").expect("write");
}

#[test]
fn configurations_that_name_the_verifier_key_file_keygen_wrote_work_together() {
    // The packaged setup: the configurations are static files naming
    // /etc/deepseek/integrity.pub, which keygen writes at install.
    let dir = shared_tempdir();
    let (_onnx, config) = setup(dir.path());
    let key = dir.path().join("installed.key");
    let public = dir.path().join("installed.pub");
    let integrity = |args: &[&str]| {
        let output = Command::new(binary("deepseek-integrity"))
            .args(args)
            .output()
            .expect("deepseek-integrity");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let (code, out) = integrity(&[
        "keygen",
        "--out",
        key.to_str().expect("utf8"),
        "--verifier-out",
        public.to_str().expect("utf8"),
    ]);
    assert_eq!(code, Some(0), "{out}");
    let integrity_toml = dir.path().join("integrity.toml");
    let database = dir.path().join("integrity.db");
    std::fs::remove_file(&database).expect("the harness's database");
    replace_lines(
        &integrity_toml,
        "signing_key",
        &format!("signing_key = \"{}\"", key.display()),
    );
    let file_line = format!("verifier_key_file = \"{}\"", public.display());
    replace_lines(&integrity_toml, "verifier_key", &file_line);
    let (code, out) = integrity(&["--config", integrity_toml.to_str().expect("utf8"), "init"]);
    assert_eq!(code, Some(0), "{out}");
    replace_lines(&config, "verifier_key", &file_line);
    let check_config = || {
        run_daemon(
            &["check-config", "--config", config.to_str().expect("utf8")],
            Duration::from_secs(30),
        )
    };
    let (code, out) = check_config();
    assert_eq!(code, 0, "{out}");
    // The daemon trusts the file's key, not another: with the key file of
    // another keygen, the database is refused.
    let other = dir.path().join("other.pub");
    let (code, out) = integrity(&[
        "keygen",
        "--out",
        dir.path().join("other.key").to_str().expect("utf8"),
        "--verifier-out",
        other.to_str().expect("utf8"),
    ]);
    assert_eq!(code, Some(0), "{out}");
    std::fs::rename(&other, &public).expect("swap the key file");
    let (code, out) = check_config();
    assert_eq!(code, 65, "{out}");
    assert!(out.contains("not by the pinned verifier key"), "{out}");
}
