//! `deepseek-integrity bundle`: the real binary on real files and keys.
//! Each refusal is shown on a bundle that is otherwise sound; the crafted
//! ones are signed with the pinned key, so that what is refused is the
//! archive itself, not a missing signature.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use deepseek_integrity::bundle::manifest::{FORMAT, signed_text};
use deepseek_integrity::bundle::{FileEntry, Kind, Manifest};
use deepseek_integrity::digest::sha256_hex;
use deepseek_integrity::note::NoteSigner;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// A source tree (a nested file and a 3 MB one) and a release key.
    fn new() -> Self {
        let f = Self {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        std::fs::create_dir_all(f.source().join("tokenizer")).expect("dirs");
        std::fs::write(f.source().join("config.json"), b"{\"layers\":2}\n").expect("write");
        std::fs::write(f.source().join("tokenizer/vocab.txt"), b"a\nb\n").expect("write");
        let weights: Vec<u8> = (0..3_000_003u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(f.source().join("model.onnx"), weights).expect("write");
        let (code, out) = f.run(&[
            "bundle",
            "keygen",
            "--name",
            "release-test",
            "--out",
            &f.path("release.key"),
        ]);
        assert_eq!(code, 0, "{out}");
        f
    }

    /// [`Self::new`] with `tiny.bundle` made of the source tree.
    fn created() -> Self {
        let f = Self::new();
        let (code, out) = f.create("tiny.bundle");
        assert_eq!(code, 0, "{out}");
        f
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn source(&self) -> PathBuf {
        self.dir.path().join("source")
    }

    fn run(&self, args: &[&str]) -> (i32, String) {
        common::run(args)
    }

    fn create(&self, out: &str) -> (i32, String) {
        self.run(&[
            "bundle",
            "create",
            "--name",
            "tiny",
            "--version",
            "2026.12.1",
            "--kind",
            "model",
            "--key",
            &self.path("release.key"),
            "--out",
            &self.path(out),
            self.source().to_str().expect("utf8"),
        ])
    }

    fn verify(&self, bundle: &str, extra: &[&str]) -> (i32, String) {
        let (bundle, key) = (self.path(bundle), self.path("release.pub"));
        let mut args = vec!["bundle", "verify", &bundle, "--key", &key];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    fn signer(&self) -> NoteSigner {
        let text = std::fs::read_to_string(self.path("release.key")).expect("key");
        NoteSigner::parse(&text).expect("signer")
    }

    /// A bundle of `members` (name, type, content) under a manifest listing
    /// `files`, signed by the release key.
    fn craft(&self, out: &str, files: Vec<FileEntry>, members: &[Member]) {
        self.craft_signed(out, files, members, None);
    }

    /// The same, its signature made for `signed_for` (bytes standing for
    /// another manifest) instead of its own manifest.
    fn craft_signed(
        &self,
        out: &str,
        files: Vec<FileEntry>,
        members: &[Member],
        signed_for: Option<&[u8]>,
    ) {
        self.craft_with_note(out, files, members, signed_for, None);
    }

    /// The same with `note` as `manifest.sig`, signed or not.
    fn craft_with_note(
        &self,
        out: &str,
        files: Vec<FileEntry>,
        members: &[Member],
        signed_for: Option<&[u8]>,
        note: Option<&str>,
    ) {
        let manifest = Manifest {
            format: FORMAT.to_owned(),
            name: "tiny".into(),
            version: "1".into(),
            kind: Kind::Model,
            created: "2026-12-05T00:00:00Z".into(),
            builder: "test".into(),
            sbom: None,
            files,
        };
        let bytes = manifest.to_bytes();
        let note = note.map_or_else(
            || {
                self.signer()
                    .sign(&signed_text(
                        &manifest,
                        &sha256_hex(signed_for.unwrap_or(&bytes)),
                    ))
                    .expect("sign")
            },
            str::to_owned,
        );
        let mut archive = tar::Builder::new(Vec::new());
        let mut append = |name: &str, kind: tar::EntryType, data: &[u8]| {
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            if kind == tar::EntryType::Symlink {
                header.set_link_name("../../etc/passwd").expect("link");
            }
            // Paths the builder would refuse (`..`) are written raw.
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_cksum();
            archive.append(&header, data).expect("append");
        };
        append("manifest.json", tar::EntryType::Regular, &bytes);
        append("manifest.sig", tar::EntryType::Regular, note.as_bytes());
        for (name, kind, data) in members {
            append(name, *kind, data);
        }
        std::fs::write(self.path(out), archive.into_inner().expect("finish")).expect("write");
    }
}

fn entry(path: &str, data: &[u8]) -> FileEntry {
    FileEntry {
        path: path.into(),
        size: data.len() as u64,
        sha256: sha256_hex(data),
        chunked_sha256: None,
    }
}

fn refused(result: (i32, String), code: i32, needle: &str) {
    let (got, out) = result;
    assert_eq!(got, code, "{out}");
    assert!(out.contains(needle), "expected {needle:?} in:\n{out}");
}

#[test]
fn a_bundle_verifies_with_only_the_public_key_and_extracts_the_same_files() {
    let f = Fixture::new();
    let (code, out) = f.create("tiny.bundle");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("model tiny 2026.12.1, 3 files, 3000020 bytes"),
        "{out}"
    );
    // The same files give the same archive but for `created`: the layout
    // is fixed (names sorted, owner 0, time 0).
    let (code, out) = f.verify("tiny.bundle", &["--extract", &f.path("unpacked")]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("signed by release-test+"), "{out}");
    for name in ["config.json", "tokenizer/vocab.txt", "model.onnx"] {
        assert_eq!(
            std::fs::read(f.source().join(name)).expect("source"),
            std::fs::read(Path::new(&f.path("unpacked")).join(name)).expect("extracted"),
            "{name}"
        );
    }
    // From standard input, and as JSON with the manifest.
    let output = Command::new(env!("CARGO_BIN_EXE_deepseek-integrity"))
        .args([
            "--format",
            "json",
            "bundle",
            "verify",
            "-",
            "--key",
            &f.path("release.pub"),
        ])
        .stdin(std::fs::File::open(f.path("tiny.bundle")).expect("bundle"))
        .output()
        .expect("run");
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(
        report["manifest"]["files"].as_array().map(Vec::len),
        Some(3)
    );
    assert!(
        report["digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:"))
    );
    // Not over an existing bundle or directory.
    refused(f.create("tiny.bundle"), 18, "exists");
    refused(
        f.verify("tiny.bundle", &["--extract", &f.path("unpacked")]),
        18,
        "exists",
    );
}

#[test]
fn a_changed_byte_anywhere_is_refused_and_nothing_is_extracted() {
    let f = Fixture::created();
    let original = std::fs::read(f.path("tiny.bundle")).expect("bundle");
    // A byte of content, of a header, of padding, of the manifest, of the
    // signature, and of the end marker: every one is refused.
    let content = original
        .windows(6)
        .position(|w| w == b"a\nb\n\0\0")
        .expect("vocab content");
    let signature = original
        .windows(12)
        .position(|w| w == b"manifest.sig")
        .expect("signature header")
        + 512;
    let cases = [
        (
            content,
            27,
            "tokenizer/vocab.txt: its content does not match",
        ),
        (content + 5, 27, "its padding holds data"),
        (signature, 26, "no valid signature"),
        (600, 26, "signed another manifest, not this one"),
        (100, 27, "not the canonical one"),
        (original.len() - 10, 27, "end marker"),
    ];
    for (offset, code, needle) in cases {
        let mut bytes = original.clone();
        bytes[offset] ^= 0x20;
        std::fs::write(f.path("bad.bundle"), &bytes).expect("write");
        let extract = f.path("out");
        refused(
            f.verify("bad.bundle", &["--extract", &extract]),
            code,
            needle,
        );
        assert!(
            !Path::new(&extract).exists(),
            "offset {offset}: nothing extracted"
        );
        assert!(
            !Path::new(&f.path(".out.partial")).exists(),
            "offset {offset}: no leftovers"
        );
    }
    // Cut short, or with data appended.
    std::fs::write(f.path("short.bundle"), &original[..original.len() / 2]).expect("write");
    refused(f.verify("short.bundle", &[]), 27, "model.onnx: it ends");
    let mut longer = original.clone();
    longer.extend_from_slice(b"appended");
    std::fs::write(f.path("long.bundle"), longer).expect("write");
    refused(
        f.verify("long.bundle", &[]),
        27,
        "data after the archive's end marker",
    );
}

#[test]
fn a_wrong_key_no_key_or_a_foreign_signature_is_refused() {
    let f = Fixture::created();
    let (code, out) = f.run(&[
        "bundle",
        "keygen",
        "--name",
        "other",
        "--out",
        &f.path("other.key"),
    ]);
    assert_eq!(code, 0, "{out}");
    refused(
        f.run(&[
            "bundle",
            "verify",
            &f.path("tiny.bundle"),
            "--key",
            &f.path("other.pub"),
        ]),
        26,
        "pinned: other; the note names: \"release-test\"",
    );
    // A key directory: several named keys, one of them the signer.
    let keys = f.path("keys");
    std::fs::create_dir(&keys).expect("dir");
    std::fs::copy(f.path("other.pub"), format!("{keys}/other.pub")).expect("copy");
    refused(
        f.run(&[
            "bundle",
            "verify",
            &f.path("tiny.bundle"),
            "--key",
            &format!("{keys}/missing.pub"),
        ]),
        18,
        "missing.pub",
    );
    std::fs::write(format!("{keys}/broken.pub"), "not a key\n").expect("write");
    refused(
        f.run(&[
            "bundle",
            "verify",
            &f.path("tiny.bundle"),
            "--key",
            &format!("{keys}/broken.pub"),
        ]),
        26,
        "broken.pub",
    );
    // A key that exists is not made again, and a bundle that cannot be read
    // (a directory here; failing media) is an I/O error, not a bad bundle.
    refused(
        f.run(&[
            "bundle",
            "keygen",
            "--name",
            "again",
            "--out",
            &f.path("other.key"),
        ]),
        18,
        "already exists",
    );
    refused(
        f.run(&["bundle", "verify", &keys, "--key", &f.path("release.pub")]),
        18,
        "cannot read the bundle",
    );
    // A signature by the pinned key, but for another manifest.
    f.craft_signed(
        "mixed.bundle",
        vec![entry("a", b"x")],
        &[("files/a", tar::EntryType::Regular, b"x")],
        Some(b"another manifest"),
    );
    refused(f.verify("mixed.bundle", &[]), 26, "signed another manifest");
    // An unsigned note whose signer name holds terminal escapes: they are
    // quoted in the message, never printed raw.
    f.craft_with_note(
        "escape.bundle",
        vec![entry("a", b"x")],
        &[("files/a", tar::EntryType::Regular, b"x")],
        None,
        Some("text\n\n\u{2014} \u{1b}]0;owned\u{7}\u{1b}[2JFAKE-OK AAAA\n"),
    );
    let (code, out) = f.verify("escape.bundle", &[]);
    assert_eq!(code, 26, "{out}");
    assert!(!out.contains('\u{1b}'), "{out:?}");
    assert!(out.contains("\\u{1b}]0;owned"), "{out:?}");
    f.craft(
        "sound.bundle",
        vec![entry("a", b"x")],
        &[("files/a", tar::EntryType::Regular, b"x")],
    );
    assert_eq!(
        f.verify("sound.bundle", &[]).0,
        0,
        "the crafted bundles are sound otherwise"
    );
}

/// A member: its name, type and content.
type Member<'a> = (&'a str, tar::EntryType, &'a [u8]);

#[test]
fn members_outside_the_manifest_or_not_plain_files_are_refused() {
    use tar::EntryType::{Directory, Link, Regular, Symlink};
    let f = Fixture::new();
    let (a, b) = (entry("a", b"alpha"), entry("b", b"beta"));
    let alpha: Member = ("files/a", Regular, b"alpha");
    let beta: Member = ("files/b", Regular, b"beta");
    let cases: Vec<(Vec<FileEntry>, Vec<Member>, &str)> = vec![
        // An extra file, a missing one, files out of order.
        (
            vec![a.clone()],
            vec![alpha, beta],
            "an extra member after the 1 files",
        ),
        (vec![a.clone(), b.clone()], vec![alpha], "b: missing"),
        (
            vec![a.clone(), b.clone()],
            vec![beta, alpha],
            "out of order",
        ),
        // A member bigger than the manifest says.
        (
            vec![a.clone()],
            vec![("files/a", Regular, b"alpha and more")],
            "14 bytes in the archive, 5 in the manifest",
        ),
        // A symbolic link out of the bundle, a hard link, a directory.
        (
            vec![a.clone()],
            vec![("files/a", Symlink, b"")],
            "a symbolic link: bundles carry regular files only",
        ),
        (vec![a.clone()], vec![("files/a", Link, b"")], "a hard link"),
        (
            vec![a.clone()],
            vec![("files/", Directory, b"")],
            "a directory",
        ),
        // Path traversal, in the manifest and in the archive.
        (
            vec![entry("../../etc/cron.d/x", b"x")],
            vec![("files/../../etc/cron.d/x", Regular, b"x")],
            "an empty, '.' or '..' component",
        ),
        (vec![entry("/etc/passwd", b"x")], vec![], "absolute"),
        (
            vec![a.clone()],
            vec![("files/../a", Regular, b"alpha")],
            "\"files/../a\" is refused: an empty, '.' or '..' component",
        ),
        (
            vec![a.clone()],
            vec![("files/c", Regular, b"alpha")],
            "\"files/c\" is refused: not in the manifest",
        ),
        // A file that is also a directory of another, and a duplicate.
        (
            vec![entry("m", b"1"), entry("m/x", b"2")],
            vec![],
            "m is also a file",
        ),
        (vec![a.clone(), a.clone()], vec![], "listed twice"),
    ];
    for (files, members, needle) in cases {
        f.craft("bad.bundle", files, &members);
        refused(
            f.verify("bad.bundle", &["--extract", &f.path("out")]),
            27,
            needle,
        );
        assert!(
            !Path::new(&f.path("out")).exists(),
            "{needle}: nothing extracted"
        );
        assert!(
            !Path::new(&f.path("a")).exists(),
            "{needle}: nothing written outside"
        );
    }
}

/// A partial directory swapped for a link to elsewhere while the bundle
/// streams in: nothing is written there and nothing is renamed into place.
/// The bundle is fed through a pipe, so the swap happens at a known point
/// (once the first file exists), not at a time.
#[test]
fn a_partial_directory_swapped_during_extraction_is_refused() {
    use std::io::Write;
    let f = Fixture::created();
    let bundle = std::fs::read(f.path("tiny.bundle")).expect("bundle");
    let mut child = Command::new(env!("CARGO_BIN_EXE_deepseek-integrity"))
        .args(["bundle", "verify", "-", "--key", &f.path("release.pub")])
        .args(["--extract", &f.path("out")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    // Everything up to the middle of model.onnx (the second file).
    let middle = bundle
        .windows(16)
        .position(|w| w == b"files/model.onnx")
        .expect("member")
        + 512
        + 4096;
    stdin.write_all(&bundle[..middle]).expect("write");
    stdin.flush().expect("flush");
    let partial = Path::new(&f.path(".out.partial")).join("config.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !partial.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first file never appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::fs::rename(f.path(".out.partial"), f.path("stolen")).expect("move away");
    std::fs::create_dir(f.path("victim")).expect("victim");
    std::os::unix::fs::symlink(f.path("victim"), f.path(".out.partial")).expect("plant");
    stdin.write_all(&bundle[middle..]).expect("write the rest");
    drop(stdin);
    let output = child.wait_with_output().expect("wait");
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(18), "{text}");
    assert!(text.contains("replaced during the extraction"), "{text}");
    assert!(
        !Path::new(&f.path("out")).exists(),
        "nothing renamed into place"
    );
    assert_eq!(
        std::fs::read_dir(f.path("victim")).expect("victim").count(),
        0,
        "nothing written through the link"
    );
}

#[test]
fn create_refuses_what_a_bundle_cannot_carry() {
    let f = Fixture::new();
    std::os::unix::fs::symlink("/etc/passwd", f.source().join("escape")).expect("symlink");
    refused(
        f.create("link.bundle"),
        27,
        "\"escape\" is refused: not a regular file",
    );
    assert!(!Path::new(&f.path("link.bundle")).exists());
    std::fs::remove_file(f.source().join("escape")).expect("rm");
    // A name a ustar header cannot hold after `files/` (101 bytes, no `/`
    // to split at): refused by the manifest's check, not at write time.
    let long = "n".repeat(101);
    std::fs::write(f.source().join(&long), b"x").expect("write");
    refused(f.create("long.bundle"), 27, "too long for a ustar header");
    assert!(!Path::new(&f.path("long.bundle")).exists());
    std::fs::remove_file(f.source().join(&long)).expect("rm");
    let bad_name = f.run(&[
        "bundle",
        "create",
        "--name",
        "../x",
        "--version",
        "1",
        "--kind",
        "model",
        "--key",
        &f.path("release.key"),
        "--out",
        &f.path("x.bundle"),
        f.source().to_str().expect("utf8"),
    ]);
    refused(bad_name, 27, "name \"../x\"");
    // The release key must be private to its owner.
    std::fs::set_permissions(
        f.path("release.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    let (code, _) = f.create("open-key.bundle");
    assert_ne!(code, 0);
}
