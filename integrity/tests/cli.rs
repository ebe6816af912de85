//! The real `deepseek-integrity` binary on real trees: every kind of change
//! is reported with the right attribute and exit code, and every kind of
//! database tampering is refused.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// A tree to watch, a key and a configuration, in a temporary directory.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = Self { dir };
        std::fs::create_dir_all(f.tree().join("etc/sub")).expect("dirs");
        std::fs::create_dir_all(f.tree().join("models")).expect("dirs");
        std::fs::write(f.tree().join("etc/a.conf"), b"alpha\n").expect("write");
        std::fs::write(f.tree().join("etc/sub/b.conf"), b"beta\n").expect("write");
        let model: Vec<u8> = (0..3 * 1024 * 1024 + 5).map(|i| (i % 253) as u8).collect();
        std::fs::write(f.tree().join("models/m.onnx"), model).expect("write");
        std::os::unix::fs::symlink("a.conf", f.tree().join("etc/link")).expect("symlink");
        let (code, out) = f.run(&["keygen", "--out", f.key().to_str().expect("utf8")]);
        assert_eq!(code, 0, "{out}");
        let verifier = out
            .lines()
            .find(|l| l.starts_with("verifier_key"))
            .expect("verifier line")
            .to_owned();
        let config = format!(
            "database = \"{}\"\nsigning_key = \"{}\"\n{verifier}\nchunked_threshold = 1048576\n\n\
             [[rule]]\npath = \"{}\"\n\n[[rule]]\npath = \"{}\"\npreset = \"model\"\ndigest = \"both\"\n",
            f.database().display(),
            f.key().display(),
            f.tree().join("etc").display(),
            f.tree().join("models").display()
        );
        std::fs::write(f.config(), config).expect("config");
        f
    }

    fn tree(&self) -> PathBuf {
        self.dir.path().join("tree")
    }
    fn key(&self) -> PathBuf {
        self.dir.path().join("integrity.key")
    }
    fn database(&self) -> PathBuf {
        self.dir.path().join("integrity.db")
    }
    fn config(&self) -> PathBuf {
        self.dir.path().join("integrity.toml")
    }

    fn run(&self, args: &[&str]) -> (i32, String) {
        common::run(args)
    }

    fn cmd(&self, command: &str) -> (i32, String) {
        self.run(&["--config", self.config().to_str().expect("utf8"), command])
    }

    fn init(&self) {
        let (code, out) = self.cmd("init");
        assert_eq!(code, 0, "{out}");
    }

    /// `check --format json`: exit code and report.
    fn check_json(&self) -> (i32, Value) {
        let (code, out) = self.run(&[
            "--config",
            self.config().to_str().expect("utf8"),
            "--format",
            "json",
            "check",
        ]);
        let json = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
        (code, json)
    }

    /// The changed attributes of `path` in a check report, as (name, old, new).
    fn changes_of(report: &Value, path: &Path) -> Vec<(String, String, String)> {
        report["changed"]
            .as_array()
            .expect("changed")
            .iter()
            .filter(|c| c["path"] == path.display().to_string())
            .flat_map(|c| c["changes"].as_array().expect("changes").clone())
            .map(|c| {
                (
                    c["attribute"].as_str().expect("attr").to_owned(),
                    c["old"].as_str().expect("old").to_owned(),
                    c["new"].as_str().expect("new").to_owned(),
                )
            })
            .collect()
    }
}

fn attributes(changes: &[(String, String, String)]) -> Vec<&str> {
    changes.iter().map(|(a, _, _)| a.as_str()).collect()
}

#[test]
fn an_unchanged_tree_checks_clean_with_exit_0() {
    let f = Fixture::new();
    f.init();
    let (code, out) = f.cmd("check");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("check: no differences: 0 added, 0 removed, 0 changed (7 entries"),
        "{out}"
    );
    let (code, report) = f.check_json();
    assert_eq!(code, 0);
    assert_eq!(report["verdict"], "no differences");
    assert_eq!(report["exit_code"], 0);
}

#[test]
fn the_model_digest_matches_sha256sum() {
    let f = Fixture::new();
    f.init();
    let (_, out) = f.cmd("show");
    let model = f.tree().join("models/m.onnx");
    let sha256sum = Command::new("sha256sum")
        .arg(&model)
        .output()
        .expect("sha256sum");
    let expected = String::from_utf8_lossy(&sha256sum.stdout)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_owned();
    assert!(
        out.contains(&format!("{} sha256={expected}", model.display())),
        "{out}"
    );
}

