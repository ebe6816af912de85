//! The configuration's parsing and checks, against the errors operators see.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use super::*;

const MINIMAL: &str = r#"
[integrity]
verifier_key = "ed25519:GL0Uc1Liy+LFw6V2AxvuGjFBcQajKQTxz90KtLXo+ys="
[runtime]
library = "/opt/ort/libonnxruntime.so.1.31.1"

[[model]]
name = "demo"
path = "/models/demo.onnx"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/deepseek/deepseekd.toml"), text)
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let config = parse(MINIMAL).expect("minimal config parses");
    assert_eq!(
        config.server.socket,
        PathBuf::from("/run/deepseek/deepseekd.sock")
    );
    assert_eq!(config.server.socket_mode.bits(), 0o660);
    assert_eq!(config.server.allowed_groups, vec!["deepseek".to_owned()]);
    assert_eq!(config.server.allowed_uids, None);
    assert_eq!(config.server.max_body_bytes.get(), 64 * 1024 * 1024);
    assert_eq!(config.server.max_response_bytes.get(), 64 * 1024 * 1024);
    assert_eq!(config.server.max_connections.get(), 256);
    assert_eq!(config.server.shutdown_grace_secs, 30);
    let model = &config.models[0];
    assert_eq!(model.device, Device::Cpu);
    assert_eq!(model.sessions.get(), 1);
    assert_eq!(model.queue_depth, 64);
    assert!(!model.allow_cpu_fallback);
    assert!(model.warm_up);
    assert_eq!(model.infer_timeout(), std::time::Duration::from_secs(60));
    assert_eq!(config.log.format, LogFormat::Text);
    assert!(config.sandbox.enforce);
    assert_eq!(config.sandbox.user, "deepseek");
    assert_eq!(config.sandbox.seccomp, SeccompMode::Enforce);
    assert_eq!(config.limits.alert_requests_per_minute, 100);
    assert_eq!(config.limits.alert_group_requests_per_minute, 0);
    assert_eq!(config.limits.requests_per_minute, 0);
    assert_eq!(config.limits.concurrent_per_client, 0);
}

#[test]
fn limits_name_a_wrong_key_or_value() {
    let text = format!("{MINIMAL}\n[limits]\nrequests_per_hour = 5\n");
    let err = parse(&text).expect_err("unknown key").to_string();
    assert!(err.contains("unknown field `requests_per_hour`"), "{err}");
    let text = format!("{MINIMAL}\n[limits]\nrequests_per_minute = -1\n");
    let err = parse(&text).expect_err("negative").to_string();
    assert!(err.contains("limits.requests_per_minute"), "{err}");
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let text = format!("{MINIMAL}threads = 4\n");
    let err = parse(&text).expect_err("unknown key rejected").to_string();
    assert!(err.starts_with("/etc/deepseek/deepseekd.toml: "), "{err}");
    assert!(err.contains("line 10"), "{err}");
    assert!(err.contains("unknown field `threads`"), "{err}");
    assert!(err.contains("expected one of"), "{err}");
}

#[test]
fn sessions_and_queue_depth_have_a_ceiling() {
    for (key, max) in [("sessions", MAX_SESSIONS), ("queue_depth", MAX_QUEUE_DEPTH)] {
        let at = MINIMAL.replace(
            "name = \"demo\"",
            &format!("name = \"demo\"\n{key} = {max}"),
        );
        parse(&at).expect("the limit itself is accepted");
        let over = MINIMAL.replace(
            "name = \"demo\"",
            &format!("name = \"demo\"\n{key} = 100000"),
        );
        let err = parse(&over).expect_err("over the limit").to_string();
        assert_eq!(
            err,
            format!(
                "/etc/deepseek/deepseekd.toml: model[0].{key}: 100000 is over the limit of {max}"
            )
        );
    }
}

#[test]
fn a_file_that_is_not_utf8_is_invalid_not_unreadable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("deepseekd.toml");
    std::fs::write(&path, b"[server]\nsocket = \"/run/\xff\"\n").expect("write");
    let err = Config::load(&path).expect_err("not UTF-8");
    assert!(!err.is_unreadable(), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("{}: not UTF-8 text: ", path.display())),
        "{err}"
    );
}

