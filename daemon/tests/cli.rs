//! The command line of the real `deepseekd` binary: help, version, and
//! `check-config` with its exit codes and messages.

use std::path::Path;
use std::process::{Command, Output};

fn deepseekd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_deepseekd"))
        .args(args)
        .output()
        .expect("run deepseekd")
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

fn check_config(text: &str) -> (Option<i32>, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("deepseekd.toml");
    std::fs::write(&path, text).expect("write config");
    let output = deepseekd(&["check-config", "--config", path.to_str().expect("utf8")]);
    (output.status.code(), self::text(&output), dir)
}

/// A config whose files exist: this test binary stands in for the library
/// and the model, since check-config only checks that they are readable.
fn valid_config() -> String {
    let file = std::env::current_exe().expect("current exe");
    config_with_model(&format!("path = \"{}\"\n", file.display()))
}

/// A config with one `[[model]]` named demo whose other keys are `model`.
fn config_with_model(model: &str) -> String {
    let file = std::env::current_exe().expect("current exe");
    format!(
        "[server]\nallowed_groups = []\n\n[sandbox]\nuser = \"nobody\"\n\n[integrity]\nenforce = false\n\n[runtime]\nlibrary = \"{}\"\n\n[[model]]\nname = \"demo\"\n{model}",
        file.display()
    )
}

