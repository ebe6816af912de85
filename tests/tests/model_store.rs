//! The model store (`deepseek-audit model`) with the real binaries: signed
//! bundles from `deepseek-integrity bundle create`, the real audit service,
//! the real signed integrity database. After every step the integrity check
//! is clean (the store and the database agree) and the step is an audit
//! entry; a step that cannot be recorded or verified changes nothing.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use deepseek_tests::{Auditor, binary, model, shared_tempdir};
use serde_json::Value;

/// Runs one of the workspace's binaries: exit code and stdout followed by
/// stderr.
fn run(name: &str, args: &[&str]) -> (i32, String) {
    output(Command::new(binary(name)).args(args))
}

/// Runs `command`: exit code and stdout followed by stderr.
fn output(command: &mut Command) -> (i32, String) {
    let output = command.output().expect("run");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

fn ok(name: &str, args: &[&str]) -> String {
    let (code, out) = run(name, args);
    assert_eq!(code, 0, "{name} {args:?}: {out}");
    out
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf8")
}

/// A store under an integrity database, a release key and an auditor.
struct Site {
    dir: PathBuf,
    store: PathBuf,
    integrity: PathBuf,
    release_pub: PathBuf,
    release_key: PathBuf,
    auditor: Auditor,
}

impl Site {
    fn new(dir: &Path) -> Self {
        let store = dir.join("models");
        std::fs::create_dir_all(&store).expect("store");
        std::fs::create_dir_all(dir.join("etc")).expect("etc");
        std::fs::write(dir.join("etc/a.conf"), b"a\n").expect("conf");
        let key = dir.join("integrity.key");
        let out = ok("deepseek-integrity", &["keygen", "--out", s(&key)]);
        let verifier = out
            .lines()
            .find(|l| l.starts_with("verifier_key"))
            .expect("verifier line")
            .to_owned();
        let integrity = dir.join("integrity.toml");
        std::fs::write(
            &integrity,
            format!(
                "database = \"{}\"\nsigning_key = \"{}\"\n{verifier}\n\
                 [[rule]]\npath = \"{}\"\n\
                 [[rule]]\npath = \"{}\"\npreset = \"model\"\ndigest = \"both\"\n",
                dir.join("integrity.db").display(),
                key.display(),
                dir.join("etc").display(),
                store.display()
            ),
        )
        .expect("integrity.toml");
        ok("deepseek-integrity", &["--config", s(&integrity), "init"]);
        let release_key = dir.join("release.key");
        ok(
            "deepseek-integrity",
            &[
                "bundle",
                "keygen",
                "--name",
                "release-test",
                "--out",
                s(&release_key),
            ],
        );
        Self {
            dir: dir.to_owned(),
            store,
            integrity,
            release_pub: dir.join("release.pub"),
            release_key,
            auditor: Auditor::start(&dir.join("audit")),
        }
    }

    /// A model bundle of `files` (name, content), signed by `key`.
    fn bundle(&self, name: &str, version: &str, files: &[(&str, &[u8])], key: &Path) -> PathBuf {
        let source = self.dir.join(format!("src-{name}-{version}"));
        std::fs::create_dir_all(&source).expect("source");
        for (file, content) in files {
            std::fs::write(source.join(file), content).expect("file");
        }
        let out = self.dir.join(format!("{name}-{version}.bundle"));
        let _ = std::fs::remove_file(&out);
        ok(
            "deepseek-integrity",
            &[
                "bundle",
                "create",
                "--name",
                name,
                "--version",
                version,
                "--kind",
                "model",
                "--key",
                s(key),
                "--out",
                s(&out),
                s(&source),
            ],
        );
        out
    }

    /// `deepseek-audit model` with this site's files, and `args`.
    fn model_command(&self, args: &[&str]) -> Vec<String> {
        let site = [
            "--config",
            s(&self.auditor.config),
            "model",
            "--integrity-config",
            s(&self.integrity),
            "--store",
            s(&self.store),
            "--key",
            s(&self.release_pub),
        ];
        std::iter::once(binary("deepseek-audit").to_str().expect("utf8"))
            .chain(site)
            .chain(args.iter().copied())
            .map(str::to_owned)
            .collect()
    }

    /// Runs `deepseek-audit model ARGS` with this site's files.
    fn model(&self, args: &[&str]) -> (i32, String) {
        let command = self.model_command(args);
        output(Command::new(&command[0]).args(&command[1..]))
    }

    fn import(&self, bundle: &Path, extra: &[&str]) -> (i32, String) {
        let mut args = vec!["import", s(bundle)];
        args.extend_from_slice(extra);
        self.model(&args)
    }

    /// `deepseek-integrity check` is clean: the database, re-signed by
    /// each step, is exactly what is on disk.
    fn assert_clean(&self, step: &str) {
        let (code, out) = run(
            "deepseek-integrity",
            &["--config", s(&self.integrity), "check"],
        );
        assert_eq!(code, 0, "after {step}, the integrity check: {out}");
    }

    fn list(&self) -> Vec<Value> {
        let (code, out) = self.model(&["list", "--json"]);
        assert_eq!(code, 0, "{out}");
        serde_json::from_str(&out).expect("a JSON list")
    }

    fn active(&self, name: &str) -> Option<String> {
        self.list()
            .iter()
            .find(|v| v["name"] == name && v["active"] == true)
            .map(|v| v["version"].as_str().expect("version").to_owned())
    }

    /// The model store entries of the audit log.
    fn store_entries(&self) -> Vec<Value> {
        self.auditor
            .entries()
            .into_iter()
            .filter(|e| {
                e["event"]
                    .as_str()
                    .is_some_and(|ev| ev.starts_with("model_"))
            })
            .filter(|e| e["event"] != "model_load")
            .collect()
    }
}

#[test]
fn a_model_is_imported_activated_rolled_back_and_removed_each_step_audited() {
    let tmp = shared_tempdir();
    let site = Site::new(tmp.path());
    let graph = std::fs::read(model("demo.onnx")).expect("demo model");
    let weights = vec![7u8; 3 << 20];
    let v1 = site.bundle(
        "demo",
        "1.0.0",
        &[("model.onnx", &graph), ("weights.bin", &weights)],
        &site.release_key,
    );
    let v2 = site.bundle(
        "demo",
        "2.0.0",
        &[
            ("model.onnx", b"a changed graph"),
            ("weights.bin", &weights),
        ],
        &site.release_key,
    );

    let (code, out) = site.import(&v1, &["--activate"]);
    assert_eq!(code, 0, "{out}");
    site.assert_clean("import --activate");
    assert_eq!(site.active("demo").as_deref(), Some("1.0.0"));
    assert_eq!(
        std::fs::read_link(site.store.join("demo/active")).expect("link"),
        Path::new("1.0.0")
    );

    let (code, out) = site.import(&v2, &[]);
    assert_eq!(code, 0, "{out}");
    site.assert_clean("the second import");
    // The identical file is stored once.
    let inode = |v: &str| {
        std::fs::metadata(site.store.join(format!("demo/{v}/weights.bin")))
            .expect("weights")
            .ino()
    };
    assert_eq!(inode("1.0.0"), inode("2.0.0"), "weights.bin is not shared");
    assert_eq!(
        site.active("demo").as_deref(),
        Some("1.0.0"),
        "import activated"
    );

    let (code, out) = site.model(&["activate", "demo", "2.0.0"]);
    assert_eq!(code, 0, "{out}");
    site.assert_clean("activate");
    assert_eq!(site.active("demo").as_deref(), Some("2.0.0"));

    let (code, out) = site.model(&["rollback", "demo"]);
    assert_eq!(code, 0, "{out}");
    site.assert_clean("rollback");
    assert_eq!(site.active("demo").as_deref(), Some("1.0.0"));

    let (code, out) = site.model(&["rollback", "demo"]);
    assert_eq!(code, 28, "a second rollback with nothing before: {out}");
    assert!(out.contains("nothing to roll back to"), "{out}");
    let (code, out) = site.model(&["remove", "demo", "1.0.0"]);
    assert_eq!(code, 28, "the active version removed: {out}");
    assert!(out.contains("is the active version"), "{out}");

    let (code, out) = site.model(&["remove", "demo", "2.0.0"]);
    assert_eq!(code, 0, "{out}");
    site.assert_clean("remove");
    assert!(!site.store.join("demo/2.0.0").exists());
    assert_eq!(
        std::fs::read(site.store.join("demo/1.0.0/weights.bin")).expect("kept"),
        weights,
        "the shared file went with the removed version"
    );

    let entries = site.store_entries();
    let events: Vec<&str> = entries
        .iter()
        .map(|e| e["event"].as_str().expect("event"))
        .collect();
    assert_eq!(
        events,
        [
            "model_import",
            "model_activate",
            "model_import",
            "model_activate",
            "model_rollback",
            "model_remove"
        ]
    );
    let digest = |bundle: &Path| {
        let (_, out) = run(
            "deepseek-integrity",
            &[
                "--format",
                "json",
                "bundle",
                "verify",
                s(bundle),
                "--key",
                s(&site.release_pub),
            ],
        );
        let v: Value = serde_json::from_str(&out).expect("verify json");
        v["digest"]
            .as_str()
            .expect("digest")
            .trim_start_matches("sha256:")
            .to_owned()
    };
    let uid = nix::unistd::getuid().as_raw().to_string();
    for (entry, version, bundle, previous) in [
        (&entries[0], "1.0.0", &v1, None),
        (&entries[1], "1.0.0", &v1, None),
        (&entries[2], "2.0.0", &v2, Some("1.0.0")),
        (&entries[3], "2.0.0", &v2, Some("1.0.0")),
        (&entries[4], "1.0.0", &v1, Some("2.0.0")),
        (&entries[5], "2.0.0", &v2, Some("1.0.0")),
    ] {
        let d = &entry["details"];
        assert_eq!(entry["model"], "demo", "{entry}");
        assert_eq!(d["version"], version, "{entry}");
        assert_eq!(d["bundle_sha256"], digest(bundle).as_str(), "{entry}");
        assert!(
            d["signer"]
                .as_str()
                .is_some_and(|s| s.starts_with("release-test+")),
            "{entry}"
        );
        assert_eq!(d["operator_uid"], uid.as_str(), "{entry}");
        assert_eq!(d["previous_version"].as_str(), previous, "{entry}");
    }
    assert_eq!(entries[2]["details"]["linked_files"], "1");
    let (code, out) = site.auditor.verify();
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_bad_bundle_or_a_lost_record_changes_nothing() {
    let tmp = shared_tempdir();
    let mut site = Site::new(tmp.path());
    let before = std::fs::read(site.dir.join("integrity.db")).expect("db");
    let unchanged = |site: &Site, step: &str| {
        let now = std::fs::read(site.dir.join("integrity.db")).expect("db");
        assert_eq!(now, before, "{step} changed the database");
        let names: Vec<_> = std::fs::read_dir(&site.store)
            .expect("store")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(names.is_empty(), "{step} left {names:?} in the store");
        site.assert_clean(step);
    };

    // Signed by a key that is not pinned: 26.
    let other = site.dir.join("other.key");
    ok(
        "deepseek-integrity",
        &["bundle", "keygen", "--name", "other", "--out", s(&other)],
    );
    let foreign = site.bundle("demo", "1.0.0", &[("model.onnx", b"x")], &other);
    let (code, out) = site.import(&foreign, &[]);
    assert_eq!(code, 26, "{out}");
    assert!(
        out.contains("no valid signature by a pinned release key"),
        "{out}"
    );
    unchanged(&site, "a foreign bundle");

    // One byte changed in a file: 27.
    let good = site.bundle(
        "demo",
        "1.0.0",
        &[("model.onnx", b"graph bytes")],
        &site.release_key,
    );
    let mut bytes = std::fs::read(&good).expect("bundle");
    let at = bytes
        .windows(11)
        .position(|w| w == b"graph bytes")
        .expect("content");
    bytes[at] ^= 1;
    let tampered = site.dir.join("tampered.bundle");
    std::fs::write(&tampered, &bytes).expect("tampered");
    let (code, out) = site.import(&tampered, &[]);
    assert_eq!(code, 27, "{out}");
    assert!(out.contains("does not match the manifest"), "{out}");
    unchanged(&site, "a tampered bundle");

    // A software bundle: 28.
    let source = site.dir.join("sw");
    std::fs::create_dir_all(&source).expect("sw");
    std::fs::write(source.join("x.deb"), b"deb").expect("deb");
    let software = site.dir.join("sw.bundle");
    ok(
        "deepseek-integrity",
        &[
            "bundle",
            "create",
            "--name",
            "deepseek",
            "--version",
            "1",
            "--kind",
            "software",
            "--key",
            s(&site.release_key),
            "--out",
            s(&software),
            s(&source),
        ],
    );
    let (code, out) = site.import(&software, &[]);
    assert_eq!(code, 28, "{out}");
    assert!(out.contains("not a model bundle"), "{out}");
    unchanged(&site, "a software bundle");

    // The auditor gone: 74, and the verified import is undone.
    site.auditor.stop(nix::sys::signal::Signal::SIGTERM);
    let (code, out) = site.import(&good, &["--activate"]);
    assert_eq!(code, 74, "{out}");
    assert!(
        out.contains("NOT recorded in the audit log, so it was undone"),
        "{out}"
    );
    unchanged(&site, "an import that could not be recorded");

    // Back, the same bundle imports; a second import of it is refused.
    site.auditor.spawn();
    let (code, out) = site.import(&good, &[]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = site.import(&good, &[]);
    assert_eq!(code, 28, "{out}");
    assert!(out.contains("is already in the store"), "{out}");
    site.assert_clean("a refused re-import");
}

#[test]
fn imports_beyond_keep_remove_the_oldest_but_never_the_active_version() {
    let tmp = shared_tempdir();
    let site = Site::new(tmp.path());
    for (i, version) in ["1", "2", "3"].iter().enumerate() {
        let content = format!("graph {i}");
        let bundle = site.bundle(
            "m",
            version,
            &[("model.onnx", content.as_bytes())],
            &site.release_key,
        );
        let extra: &[&str] = if i == 0 {
            &["--activate", "--keep", "2"]
        } else {
            &["--keep", "2"]
        };
        let (code, out) = site.import(&bundle, extra);
        assert_eq!(code, 0, "{out}");
        site.assert_clean(&format!("import {version}"));
    }
    let versions: Vec<String> = site
        .list()
        .iter()
        .map(|v| v["version"].as_str().expect("version").to_owned())
        .collect();
    // 1 is active and stays; of 2 and 3, only the newest fits in 2.
    assert_eq!(versions, ["1", "3"]);
    let removed: Vec<Value> = site
        .store_entries()
        .into_iter()
        .filter(|e| e["event"] == "model_remove")
        .collect();
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0]["details"]["version"], "2");
}

/// `deepseek-audit verify`'s INTEG-MODEL-STORE alone, on this site: its
/// result and the check's JSON.
fn verify_store(site: &Site, keys: &Path) -> (String, String) {
    let profile = site.dir.join("compliance.toml");
    std::fs::write(
        &profile,
        format!(
            "[files]\nintegrity_config = \"{}\"\nmodel_store = \"{}\"\nrelease_keys = \"{}\"\n\
             daemon_config = \"{}\"\n[checks]\nselect = [\"INTEG-MODEL-STORE\"]\n",
            site.integrity.display(),
            site.store.display(),
            keys.display(),
            site.dir.join("no-daemon.toml").display()
        ),
    )
    .expect("profile");
    let (_, out) = run(
        "deepseek-audit",
        &[
            "--config",
            s(&site.auditor.config),
            "verify",
            "--profile",
            s(&profile),
            "--format",
            "json",
        ],
    );
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let check = report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["id"] == "INTEG-MODEL-STORE"))
        .cloned()
        .unwrap_or_else(|| panic!("no INTEG-MODEL-STORE in {report}"));
    (
        check["result"].as_str().expect("result").to_owned(),
        check.to_string(),
    )
}