#[test]
fn wrong_type_names_the_expected_type() {
    let text = MINIMAL.replace("name = \"demo\"", "name = \"demo\"\nsessions = \"two\"");
    let err = parse(&text).expect_err("bad type rejected").to_string();
    assert!(
        err.starts_with(
            "/etc/deepseek/deepseekd.toml: model[0].sessions: TOML parse error at line 9"
        ),
        "{err}"
    );
    assert!(err.contains("invalid type: string \"two\""), "{err}");
}

#[test]
fn infer_timeout_is_positive_and_for_tensor_models_only() {
    let text = MINIMAL.replace("name = \"demo\"", "name = \"demo\"\ninfer_timeout_ms = 250");
    let config = parse(&text).expect("timeout parses");
    assert_eq!(
        config.models[0].infer_timeout(),
        std::time::Duration::from_millis(250)
    );
    let text = MINIMAL.replace("name = \"demo\"", "name = \"demo\"\ninfer_timeout_ms = 0");
    let err = parse(&text).expect_err("zero rejected").to_string();
    assert!(err.contains("model[0].infer_timeout_ms"), "{err}");
    let text = MINIMAL.replace(
        "name = \"demo\"",
        "name = \"demo\"\nkind = \"causal-lm\"\ninfer_timeout_ms = 250",
    );
    let err = parse(&text).expect_err("causal LM rejected").to_string();
    assert!(
        err.ends_with("model[0].infer_timeout_ms: only for kind = \"tensor\" models; a generation is bounded by its max_tokens"),
        "{err}"
    );
}

#[test]
fn zero_sessions_rejected() {
    let text = MINIMAL.replace("name = \"demo\"", "name = \"demo\"\nsessions = 0");
    let err = parse(&text)
        .expect_err("zero sessions rejected")
        .to_string();
    assert!(err.contains("expected a nonzero usize"), "{err}");
    assert!(
        err.contains("model[0].sessions: TOML parse error at line 9"),
        "{err}"
    );
}

#[test]
fn bad_device_lists_the_choices() {
    let text = MINIMAL.replace("name = \"demo\"", "name = \"demo\"\ndevice = \"gpu\"");
    let err = parse(&text).expect_err("bad device rejected").to_string();
    assert!(
        err.contains("unknown variant `gpu`, expected `cpu` or `cuda`"),
        "{err}"
    );
}

#[test]
fn socket_mode_must_be_permission_bits_with_owner_rw() {
    for (mode, expected) in [("0o4660", "at most 0o777"), ("0o060", "owner needs")] {
        let text = format!("[server]\nsocket_mode = {mode}\n{MINIMAL}");
        let err = parse(&text).expect_err("bad mode rejected").to_string();
        assert!(err.contains(expected), "{mode}: {err}");
        assert!(err.contains("line 2"), "{err}");
    }
}

#[test]
fn a_world_connectable_socket_needs_allow_world_connect() {
    for mode in ["0o777", "0o662"] {
        let text = format!("[server]\nsocket_mode = {mode}\n{MINIMAL}");
        let err = parse(&text).expect_err("o+w refused").to_string();
        assert!(
            err.starts_with("/etc/deepseek/deepseekd.toml: server.socket_mode: ")
                && err.contains("server.allow_world_connect = true"),
            "{err}"
        );
        let allowed =
            format!("[server]\nsocket_mode = {mode}\nallow_world_connect = true\n{MINIMAL}");
        parse(&allowed).expect("allowed on purpose");
    }
    parse(&format!("[server]\nsocket_mode = 0o664\n{MINIMAL}")).expect("o+r cannot connect");
}

#[test]
fn duplicate_model_names_point_at_the_second() {
    let text = format!("{MINIMAL}\n[[model]]\nname = \"demo\"\npath = \"/m.onnx\"\n");
    let err = parse(&text).expect_err("duplicate rejected").to_string();
    assert_eq!(
        err,
        "/etc/deepseek/deepseekd.toml:12: model[1].name: duplicate model name \"demo\": each [[model]] needs its own name"
    );
}

