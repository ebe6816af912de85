//! The log directory and the archive medium in hostile or careless hands,
//! with the real binary: what a review found, each now refused with its
//! reason and nothing lost.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use common::{
    append, archive, audit, config, expect_exit, rotated_log, segments, serve, setup_with, stop,
    verifier_key,
};

fn entries(d: &Path) -> usize {
    let (code, out) = audit(&["-c", &config(d), "log", "show"]);
    assert_eq!(code, 0, "{out}");
    out.lines().count()
}

#[test]
fn an_archive_into_the_live_log_is_refused_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    rotated_log(d, 60);
    for target in [d.join("log"), d.join("log/segments"), d.join("log/x/../..")] {
        let (code, out) = archive(d, "0", &target);
        assert_eq!(code, 64, "{out}");
        assert!(out.contains("an archive goes somewhere else"), "{out}");
    }
    // A link to the live log is resolved.
    symlink(d.join("log"), d.join("usb")).expect("link");
    let (code, out) = archive(d, "0", &d.join("usb"));
    assert_eq!(code, 64, "{out}");
    assert_eq!(entries(d), 60);
    assert!(!segments(&d.join("log"), "log").is_empty());
}

#[test]
fn links_planted_on_the_medium_are_not_written_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    rotated_log(d, 60);
    let usb = d.join("usb");
    std::fs::create_dir_all(usb.join("segments")).expect("dir");
    let victim = d.join("victim");
    std::fs::write(&victim, b"precious").expect("victim");
    symlink(&victim, usb.join("segments/.00000000.log.new")).expect("link");
    symlink(&victim, d.join("log/segments/.00000000.archived.new")).expect("link");
    let (code, out) = archive(d, "0", &usb);
    assert_eq!(code, 0, "{out}");
    assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
    assert!(
        !std::fs::symlink_metadata(usb.join("segments/00000000.log"))
            .expect("copied")
            .file_type()
            .is_symlink()
    );
    // A medium whose segments/ is a link elsewhere is refused.
    let other = d.join("other");
    std::fs::create_dir(&other).expect("dir");
    std::fs::create_dir(d.join("elsewhere")).expect("dir");
    symlink(d.join("elsewhere"), other.join("segments")).expect("link");
    rotated_more(d);
    let (code, out) = archive(d, "0", &other);
    assert_eq!(code, 74, "{out}");
    assert!(out.contains("not a directory"), "{out}");
    assert!(
        std::fs::read_dir(d.join("elsewhere"))
            .expect("dir")
            .next()
            .is_none()
    );
}

/// More records into the same log, so that there is a new sealed segment.
fn rotated_more(d: &Path) {
    let service = serve(d);
    assert_eq!(append(d, 40).len(), 40);
    assert_eq!(stop(service), Some(0));
}

#[test]
fn an_unsigned_seal_never_moves_the_active_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    rotated_log(d, 60);
    let log = d.join("log");
    let active = std::fs::read(log.join("entries.log")).expect("active");
    assert!(!active.is_empty());
    // A forged seal after the last: the right shape, the active file's
    // digest, no valid signature.
    let last = segments(&log, "seal").pop().expect("a seal");
    let index: u64 = last
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .expect("index");
    let genuine = std::fs::read_to_string(&last).expect("seal");
    let sha = deepseek_integrity::digest::hex(&<sha2::Sha256 as sha2::Digest>::digest(&active));
    let forged: String = genuine
        .lines()
        .map(|l| {
            if l.starts_with("segment ") {
                format!("segment {} 0", index + 1)
            } else if l.starts_with("sha256 ") {
                format!("sha256 {sha}")
            } else {
                l.to_owned()
            }
        })
        .map(|l| l + "\n")
        .collect();
    let forged_path = log.join(format!("segments/{:08}.seal", index + 1));
    std::fs::write(&forged_path, forged).expect("forge");
    expect_exit(&["-c", &config(d), "serve"], 74, "not signed by");
    assert_eq!(
        std::fs::read(log.join("entries.log")).expect("kept"),
        active
    );
    std::fs::remove_file(&forged_path).expect("remove");
    // A segment file without a seal is named, not ignored.
    std::fs::write(log.join(format!("segments/{:08}.log", index + 1)), &active).expect("plant");
    expect_exit(
        &["-c", &config(d), "log", "verify"],
        2,
        "a segment without a seal",
    );
    std::fs::remove_file(log.join(format!("segments/{:08}.log", index + 1))).expect("remove");
    assert_eq!(entries(d), 60);
}

#[test]
fn devices_fifos_and_links_in_place_of_log_files_are_refused_not_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    rotated_log(d, 60);
    let usb = d.join("usb");
    assert_eq!(archive(d, "0", &usb).0, 0);
    let usb_arg = usb.to_str().expect("utf8");
    let config = config(d);
    for (place, make) in [
        ("checkpoints/00000000000000000999.note", "zero"),
        ("segments/00000000.archived", "fifo"),
        ("segments/00000001.log", "zero"),
    ] {
        let path = usb.join(place);
        let saved = std::fs::read(&path).ok();
        let _ = std::fs::remove_file(&path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        if make == "zero" {
            symlink("/dev/zero", &path).expect("link");
        } else {
            assert!(
                Command::new("mkfifo")
                    .arg(&path)
                    .status()
                    .expect("mkfifo")
                    .success()
            );
        }
        let (code, out) = audit(&["-c", &config, "log", "verify", "--archive", usb_arg]);
        assert_ne!(code, 0, "{place}: {out}");
        assert!(
            out.contains(place.rsplit('/').next().expect("name")),
            "{place}: {out}"
        );
        std::fs::remove_file(&path).expect("remove");
        if let Some(saved) = saved {
            std::fs::write(&path, saved).expect("restore");
        }
    }
}