#[test]
fn help_documents_commands_options_and_exit_codes() {
    let output = deepseekd(&["--help"]);
    assert_eq!(output.status.code(), Some(0));
    let help = text(&output);
    for needle in [
        "check-config",
        "--config",
        "/etc/deepseek/deepseekd.toml",
        "78  invalid configuration",
        "69  ONNX Runtime",
        "Unix socket",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

#[test]
fn version_prints_the_package_version() {
    let output = deepseekd(&["--version"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        text(&output).trim(),
        format!("deepseekd {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bad_arguments_exit_64() {
    let output = deepseekd(&["--no-such-flag"]);
    assert_eq!(output.status.code(), Some(64), "{}", text(&output));
}

#[test]
fn check_config_accepts_a_valid_file() {
    let (code, out, dir) = check_config(&valid_config());
    assert_eq!(code, Some(0), "{out}");
    let path = dir.path().join("deepseekd.toml");
    // stdout, then stderr: the verdict, and the warning for the switched-off
    // model verification this test configuration uses.
    assert_eq!(
        out.trim(),
        format!(
            "{}: configuration is valid (1 models)\n\
             deepseekd: warning: integrity.enforce = false: models would be loaded without verification",
            path.display()
        )
    );
}

#[test]
fn check_config_names_file_line_and_key_and_exits_78() {
    let (code, out, dir) = check_config(&format!("{}intra_threads = 4\n", valid_config()));
    assert_eq!(code, Some(78), "{out}");
    let path = dir.path().join("deepseekd.toml");
    assert!(
        out.starts_with(&format!(
            "deepseekd: error: {}: model[0].intra_threads: TOML parse error at line 16",
            path.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(
            "unknown field `intra_threads`, expected one of `name`, `kind`, `path`, `store`, `model_file`"
        ),
        "{out}"
    );
}

#[test]
fn check_config_reports_malformed_toml() {
    let (code, out, _dir) = check_config("[server\nsocket = 1\n");
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("TOML parse error at line 1"), "{out}");
}

#[test]
fn check_config_reports_missing_files_by_key() {
    let config = valid_config().replacen("path = \"", "path = \"/nonexistent", 1);
    let (code, out, _dir) = check_config(&config);
    assert_eq!(code, Some(78), "{out}");
    assert!(
        out.contains("model[0].path: cannot read /nonexistent"),
        "{out}"
    );
}

#[test]
fn check_config_reports_unknown_groups() {
    let config = valid_config().replace(
        "allowed_groups = []",
        "allowed_groups = [\"no-such-group-42\"]",
    );
    let (code, out, _dir) = check_config(&config);
    assert_eq!(code, Some(78), "{out}");
    assert!(
        out.contains(
            "server.allowed_groups: group \"no-such-group-42\" does not exist on this system"
        ),
        "{out}"
    );
}

#[test]
fn check_config_reads_the_verifier_key_file_and_names_it() {
    let config = valid_config().replace(
        "enforce = false",
        "verifier_key_file = \"/nonexistent/integrity.pub\"",
    );
    let (code, out, dir) = check_config(&config);
    assert_eq!(code, Some(78), "{out}");
    assert_eq!(
        out.trim(),
        format!(
            "deepseekd: error: {}: integrity.verifier_key_file: cannot read /nonexistent/integrity.pub: \
             No such file or directory (os error 2)",
            dir.path().join("deepseekd.toml").display()
        )
    );
    // A file holding the keygen line rather than the bare key.
    let public = dir.path().join("integrity.pub");
    std::fs::write(
        &public,
        "verifier_key = \"ed25519:GL0Uc1Liy+LFw6V2AxvuGjFBcQajKQTxz90KtLXo+ys=\"\n",
    )
    .expect("key file");
    std::fs::set_permissions(
        &public,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644),
    )
    .expect("chmod");
    let config = config.replace("/nonexistent/integrity.pub", public.to_str().expect("utf8"));
    let (code, out, _dir) = check_config(&config);
    assert_eq!(code, Some(78), "{out}");
    assert!(
        out.contains(&format!(
            "integrity.verifier_key_file: {}: expected \"ed25519:\" followed by base64",
            public.display()
        )),
        "{out}"
    );
}

#[test]
fn missing_config_file_exits_66() {
    let output = deepseekd(&["check-config", "--config", "/nonexistent/deepseekd.toml"]);
    assert_eq!(output.status.code(), Some(66));
    assert_eq!(
        text(&output).trim(),
        "deepseekd: error: cannot read configuration file /nonexistent/deepseekd.toml: No such file or directory (os error 2)"
    );
}

#[test]
fn shipped_example_config_parses_once_a_key_is_filled_in() {
    // packaging/deepseekd.toml references paths of an installed system (the
    // verifier key file among them); its keys and values must still parse,
    // with the verifier key filled in.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/deepseekd.toml");
    let text = std::fs::read_to_string(&example).expect("example config");
    let filled: String = text
        .lines()
        .map(|l| {
            if l.starts_with("verifier_key") {
                "verifier_key = \"ed25519:GL0Uc1Liy+LFw6V2AxvuGjFBcQajKQTxz90KtLXo+ys=\""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    deepseekd::config::Config::parse(&example, &filled).expect("example config is valid");
}

#[test]
fn print_policy_shows_landlock_rules_and_seccomp_filters() {
    let (_, _, dir) = check_config(&valid_config());
    let path = dir.path().join("deepseekd.toml");
    let output = deepseekd(&["print-policy", "--config", path.to_str().expect("utf8")]);
    assert_eq!(output.status.code(), Some(0));
    let policy = text(&output);
    let exe_dir = std::env::current_exe()
        .expect("exe")
        .parent()
        .expect("dir")
        .display()
        .to_string();
    for needle in [
        "Landlock: ABI 6 required in full",
        &exe_dir,
        "TCP bind and connect: denied (no rule)",
        "scoped to this process: AbstractUnixSocket, Signal",
        "seccomp (cpu variant",
        "any other syscall kills the process",
        "clone (restricted arguments)",
        "socket() for any family but AF_UNIX fails with EAFNOSUPPORT",
    ] {
        assert!(
            policy.contains(needle),
            "print-policy lacks {needle:?}:\n{policy}"
        );
    }
    assert!(
        !policy.lines().any(|l| l.trim_start().starts_with("bind ")),
        "no bind in the CPU allow-list:\n{policy}"
    );
}

#[test]
fn check_config_parses_a_causal_lms_tokenizer_and_template() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/llm/tiny-r1");
    let copy = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(&fixture).expect("fixture") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), copy.path().join(entry.file_name())).expect("copy");
    }
    let config = config_with_model(&format!(
        "kind = \"causal-lm\"\npath = \"{}\"\n",
        copy.path().display()
    ));
    let (code, out, _dir) = check_config(&config);
    assert_eq!(code, Some(0), "{out}");
    std::fs::write(copy.path().join("tokenizer.json"), "{").expect("break it");
    let (code, out, _dir) = check_config(&config);
    assert_eq!(code, Some(65), "{out}");
    assert!(
        out.contains(&format!(
            "deepseekd: error: model \"demo\" (causal-lm): {}: EOF while parsing",
            copy.path().join("tokenizer.json").display()
        )),
        "{out}"
    );
}

/// A copy of the tiny-r1 fixture, for configs that point at a causal LM.
fn tiny_r1_copy() -> tempfile::TempDir {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/llm/tiny-r1");
    let copy = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(&fixture).expect("fixture") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), copy.path().join(entry.file_name())).expect("copy");
    }
    copy
}

#[test]
fn check_config_refuses_a_context_longer_than_the_model_supports_as_startup_does() {
    let copy = tiny_r1_copy();
    let model = |extra: &str| {
        config_with_model(&format!(
            "kind = \"causal-lm\"\npath = \"{}\"\n{extra}",
            copy.path().display()
        ))
    };
    let (code, out, _dir) = check_config(&model("context_length = 256\n"));
    assert_eq!(code, Some(0), "{out}");
    // Start-up refuses it with 65, when the model loads; check-config too.
    let (code, out, _dir) = check_config(&model("context_length = 100000\n"));
    assert_eq!(code, Some(65), "{out}");
    assert!(
        out.contains(&format!(
            "model[0].context_length = 100000 exceeds max_position_embeddings = 256 in {}",
            copy.path().join("config.json").display()
        )),
        "{out}"
    );
}

#[test]
fn check_config_refuses_absurd_sessions_and_queue_depth() {
    for (key, max) in [("sessions", 256), ("queue_depth", 65536)] {
        let (code, out, _dir) = check_config(&valid_config().replace(
            "name = \"demo\"\n",
            &format!("name = \"demo\"\n{key} = 100000\n"),
        ));
        assert_eq!(code, Some(78), "{out}");
        assert!(
            out.contains(&format!(
                "model[0].{key}: 100000 is over the limit of {max}"
            )),
            "{out}"
        );
    }
}

#[test]
fn a_config_file_that_is_not_utf8_exits_78_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("deepseekd.toml");
    let mut bytes = valid_config().into_bytes();
    bytes.extend_from_slice(b"# caf\xe9\n");
    std::fs::write(&path, bytes).expect("write config");
    let output = deepseekd(&["check-config", "--config", path.to_str().expect("utf8")]);
    let out = text(&output);
    assert_eq!(output.status.code(), Some(78), "{out}");
    assert!(
        out.contains(&format!(
            "deepseekd: error: {}: not UTF-8 text: invalid utf-8 sequence",
            path.display()
        )),
        "{out}"
    );
}