#[test]
fn model_names_are_url_safe() {
    let text = MINIMAL.replace("\"demo\"", "\"../etc\"");
    let err = parse(&text).expect_err("bad name rejected").to_string();
    assert!(err.contains("invalid model name \"../etc\""), "{err}");
}

#[test]
fn invalid_value_inside_a_spanned_key_names_the_plain_key() {
    let text = MINIMAL.replace("\"demo\"", "\"\"");
    let err = parse(&text).expect_err("empty name rejected").to_string();
    assert!(
        err.starts_with("/etc/deepseek/deepseekd.toml: model[0].name: TOML parse error at line 8"),
        "{err}"
    );
}

#[test]
fn integrity_needs_a_verifier_key_unless_switched_off() {
    let text = MINIMAL.replace(
        "verifier_key = \"ed25519:GL0Uc1Liy+LFw6V2AxvuGjFBcQajKQTxz90KtLXo+ys=\"",
        "",
    );
    let err = parse(&text).expect_err("no key").to_string();
    assert!(
        err.contains("integrity.verifier_key: required while integrity.enforce is true")
            && err.contains("integrity.verifier_key_file"),
        "{err}"
    );
    let off = text.replace("[integrity]", "[integrity]\nenforce = false");
    parse(&off).expect("enforce = false needs no key");
    let bad = MINIMAL.replace("ed25519:GL0U", "ed25519:XX0U");
    assert!(
        parse(&bad)
            .expect_err("bad key")
            .to_string()
            .contains("integrity.verifier_key")
    );
}

/// MINIMAL with `integrity.verifier_key_file` naming a file holding
/// `contents` (mode 0644) instead of the inline key.
fn with_key_file(dir: &tempfile::TempDir, contents: &str) -> (PathBuf, String) {
    use std::os::unix::fs::PermissionsExt;
    let file = dir.path().join("integrity.pub");
    std::fs::write(&file, contents).expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let text = MINIMAL.replace(
        "verifier_key = \"ed25519:GL0Uc1Liy+LFw6V2AxvuGjFBcQajKQTxz90KtLXo+ys=\"",
        &format!("verifier_key_file = \"{}\"", file.display()),
    );
    (file, text)
}

#[test]
fn the_verifier_key_may_be_in_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, text) = with_key_file(
        &dir,
        "ed25519:GL0Uc1Liy+LFw6V2AxvuGjFBcQajKQTxz90KtLXo+ys=\n",
    );
    let config = parse(&text).expect("key from the file");
    assert_eq!(
        config.integrity.pinned,
        parse(MINIMAL).expect("inline").integrity.pinned
    );
    assert!(config.integrity.pinned.is_some());
}

#[test]
fn verifier_key_file_errors_name_the_key_and_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (file, text) = with_key_file(&dir, "ed25519:XX0U\n");
    let err = parse(&text).expect_err("bad key").to_string();
    assert!(
        err.starts_with(&format!(
            "/etc/deepseek/deepseekd.toml: integrity.verifier_key_file: {}: ",
            file.display()
        )),
        "{err}"
    );
    std::fs::remove_file(&file).expect("remove");
    let err = parse(&text).expect_err("missing file").to_string();
    assert_eq!(
        err,
        format!(
            "/etc/deepseek/deepseekd.toml: integrity.verifier_key_file: cannot read {}: \
             No such file or directory (os error 2)",
            file.display()
        )
    );
    let relative = MINIMAL.replace(
        "verifier_key = \"ed25519:GL0Uc1Liy+LFw6V2AxvuGjFBcQajKQTxz90KtLXo+ys=\"",
        "verifier_key_file = \"integrity.pub\"",
    );
    let err = parse(&relative).expect_err("relative").to_string();
    assert!(
        err.ends_with(
            "integrity.verifier_key_file: expected an absolute path, got \"integrity.pub\""
        ),
        "{err}"
    );
    let both = MINIMAL.replace(
        "[integrity]",
        &format!("[integrity]\nverifier_key_file = \"{}\"", file.display()),
    );
    let err = parse(&both).expect_err("both").to_string();
    assert_eq!(
        err,
        "/etc/deepseek/deepseekd.toml: integrity.verifier_key_file: conflicts with \
         integrity.verifier_key: set only one of the two"
    );
    // With enforce = false both are ignored, as the inline key is.
    let off = text.replace("[integrity]", "[integrity]\nenforce = false");
    assert!(parse(&off).expect("not read").integrity.pinned.is_none());
}

