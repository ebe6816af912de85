//! Where things are: the workspace and its fixtures, ONNX Runtime, the
//! built binaries, the tests' Python, and temporary directories.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Debian's Prometheus tool `name` (`promtool`, `prometheus-node-exporter`),
/// unpacked by `make test` into `.tools/prometheus`.
pub fn prometheus_tool(name: &str) -> PathBuf {
    let path = workspace().join(".tools/prometheus/usr/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing; `make test` unpacks it",
        path.display()
    );
    path
}

/// Whether this process may create users' connections and read other
/// processes' /proc entries: the peer tests need root.
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
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

/// The committed tiny DeepSeek-R1-style causal LM (fixtures/llm/tiny-r1).
pub fn llm_fixture() -> PathBuf {
    workspace().join("fixtures/llm/tiny-r1")
}

/// A copy of tiny-r1 at `dir/name` with `template` as its
/// `chat_template.jinja` (which takes precedence over
/// `tokenizer_config.json`'s), as an operator gives a model another template.
pub fn llm_fixture_with_template(dir: &Path, name: &str, template: &str) -> PathBuf {
    let copy = dir.join(name);
    fs::create_dir(&copy).expect("mkdir");
    for entry in fs::read_dir(llm_fixture()).expect("fixture") {
        let entry = entry.expect("entry");
        fs::copy(entry.path(), copy.join(entry.file_name())).expect("copy");
    }
    fs::write(copy.join("chat_template.jinja"), template).expect("template");
    copy
}

/// `fixtures/llm/tiny-r1/expected.json`: the prompts and the greedy
/// outputs recorded with Python onnxruntime.
pub fn llm_expected() -> Value {
    let bytes = fs::read(llm_fixture().join("expected.json")).expect("expected.json");
    serde_json::from_slice(&bytes).expect("expected.json is JSON")
}

/// The entry of `list` (an `expected.json` array) named `name`.
pub fn named(list: &Value, name: &str) -> Value {
    list.as_array()
        .expect("an array")
        .iter()
        .find(|entry| entry["name"] == name)
        .unwrap_or_else(|| panic!("no entry named {name:?}"))
        .clone()
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

/// A temporary directory other users can traverse and read: the daemon
/// reads models and configurations in it after switching to `nobody`.
pub fn shared_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}