#[test]
fn content_permission_and_size_changes_are_reported_with_exit_4() {
    let f = Fixture::new();
    f.init();
    // Same size, one byte different: only the digests can tell.
    let model = f.tree().join("models/m.onnx");
    let mut bytes = std::fs::read(&model).expect("read");
    bytes[2_000_000] ^= 1;
    std::fs::write(&model, &bytes).expect("write");
    std::fs::set_permissions(
        f.tree().join("etc/a.conf"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    std::fs::write(f.tree().join("etc/sub/b.conf"), b"beta, longer\n").expect("write");
    let (code, report) = f.check_json();
    assert_eq!(code, 4, "{report}");
    assert_eq!(
        attributes(&Fixture::changes_of(&report, &model)),
        ["sha256", "chunked"]
    );
    let a = Fixture::changes_of(&report, &f.tree().join("etc/a.conf"));
    assert_eq!(
        a[0],
        ("perm".to_owned(), "0644".to_owned(), "0600".to_owned())
    );
    assert_eq!(attributes(&a), ["perm", "ctime"], "chmod moves ctime too");
    let sub = attributes(&Fixture::changes_of(
        &report,
        &f.tree().join("etc/sub/b.conf"),
    ))
    .join(",");
    assert!(sub.starts_with("size,mtime,ctime,sha256"), "{sub}");
    // Directories whose mtime moved only because of their entries are quiet.
    assert!(Fixture::changes_of(&report, &f.tree().join("etc/sub")).is_empty());
}

#[test]
fn added_and_removed_entries_sum_to_exit_3_without_directory_noise() {
    let f = Fixture::new();
    f.init();
    std::fs::write(f.tree().join("etc/new.conf"), b"new\n").expect("write");
    std::fs::remove_file(f.tree().join("etc/sub/b.conf")).expect("rm");
    let (code, report) = f.check_json();
    assert_eq!(code, 3, "{report}");
    assert_eq!(
        report["added"][0]["path"],
        f.tree().join("etc/new.conf").display().to_string()
    );
    assert_eq!(
        report["removed"][0]["path"],
        f.tree().join("etc/sub/b.conf").display().to_string()
    );
    assert_eq!(
        report["changed"],
        serde_json::json!([]),
        "parent directories are not reported"
    );
}

#[test]
fn a_retargeted_symlink_a_replaced_file_and_a_new_hard_link_are_changes() {
    let f = Fixture::new();
    f.init();
    let link = f.tree().join("etc/link");
    std::fs::remove_file(&link).expect("rm");
    std::os::unix::fs::symlink("sub/b.conf", &link).expect("symlink");
    let b = f.tree().join("etc/sub/b.conf");
    std::fs::remove_file(&b).expect("rm");
    std::fs::create_dir(&b).expect("dir in its place");
    std::fs::hard_link(
        f.tree().join("etc/a.conf"),
        f.dir.path().join("outside-link"),
    )
    .expect("hard link");
    let (code, report) = f.check_json();
    assert_eq!(code, 4, "{report}");
    let link_changes = Fixture::changes_of(&report, &link);
    assert!(
        link_changes.contains(&(
            "target".to_owned(),
            "a.conf".to_owned(),
            "sub/b.conf".to_owned()
        )),
        "{link_changes:?}"
    );
    assert_eq!(
        Fixture::changes_of(&report, &b)[0],
        ("type".to_owned(), "file".to_owned(), "dir".to_owned())
    );
    let a = Fixture::changes_of(&report, &f.tree().join("etc/a.conf"));
    assert!(
        a.contains(&("nlink".to_owned(), "1".to_owned(), "2".to_owned())),
        "{a:?}"
    );
}

#[test]
fn an_owner_change_is_reported() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: changing a file's owner needs root");
        return;
    }
    let f = Fixture::new();
    f.init();
    let conf = f.tree().join("etc/a.conf");
    std::os::unix::fs::chown(&conf, Some(65534), Some(65534)).expect("chown");
    let (code, report) = f.check_json();
    assert_eq!(code, 4);
    let changes = Fixture::changes_of(&report, &conf);
    assert!(
        changes.contains(&("uid".to_owned(), "0".to_owned(), "65534".to_owned())),
        "{changes:?}"
    );
    assert!(
        changes.contains(&("gid".to_owned(), "0".to_owned(), "65534".to_owned())),
        "{changes:?}"
    );
}