#[test]
fn causal_lm_models_are_directories() {
    let text = MINIMAL.replace(
        "path = \"/models/demo.onnx\"",
        "kind = \"causal-lm\"\npath = \"/models/r1\"\ncontext_length = 128",
    );
    let config = parse(&text).expect("causal-lm parses");
    let model = &config.models[0];
    assert!(model.is_causal_lm());
    assert_eq!(model.dir(), Path::new("/models/r1"));
    assert_eq!(model.onnx(), PathBuf::from("/models/r1/model.onnx"));
    assert_eq!(model.context_length.map(NonZeroUsize::get), Some(128));
    let fp16 = text.replace("context_length = 128", "model_file = \"model_fp16.onnx\"");
    assert_eq!(
        parse(&fp16).expect("model_file").models[0].onnx(),
        PathBuf::from("/models/r1/model_fp16.onnx")
    );
    let tensor = &parse(MINIMAL).expect("tensor").models[0];
    assert_eq!(tensor.dir(), Path::new("/models"));
    assert_eq!(tensor.onnx(), PathBuf::from("/models/demo.onnx"));
}

/// [`MINIMAL`] with its model served from the store at `/var/lib/deepseek/models`.
fn stored() -> String {
    MINIMAL.replace(
        "path = \"/models/demo.onnx\"",
        "store = \"/var/lib/deepseek/models\"",
    )
}

#[test]
fn a_store_model_is_its_active_version_once_resolved() {
    let mut config = parse(&stored()).expect("store parses");
    let model = &mut config.models[0];
    assert_eq!(model.location_key(), "store");
    // Before the daemon resolves it against the database: the link.
    assert_eq!(
        model.dir(),
        Path::new("/var/lib/deepseek/models/demo/active")
    );
    model.version = Some("1.0.0".to_owned());
    assert_eq!(
        model.dir(),
        Path::new("/var/lib/deepseek/models/demo/1.0.0")
    );
    assert_eq!(
        model.onnx(),
        PathBuf::from("/var/lib/deepseek/models/demo/1.0.0/model.onnx")
    );
    let named = stored().replace(
        "name = \"demo\"",
        "name = \"demo\"\nmodel_file = \"m.onnx\"",
    );
    let mut config = parse(&named).expect("a tensor model in a store may name its graph");
    config.models[0].version = Some("2".to_owned());
    assert_eq!(
        config.models[0].onnx(),
        PathBuf::from("/var/lib/deepseek/models/demo/2/m.onnx")
    );
    let own = MINIMAL.replace(
        "name = \"demo\"",
        "name = \"demo\"\nmodel_file = \"m.onnx\"",
    );
    assert_eq!(
        parse(&own).expect_err("path names the graph").to_string(),
        "/etc/deepseek/deepseekd.toml: model[0].model_file: only for kind = \"causal-lm\" models \
         and models in a store: a tensor model's path names its graph"
    );
}

#[test]
fn a_model_has_either_path_or_store() {
    let both = MINIMAL.replace(
        "path = \"/models/demo.onnx\"",
        "path = \"/models/demo.onnx\"\nstore = \"/var/lib/deepseek/models\"",
    );
    assert_eq!(
        parse(&both).expect_err("both").to_string(),
        "/etc/deepseek/deepseekd.toml: model[0].store: conflicts with model[0].path: set only \
         one of the two"
    );
    let neither = MINIMAL.replace("path = \"/models/demo.onnx\"\n", "");
    assert_eq!(
        parse(&neither).expect_err("neither").to_string(),
        "/etc/deepseek/deepseekd.toml: model[0].path: missing: set path (the model's own files) \
         or store (the model store's root, to serve the model's active version)"
    );
}