#[test]
fn an_empty_or_missing_archive_and_a_differing_copy_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    rotated_log(d, 60);
    let key = verifier_key(d);
    for empty in [d.join("nothing"), d.join("empty")] {
        let _ = std::fs::create_dir(d.join("empty"));
        let (code, out) = audit(&[
            "-c",
            "/nonexistent.toml",
            "log",
            "verify",
            "--archive",
            empty.to_str().expect("utf8"),
            "--archive-only",
            "--key",
            &key,
        ]);
        assert_eq!(code, 2, "{out}");
        assert!(out.contains("no sealed segment here"), "{out}");
    }
    // A copy on the medium that differs from the live segment.
    let usb = d.join("usb");
    std::fs::create_dir_all(usb.join("segments")).expect("dir");
    for name in ["00000000.seal", "00000000.log"] {
        std::fs::copy(
            d.join("log/segments").join(name),
            usb.join("segments").join(name),
        )
        .expect("copy");
    }
    let edited = std::fs::read_to_string(usb.join("segments/00000000.log"))
        .expect("copy")
        .replacen("\"status\":200", "\"status\":500", 1);
    std::fs::write(usb.join("segments/00000000.log"), edited).expect("edit");
    expect_exit(
        &[
            "-c",
            &config(d),
            "log",
            "verify",
            "--archive",
            usb.to_str().expect("utf8"),
        ],
        2,
        "differ: two different histories",
    );
}

#[test]
fn an_empty_logs_first_checkpoint_moves_with_the_archive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    setup_with(d, common::SMALL_SEGMENTS);
    // Started and stopped with nothing recorded: a checkpoint of size 0.
    assert_eq!(stop(serve(d)), Some(0));
    assert!(d.join("log/checkpoints/00000000000000000000.note").exists());
    rotated_more(d);
    let usb = d.join("usb");
    let (code, out) = archive(d, "0", &usb);
    assert_eq!(code, 0, "{out}");
    assert!(usb.join("checkpoints/00000000000000000000.note").exists());
    // Were it left behind (a crash before it was removed), the log still verifies.
    std::fs::copy(
        usb.join("checkpoints/00000000000000000000.note"),
        d.join("log/checkpoints/00000000000000000000.note"),
    )
    .expect("copy back");
    let (code, out) = audit(&["-c", &config(d), "log", "verify"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_hand_over_without_a_pinned_key_starts_from_the_previous_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    rotated_log(d, 20);
    let config = config(d);
    let text = std::fs::read_to_string(&config).expect("config");
    let unpinned: String = text
        .lines()
        .filter(|l| !l.starts_with("verifier_key"))
        .map(|l| format!("{l}\n"))
        .collect();
    let new_key = d.join("audit-2.key");
    let (code, out) = audit(&[
        "keygen",
        "--name",
        "deepseek-audit/test-2",
        "--out",
        new_key.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 0, "{out}");
    let old_key = d.join("audit.key");
    std::fs::write(
        &config,
        unpinned.replace(
            &format!("signing_key = \"{}\"", old_key.display()),
            &format!(
                "signing_key = \"{}\"\nprevious_signing_key = \"{}\"",
                new_key.display(),
                old_key.display()
            ),
        ),
    )
    .expect("config");
    let service = serve(d);
    assert_eq!(append(d, 3).len(), 3);
    assert_eq!(stop(service), Some(0));
    expect_exit(
        &[
            "-c",
            &config,
            "log",
            "verify",
            "--key",
            &verifier_key_of(&text),
        ],
        0,
        " -> deepseek-audit/test-2+",
    );
}

fn verifier_key_of(config_text: &str) -> String {
    config_text
        .lines()
        .find(|l| l.starts_with("verifier_key"))
        .and_then(|l| l.split('"').nth(1))
        .expect("verifier_key")
        .to_owned()
}

#[test]
fn a_huge_retention_and_an_oversized_trusted_checkpoint_are_refused_in_bounds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    rotated_log(d, 30);
    // Days beyond any clock: nothing is old enough, and nothing overflows.
    let (code, out) = archive(d, "18446744073709551615", &d.join("usb"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("nothing to archive"), "{out}");
    let big = d.join("big.note");
    std::fs::write(&big, vec![b'x'; 20 << 10]).expect("big");
    symlink("/dev/zero", d.join("zero.note")).expect("link");
    for trusted in [big, d.join("zero.note")] {
        let trusted = trusted.to_str().expect("utf8").to_owned();
        let (code, out) = audit(&[
            "-c",
            &config(d),
            "log",
            "verify",
            "--trusted-checkpoint",
            &trusted,
        ]);
        assert_eq!(code, 74, "{out}");
        assert!(out.contains(&trusted), "{out}");
    }
}
