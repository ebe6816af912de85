//! A model served from the model store: the daemon resolves the active
//! version once at start against the signed integrity database, names it in
//! the KServe metadata, `/v1/models` and `model_load`, answers the KServe
//! versioned routes for it only, and refuses a link the database does not
//! record until an operator records it with `deepseek-integrity update`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use deepseek_tests::{
    Auditor, Daemon, binary, get, llm_fixture, model, model_table, ort_library, post_json,
    run_daemon, shared_tempdir, write_config_audited,
};
use serde_json::{Value, json};

/// `ROOT/demo/1.0.0` and `ROOT/demo/2.0.0` (the demo model, its doc string
/// changed so that the versions differ), `ROOT/tiny-r1/1.0.0` (the tiny
/// causal LM), each `active` link naming 1.0.0, as `deepseek-audit model`
/// would leave them.
fn build_store(root: &Path) {
    for version in ["1.0.0", "2.0.0"] {
        let dir = root.join("demo").join(version);
        std::fs::create_dir_all(&dir).expect("version dir");
        let mut bytes = std::fs::read(model("demo.onnx")).expect("demo model");
        if version == "2.0.0" {
            let at = bytes
                .windows(10)
                .position(|w| w == b"y = 2x + 1")
                .expect("doc string");
            bytes[at] = b'z';
        }
        std::fs::write(dir.join("model.onnx"), bytes).expect("write model");
    }
    let lm = root.join("tiny-r1/1.0.0");
    std::fs::create_dir_all(&lm).expect("lm dir");
    for file in std::fs::read_dir(llm_fixture()).expect("fixture") {
        let file = file.expect("entry").path();
        std::fs::copy(&file, lm.join(file.file_name().expect("name"))).expect("copy");
    }
    for name in ["demo", "tiny-r1"] {
        std::os::unix::fs::symlink("1.0.0", root.join(name).join("active")).expect("link");
    }
}