#[test]
fn a_relative_store_is_refused() {
    let relative = stored().replace("/var/lib/deepseek/models", "models");
    assert_eq!(
        parse(&relative).expect_err("relative").to_string(),
        "/etc/deepseek/deepseekd.toml: model[0].store: expected an absolute path, got \"models\""
    );
}

#[test]
fn a_store_needs_the_integrity_database_enforced() {
    let unverified = stored().replace("[integrity]", "[integrity]\nenforce = false");
    assert_eq!(
        parse(&unverified).expect_err("unverified").to_string(),
        "/etc/deepseek/deepseekd.toml: model[0].store: requires integrity.enforce = true: the \
         active version served is the one the signed integrity database records"
    );
    // A name the store cannot hold (a bundle label starts with neither '.' nor '-').
    let dash = stored().replace("name = \"demo\"", "name = \"-demo\"");
    let err = parse(&dash).expect_err("dash").to_string();
    assert!(err.contains("model[0].name: "), "{err}");
}

#[test]
fn a_cache_pool_needs_batching() {
    let text = MINIMAL.replace(
        "path = \"/models/demo.onnx\"",
        "kind = \"causal-lm\"\npath = \"/models/r1\"\nbatching = false\nkv_cache_tokens = 4096",
    );
    assert_eq!(
        parse(&text).expect_err("refused").to_string(),
        "/etc/deepseek/deepseekd.toml: model[0].kv_cache_tokens: only with batching: with \
         batching = false each slot holds its own cache of up to context_length positions"
    );
    let batched = text.replace("batching = false\n", "");
    let model = &parse(&batched).expect("batched").models[0];
    assert!(model.batching());
    assert_eq!(model.kv_cache_tokens.map(NonZeroUsize::get), Some(4096));
}

#[test]
fn causal_lm_keys_are_checked() {
    let tensor = MINIMAL.replace("name = \"demo\"", "name = \"demo\"\ncontext_length = 64");
    assert_eq!(
        parse(&tensor).expect_err("tensor").to_string(),
        "/etc/deepseek/deepseekd.toml: model[0].context_length: only for kind = \"causal-lm\" models"
    );
    for key in [
        "max_prompt_bytes = 64",
        "kv_cache_tokens = 64",
        "batching = true",
    ] {
        let tensor = MINIMAL.replace("name = \"demo\"", &format!("name = \"demo\"\n{key}"));
        let name = key.split(' ').next().expect("key");
        assert_eq!(
            parse(&tensor).expect_err("tensor").to_string(),
            format!(
                "/etc/deepseek/deepseekd.toml: model[0].{name}: only for kind = \"causal-lm\" models"
            )
        );
    }
    let escape = MINIMAL.replace(
        "name = \"demo\"",
        "name = \"demo\"\nkind = \"causal-lm\"\nmodel_file = \"../x.onnx\"",
    );
    assert!(
        parse(&escape)
            .expect_err("escape")
            .to_string()
            .contains("model[0].model_file: expected a file name inside the model's directory")
    );
    let kind = MINIMAL.replace("name = \"demo\"", "name = \"demo\"\nkind = \"llm\"");
    assert!(
        parse(&kind)
            .expect_err("kind")
            .to_string()
            .contains("unknown variant `llm`, expected `tensor` or `causal-lm`")
    );
}

#[test]
fn relative_library_path_rejected() {
    let text = MINIMAL.replace("/opt/ort/", "");
    let err = parse(&text)
        .expect_err("relative path rejected")
        .to_string();
    assert!(
        err.contains("runtime.library: expected an absolute path"),
        "{err}"
    );
}

#[test]
fn no_models_rejected() {
    let err = parse("[integrity]\nenforce = false\n[runtime]\nlibrary = \"/x.so\"\n")
        .expect_err("no models rejected")
        .to_string();
    assert!(err.contains("at least one [[model]]"), "{err}");
}

#[test]
fn missing_runtime_section_rejected() {
    let err = parse("[[model]]\nname = \"a\"\npath = \"/a.onnx\"\n")
        .expect_err("missing runtime rejected")
        .to_string();
    assert!(err.contains("missing field `runtime`"), "{err}");
}