#[test]
fn verify_proves_each_active_version_is_a_signed_release_as_signed() {
    let tmp = shared_tempdir();
    let site = Site::new(tmp.path());
    let keys = site.dir.join("release-keys");
    std::fs::create_dir_all(&keys).expect("keys");
    let (result, text) = verify_store(&site, &keys);
    assert_eq!(result, "notapplicable", "an empty store: {text}");

    std::fs::copy(&site.release_pub, keys.join("release-test.pub")).expect("pin");
    for version in ["1", "2"] {
        let bundle = site.bundle(
            "m",
            version,
            &[("model.onnx", version.as_bytes())],
            &site.release_key,
        );
        let (code, out) = site.import(&bundle, &["--activate"]);
        assert_eq!(code, 0, "{out}");
    }
    let (result, text) = verify_store(&site, &keys);
    assert_eq!(result, "pass", "{text}");
    assert!(
        text.contains("m 2: bundle sha256:") && text.contains("signed by release-test+"),
        "{text}"
    );

    // The link moved by hand, outside the store's commands.
    let link = site.store.join("m/active");
    std::fs::remove_file(&link).expect("unlink");
    std::os::unix::fs::symlink("1", &link).expect("link");
    let (result, text) = verify_store(&site, &keys);
    assert_eq!(result, "fail", "{text}");
    assert!(text.contains("the link was changed outside"), "{text}");
    std::fs::remove_file(&link).expect("unlink");
    std::os::unix::fs::symlink("2", &link).expect("link");

    // The release key no longer pinned: the origin is no longer proven.
    std::fs::remove_file(keys.join("release-test.pub")).expect("unpin");
    let other = site.dir.join("other.key");
    ok(
        "deepseek-integrity",
        &["bundle", "keygen", "--name", "other", "--out", s(&other)],
    );
    std::fs::copy(site.dir.join("other.pub"), keys.join("other.pub")).expect("pin other");
    let (result, text) = verify_store(&site, &keys);
    assert_eq!(result, "fail", "{text}");
    assert!(
        text.contains("no valid signature by a pinned release key"),
        "{text}"
    );
}