#[test]
fn update_accepts_the_current_state_and_check_is_clean_again() {
    let f = Fixture::new();
    f.init();
    std::fs::write(f.tree().join("etc/a.conf"), b"reviewed\n").expect("write");
    let before = std::fs::read(f.database()).expect("db");
    let (code, _) = f.cmd("check");
    assert_eq!(code, 4);
    assert_eq!(
        std::fs::read(f.database()).expect("db"),
        before,
        "check never writes"
    );
    let (code, out) = f.cmd("update");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("update: wrote"), "{out}");
    assert_eq!(f.cmd("check").0, 0);
    let (code, out) = f.cmd("init");
    assert_eq!(code, 24, "init never replaces a database: {out}");
}

#[test]
fn database_tampering_is_refused_with_its_own_exit_code() {
    let f = Fixture::new();
    f.init();
    let original = std::fs::read_to_string(f.database()).expect("db");
    let cases: Vec<(&str, String)> = vec![
        ("one digest edited", {
            let line = original
                .lines()
                .find(|l| l.contains("sha256="))
                .expect("digest line");
            let digest = line
                .split("sha256=")
                .nth(1)
                .expect("digest")
                .split(' ')
                .next()
                .expect("hex");
            let mut flipped = digest.to_owned();
            flipped.replace_range(0..1, if digest.starts_with('0') { "1" } else { "0" });
            original.replace(digest, &flipped)
        }),
        (
            "an entry removed",
            original
                .lines()
                .filter(|l| !l.contains("b.conf"))
                .map(|l| format!("{l}\n"))
                .collect(),
        ),
        ("truncated", original[..original.len() / 2].to_owned()),
        (
            "signature stripped",
            original
                .lines()
                .filter(|l| !l.starts_with("signature "))
                .map(|l| format!("{l}\n"))
                .collect(),
        ),
    ];
    for (what, text) in cases {
        std::fs::write(f.database(), text).expect("write");
        let (code, out) = f.cmd("check");
        assert_eq!(code, 26, "{what}: {out}");
        assert!(
            out.contains("deepseek-integrity: error: database"),
            "{what}: {out}"
        );
    }
    // Re-signed with another key: a valid signature, but not the pinned one.
    std::fs::write(f.database(), &original).expect("restore");
    let other = f.dir.path().join("other.key");
    assert_eq!(
        f.run(&["keygen", "--out", other.to_str().expect("utf8")]).0,
        0
    );
    let config = std::fs::read_to_string(f.config()).expect("config");
    let resigning = config.replace(
        f.key().to_str().expect("utf8"),
        other.to_str().expect("utf8"),
    );
    std::fs::write(f.config(), &resigning).expect("config");
    let (code, out) = f.cmd("update");
    assert_eq!(
        code, 26,
        "a key other than the pinned one cannot sign: {out}"
    );
    assert!(out.contains("is not the pinned verifier_key"), "{out}");
    // An attacker's database: written and validly signed with their own key.
    let (_, keygen) = f.run(&[
        "keygen",
        "--out",
        f.dir.path().join("attacker.key").to_str().expect("utf8"),
    ]);
    let attacker_verifier = keygen
        .lines()
        .find(|l| l.starts_with("verifier_key"))
        .expect("verifier line");
    let attacker_db = f.dir.path().join("attacker.db");
    let attacker_config: String = config
        .lines()
        .map(|l| {
            if l.starts_with("verifier_key") {
                attacker_verifier.to_owned()
            } else {
                l.replace(
                    f.key().to_str().expect("utf8"),
                    f.dir.path().join("attacker.key").to_str().expect("utf8"),
                )
                .replace(
                    f.database().to_str().expect("utf8"),
                    attacker_db.to_str().expect("utf8"),
                )
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(f.config(), &attacker_config).expect("config");
    assert_eq!(f.cmd("init").0, 0);
    std::fs::write(f.config(), &config).expect("config");
    std::fs::copy(&attacker_db, f.database()).expect("swap in the attacker's database");
    let (code, out) = f.cmd("check");
    assert_eq!(code, 26, "{out}");
    assert!(out.contains("not by the pinned verifier key"), "{out}");
    std::fs::write(f.database(), &original).expect("restore");
    assert_eq!(f.cmd("check").0, 0, "the original database is intact");
}

#[test]
fn a_missing_database_and_a_bad_configuration_have_their_codes() {
    let f = Fixture::new();
    let (code, out) = f.cmd("check");
    assert_eq!(code, 24, "{out}");
    assert!(out.contains("cannot read database"), "{out}");
    std::fs::write(f.config(), "database = 1\n").expect("config");
    let (code, out) = f.cmd("check");
    assert_eq!(code, 17, "{out}");
    assert!(
        out.contains("integrity.toml: database: TOML parse error at line 1"),
        "{out}"
    );
}

#[test]
fn a_signing_key_readable_by_others_is_refused() {
    let f = Fixture::new();
    std::fs::set_permissions(f.key(), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (code, out) = f.cmd("init");
    assert_eq!(code, 18, "{out}");
    assert!(
        out.contains("group and others must have no access (chmod 600)"),
        "{out}"
    );
    assert!(!f.database().exists());
}

#[test]
fn help_documents_commands_and_exit_codes() {
    let f = Fixture::new();
    let (code, help) = f.run(&["--help"]);
    assert_eq!(code, 0);
    for needle in [
        "keygen",
        "init",
        "check",
        "update",
        "show",
        "26  the database signature",
        "1-7 sum of",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

#[test]
fn the_shipped_policy_parses_once_a_key_is_filled_in() {
    // The policy names its verifier key (inline or as a file of an
    // installed system); here it gets the file of a fresh keygen.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/integrity.toml");
    let text = std::fs::read_to_string(&shipped).expect("policies/integrity.toml");
    let f = Fixture::new();
    let public = f.dir.path().join("k2.pub");
    let (code, out) = f.run(&[
        "keygen",
        "--out",
        f.dir.path().join("k2").to_str().expect("utf8"),
        "--verifier-out",
        public.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 0, "{out}");
    let filled: String = text
        .lines()
        .map(|l| {
            if l.starts_with("verifier_key") {
                format!("verifier_key_file = \"{}\"", public.display())
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let config = deepseek_integrity::config::Config::parse(&shipped, &filled)
        .expect("shipped policy parses");
    assert_eq!(
        config.rules.len(),
        text.lines().filter(|l| l.trim() == "[[rule]]").count()
    );
}

#[test]
fn the_fsverity_digest_matches_the_fsverity_tool() {
    if Command::new("fsverity").arg("--version").output().is_err() {
        eprintln!("skipped: the fsverity tool is not installed (apt-get install fsverity)");
        return;
    }
    let f = Fixture::new();
    let config = std::fs::read_to_string(f.config()).expect("config")
        + &format!(
            "\n[[rule]]\npath = \"{}\"\nattributes = [\"size\", \"fsverity\"]\n",
            f.tree().join("models/m.onnx").display()
        );
    std::fs::write(f.config(), config).expect("config");
    f.init();
    let (code, out) = f.run(&[
        "--config",
        f.config().to_str().expect("utf8"),
        "--format",
        "json",
        "show",
    ]);
    assert_eq!(code, 0, "{out}");
    let entries: Value = serde_json::from_str(&out).expect("json");
    let model = f.tree().join("models/m.onnx");
    let entry = entries
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["path"] == model.display().to_string())
        .expect("model entry");
    let tool = Command::new("fsverity")
        .args(["digest", "--hash-alg=sha256", "--block-size=4096"])
        .arg(&model)
        .output()
        .expect("fsverity digest");
    let printed = String::from_utf8_lossy(&tool.stdout);
    let expected = printed
        .split_whitespace()
        .next()
        .and_then(|d| d.strip_prefix("sha256:"))
        .expect("digest");
    assert_eq!(entry["fsverity"], expected);
    // This filesystem has no fs-verity enabled on the file: recorded as off.
    assert_eq!(entry["verity"], false);
}

#[test]
fn a_growing_log_may_grow_but_not_shrink() {
    let f = Fixture::new();
    let log = f.tree().join("etc/app.log");
    std::fs::write(&log, b"line 1\n").expect("write");
    let config = std::fs::read_to_string(f.config()).expect("config")
        + &format!(
            "\n[[rule]]\npath = \"{}\"\npreset = \"log\"\n",
            log.display()
        );
    std::fs::write(f.config(), config).expect("config");
    f.init();
    std::fs::write(&log, b"line 1\nline 2\n").expect("append");
    let (code, report) = f.check_json();
    assert_eq!(code, 0, "growth is expected: {report}");
    std::fs::write(&log, b"line\n").expect("truncate");
    let (code, report) = f.check_json();
    assert_eq!(code, 4, "{report}");
    let changes = Fixture::changes_of(&report, &log);
    assert_eq!(
        attributes(&changes),
        ["size"],
        "the log preset records no digest: {changes:?}"
    );
}

#[test]
fn a_rule_that_stops_recording_the_digest_is_reported_not_silent() {
    let f = Fixture::new();
    f.init();
    let config = std::fs::read_to_string(f.config()).expect("config");
    let etc = format!("path = \"{}\"", f.tree().join("etc").display());
    std::fs::write(
        f.config(),
        config.replacen(&etc, &format!("{etc}\ndigest = \"none\""), 1),
    )
    .expect("config");
    let (code, report) = f.check_json();
    assert_eq!(code, 4, "{report}");
    let changes = Fixture::changes_of(&report, &f.tree().join("etc/a.conf"));
    assert!(
        changes
            .iter()
            .any(|(a, _, new)| a == "sha256" && new == "(not recorded)"),
        "{changes:?}"
    );
}

#[test]
fn configuration_errors_name_the_key() {
    let f = Fixture::new();
    let config = std::fs::read_to_string(f.config()).expect("config");
    std::fs::write(
        f.config(),
        config.replacen("digest = \"both\"", "digest = \"sha512\"", 1),
    )
    .expect("config");
    let (code, out) = f.cmd("check");
    assert_eq!(code, 17, "{out}");
    assert!(out.contains("rule[1].digest: TOML parse error"), "{out}");
    assert!(
        out.contains(
            "unknown variant `sha512`, expected one of `auto`, `sha256`, `chunked`, `both`, `none`"
        ),
        "{out}"
    );
}

#[test]
fn keygen_writes_a_verifier_key_file_that_the_configuration_can_name() {
    let f = Fixture::new();
    let key = f.dir.path().join("k2");
    let public = f.dir.path().join("k2.pub");
    let keygen = |f: &Fixture| {
        f.run(&[
            "keygen",
            "--out",
            key.to_str().expect("utf8"),
            "--verifier-out",
            public.to_str().expect("utf8"),
        ])
    };
    let (code, out) = keygen(&f);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "wrote verifier key {} (mode 0644)",
            public.display()
        )),
        "{out}"
    );
    assert_eq!(
        std::fs::metadata(&public)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777,
        0o644
    );
    let printed = out
        .lines()
        .find_map(|l| l.strip_prefix("verifier_key = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("verifier line");
    assert_eq!(
        std::fs::read_to_string(&public).expect("read"),
        format!("{printed}\n")
    );
    // The configuration names the file instead of holding the key.
    let config = std::fs::read_to_string(f.config()).expect("config");
    let config: String = config
        .lines()
        .map(|l| {
            if l.starts_with("verifier_key") {
                format!("verifier_key_file = \"{}\"", public.display())
            } else if l.starts_with("signing_key") {
                format!("signing_key = \"{}\"", key.display())
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(f.config(), config).expect("config");
    f.init();
    let (code, report) = f.check_json();
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["verifier_key"], printed);
    // keygen never overwrites either file.
    let (code, out) = keygen(&f);
    assert_eq!(code, 18, "{out}");
    assert!(out.contains("refusing to overwrite a signing key"), "{out}");
    let fresh = f.dir.path().join("k3");
    let (code, out) = f.run(&[
        "keygen",
        "--out",
        fresh.to_str().expect("utf8"),
        "--verifier-out",
        public.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 18, "{out}");
    assert!(
        out.contains(&format!(
            "{} already exists; refusing to overwrite a verifier key",
            public.display()
        )),
        "{out}"
    );
    assert!(!fresh.exists(), "keygen leaves both files or neither");
}

#[test]
fn a_missing_verifier_key_file_is_a_configuration_error_naming_it() {
    let f = Fixture::new();
    let config = std::fs::read_to_string(f.config()).expect("config");
    let missing = f.dir.path().join("missing.pub");
    let config: String = config
        .lines()
        .map(|l| {
            if l.starts_with("verifier_key") {
                format!("verifier_key_file = \"{}\"", missing.display())
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(f.config(), config).expect("config");
    let (code, out) = f.cmd("check");
    assert_eq!(code, 17, "{out}");
    assert_eq!(
        out.trim(),
        format!(
            "deepseek-integrity: error: {}: verifier_key_file: cannot read {}: No such file or directory (os error 2)",
            f.config().display(),
            missing.display()
        )
    );
}