/// Runs `deepseek-integrity --config CONFIG COMMAND`: exit code and output.
fn integrity(config: &Path, command: &str) -> (Option<i32>, String) {
    let output = Command::new(binary("deepseek-integrity"))
        .arg("--config")
        .arg(config)
        .arg(command)
        .output()
        .expect("deepseek-integrity");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

/// A store in `dir`, recorded by `deepseek-integrity init` (a `model` rule
/// over its root), a running auditor, and a configuration serving `demo`
/// and `tiny-r1` from the store beside `plain`, the demo model at a path of
/// its own. Returns the store's root, the configuration and the auditor.
fn setup(dir: &Path) -> (PathBuf, PathBuf, Auditor) {
    let root = dir.join("models");
    build_store(&root);
    let store = |name: &str, kind: &str| {
        format!(
            "[[model]]\nname = \"{name}\"\nkind = \"{kind}\"\nstore = \"{}\"\n",
            root.display()
        )
    };
    let tables = format!(
        "{}\n{}intra_op_threads = 1\n\n{}",
        store("demo", "tensor"),
        store("tiny-r1", "causal-lm"),
        model_table("plain", "demo.onnx", "")
    );
    let auditor = Auditor::start(&dir.join("audit"));
    let config = write_config_audited(
        dir,
        &dir.join("d.sock"),
        &ort_library(),
        "",
        "",
        &tables,
        &auditor.table(),
    );
    // The harness signed the database with its key and wrote the rules
    // (the store's root walked with the `model` preset, which records each
    // link's target); the operator's tool records it again, as on a box.
    let rules = std::fs::read_to_string(dir.join("integrity.toml")).expect("rules");
    assert!(
        rules.contains(&format!(
            "path = \"{}\"\nrecursive = true\npreset = \"model\"",
            root.display()
        )),
        "{rules}"
    );
    std::fs::remove_file(dir.join("integrity.db")).expect("the harness's database");
    let (code, out) = integrity(&dir.join("integrity.toml"), "init");
    assert_eq!(code, Some(0), "{out}");
    (root, config, auditor)
}

fn start(dir: tempfile::TempDir, config: PathBuf) -> Daemon {
    let socket = dir.path().join("d.sock");
    let daemon = Daemon::spawn_with_config(dir, socket, config, &[]);
    daemon.wait_ready();
    daemon
}

/// Stops `d`, which keeps its directory (the auditor's log with it).
fn stop(d: &mut Daemon) {
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

fn x() -> Value {
    json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
}

/// GETs `path`: status and body.
async fn fetch(d: &Daemon, path: &str) -> (u16, Value) {
    let response = get(&d.socket, path).await.expect("get");
    (response.status, response.json())
}

/// Checks that `d` serves `version` of `demo`, and no other, under every
/// KServe route.
async fn serves(d: &Daemon, root: &Path, version: &str, other: &str) {
    let (status, metadata) = fetch(d, "/v2/models/demo").await;
    assert_eq!(status, 200, "{metadata}");
    assert_eq!(metadata["versions"], json!([version]));
    assert_eq!(
        metadata["parameters"]["path"],
        json!(root.join("demo").join(version).join("model.onnx"))
    );
    let versioned = format!("/v2/models/demo/versions/{version}");
    assert_eq!(fetch(d, &versioned).await, (200, metadata));
    let (status, ready) = fetch(d, &format!("{versioned}/ready")).await;
    assert_eq!((status, &ready["ready"]), (200, &json!(true)), "{ready}");
    let response = post_json(&d.socket, &format!("{versioned}/infer"), &x()).await;
    assert_eq!(response.status, 200, "{}", response.json());
    assert_eq!(response.json()["outputs"][1]["data"], json!([24.0]));
    let wrong = format!("/v2/models/demo/versions/{other}");
    for response in [
        post_json(&d.socket, &format!("{wrong}/infer"), &x()).await,
        get(&d.socket, &wrong).await.expect("get"),
        get(&d.socket, &format!("{wrong}/ready"))
            .await
            .expect("get"),
    ] {
        assert_eq!(response.status, 404);
        assert_eq!(
            response.error(),
            format!(
                "model \"demo\" has no version \"{other}\" here: this daemon serves version \"{version}\""
            )
        );
    }
    // A client's version is echoed, but not at any length.
    let long = "v".repeat(60_000);
    let response = get(&d.socket, &format!("/v2/models/demo/versions/{long}"))
        .await
        .expect("get");
    assert_eq!(response.status, 404);
    assert!(response.body.len() < 1024, "{} bytes", response.body.len());
    let (status, models) = fetch(d, "/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(models["data"][0]["id"], "tiny-r1");
    assert_eq!(models["data"][0]["version"], "1.0.0");
}

/// The `model_load` entries the auditor holds for `model`: their versions.
fn loaded_versions(auditor: &Auditor, model: &str) -> Vec<Value> {
    auditor
        .entries()
        .iter()
        .filter(|e| e["event"] == "model_load" && e["model"] == model)
        .map(|e| e["details"]["version"].clone())
        .collect()
}

#[test]
fn a_store_model_is_served_at_its_active_version_under_kserve_versions() {
    let dir = shared_tempdir();
    let (root, config, auditor) = setup(dir.path());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut d = start(dir, config);
    let log = d.log();
    for line in [
        "model store: active version resolved against the signed integrity database model=demo version=1.0.0",
        "model loaded and warmed up model=demo version=1.0.0",
        "causal LM loaded and warmed up model=tiny-r1 version=1.0.0",
    ] {
        assert!(log.contains(line), "{line}:\n{log}");
    }
    runtime.block_on(async {
        serves(&d, &root, "1.0.0", "2.0.0").await;
        // A model with a path of its own has no versions, as before.
        let (status, plain) = fetch(&d, "/v2/models/plain").await;
        assert_eq!((status, &plain["versions"]), (200, &json!([])), "{plain}");
        let response = get(&d.socket, "/v2/models/plain/versions/1.0.0")
            .await
            .expect("get");
        assert_eq!(response.status, 404);
        assert!(response.error().contains("has no versions"), "{response:?}");
        // The link changes under the running daemon: what it resolved at
        // start, verified and loaded is what it serves.
        std::fs::remove_file(root.join("demo/active")).expect("unlink");
        std::os::unix::fs::symlink("2.0.0", root.join("demo/active")).expect("relink");
        serves(&d, &root, "1.0.0", "2.0.0").await;
    });
    stop(&mut d);
    assert_eq!(loaded_versions(&auditor, "demo"), [json!("1.0.0")]);
    assert_eq!(loaded_versions(&auditor, "plain"), [Value::Null]);
    let entries = auditor.entries();
    let infer = entries
        .iter()
        .find(|e| e["event"] == "request" && e["model"] == "demo")
        .expect("the versioned infer is recorded");
    assert_eq!(infer["status"], 200, "{infer}");
    let (verified, out) = auditor.verify();
    assert_eq!(verified, 0, "{out}");
}

#[test]
fn a_link_the_database_does_not_record_is_refused_until_update() {
    let dir = shared_tempdir();
    let (root, config, auditor) = setup(dir.path());
    let link = root.join("demo/active");
    std::fs::remove_file(&link).expect("unlink");
    std::os::unix::fs::symlink("2.0.0", &link).expect("relink");
    let args = ["--config", config.to_str().expect("utf8")];
    let (code, stderr) = run_daemon(&args, Duration::from_secs(30));
    assert_eq!(code, 65, "{stderr}");
    let reason = format!(
        "{} points to 2.0.0, but the signed integrity database records 1.0.0",
        link.display()
    );
    assert!(
        stderr.contains(&format!(
            "model \"demo\" (model store) refused, not loaded: {reason}"
        )),
        "{stderr}"
    );
    let refused = auditor
        .entries()
        .into_iter()
        .find(|e| e["event"] == "model_refused")
        .expect("the refusal is recorded");
    assert_eq!(refused["model"], "demo", "{refused}");
    assert_eq!(refused["details"]["path"], json!(link), "{refused}");
    assert!(
        refused["details"]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with(&reason)),
        "{refused}"
    );
    let check = ["check-config", "--config", config.to_str().expect("utf8")];
    let (code, out) = run_daemon(&check, Duration::from_secs(30));
    assert_eq!((code, out.contains(&reason)), (65, true), "{out}");
    // The operator records the activation; the daemon serves 2.0.0.
    let (code, out) = integrity(&dir.path().join("integrity.toml"), "update");
    assert_eq!(code, Some(0), "{out}");
    let mut d = start(dir, config);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(serves(&d, &root, "2.0.0", "1.0.0"));
    stop(&mut d);
    assert_eq!(loaded_versions(&auditor, "demo"), [json!("2.0.0")]);
}