/// What someone else did in the store is never signed by the next
/// operation: a link moved by hand, a planted file, a version left by an
/// interrupted import, a model directory that is a link. Each is refused
/// (24, 28) with the way out, and the way out works.
#[test]
fn the_store_signs_only_what_its_own_operations_did() {
    let tmp = shared_tempdir();
    let site = Site::new(tmp.path());
    let mut bundles = Vec::new();
    for version in ["1", "2", "3"] {
        let content = format!("graph {version}");
        bundles.push(site.bundle(
            "m",
            version,
            &[("model.onnx", content.as_bytes())],
            &site.release_key,
        ));
    }
    // Whatever the operator's umask, the daemon's user can read.
    let (code, out) = output(
        Command::new("sh")
            .args(["-c", "umask 077; exec \"$@\"", "sh"])
            .args(site.model_command(&["import", s(&bundles[0]), "--activate"])),
    );
    assert_eq!(code, 0, "{out}");
    let mode = |p: &str| std::fs::metadata(site.store.join(p)).expect(p).mode() & 0o777;
    assert_eq!(
        [
            mode("m"),
            mode("m/1"),
            mode("m/1/model.onnx"),
            mode("m/.origin/1/origin.json")
        ],
        [0o755, 0o755, 0o644, 0o644]
    );
    let (code, out) = site.import(&bundles[1], &[]);
    assert_eq!(code, 0, "{out}");

    // The link moved by hand: an import refuses to sign it; activating
    // (a recorded step) is the way out.
    let link = site.store.join("m/active");
    std::fs::remove_file(&link).expect("unlink");
    std::os::unix::fs::symlink("2", &link).expect("link");
    let (code, out) = site.import(&bundles[2], &[]);
    assert_eq!(code, 24, "{out}");
    assert!(
        out.contains("differs from the signed integrity database") && out.contains("changed"),
        "{out}"
    );
    assert!(
        !site.store.join("m/3").exists(),
        "the refused import left its version"
    );
    let (code, out) = site.model(&["remove", "m", "1"]);
    assert_eq!(
        code, 28,
        "the signed active version, whatever the link says: {out}"
    );
    let (code, out) = site.model(&["activate", "m", "2"]);
    assert_eq!(code, 0, "{out}");
    site.assert_clean("an activation over a moved link");

    // A planted file, and a version left by an interrupted import.
    std::fs::write(site.store.join("m/notes"), b"x").expect("plant");
    let (code, out) = site.import(&bundles[2], &[]);
    assert_eq!(code, 24, "{out}");
    assert!(out.contains("added") && out.contains("m/notes"), "{out}");
    std::fs::remove_file(site.store.join("m/notes")).expect("unplant");
    std::fs::create_dir(site.store.join("m/9")).expect("leftover");
    std::fs::write(site.store.join("m/9/model.onnx"), b"evil").expect("leftover file");
    let (code, out) = site.model(&["activate", "m", "9"]);
    assert_eq!(code, 28, "an unrecorded version activated: {out}");
    let (code, out) = site.model(&["rollback", "m"]);
    assert_eq!(code, 24, "{out}");
    let (code, out) = site.model(&["remove", "m", "9"]);
    assert_eq!(code, 0, "the way out of a leftover: {out}");
    site.assert_clean("the leftover removed");

    // While the integrity database is locked (an update running), nothing.
    let (code, out) = output(
        Command::new("flock")
            .args(["-n", s(&site.dir)])
            .args(site.model_command(&["import", s(&bundles[2])])),
    );
    assert_eq!(code, 24, "{out}");
    assert!(out.contains("is in use"), "{out}");

    // --keep 1 keeps the active version and the one just imported.
    let (code, out) = site.import(&bundles[2], &["--keep", "1"]);
    assert_eq!(code, 0, "{out}");
    let versions: Vec<String> = site
        .list()
        .iter()
        .map(|v| v["version"].as_str().expect("version").to_owned())
        .collect();
    assert_eq!(versions, ["2", "3"], "{out}");
    site.assert_clean("retention");

    // A model directory that is a link is not followed.
    let elsewhere = site.dir.join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("elsewhere");
    std::os::unix::fs::symlink(&elsewhere, site.store.join("n")).expect("link");
    let n = site.bundle("n", "1", &[("model.onnx", b"n")], &site.release_key);
    let (code, out) = site.import(&n, &[]);
    assert_eq!(code, 28, "{out}");
    assert!(out.contains("is not a directory"), "{out}");
    assert!(
        std::fs::read_dir(&elsewhere)
            .expect("read")
            .next()
            .is_none()
    );
}
