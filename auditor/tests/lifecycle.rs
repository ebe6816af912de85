//! The log over months, with the real binary: rotation into sealed
//! segments, `log archive` to another directory, `log verify` over archive
//! and live log, every way of removing or replacing a segment, key
//! hand-over, and the crash and full-disk guarantees across a rotation.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    KillOnDrop, SMALL_SEGMENTS, append, archive, audit, config, expect_exit, rotated_log, segments,
    serve, setup, setup_with, stop, verifier_key,
};

#[test]
fn segments_rotate_archive_and_verify_as_one_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    rotated_log(d, 200);
    let config = config(d);
    let sealed = segments(&d.join("log"), "log");
    assert!(sealed.len() >= 10, "the log rotated: {sealed:?}");
    assert_eq!(segments(&d.join("log"), "seal").len(), sealed.len());
    let (code, out) = audit(&["-c", &config, "log", "verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("segment 0 (entries 0..") && out.contains(": verified in "),
        "{out}"
    );
    assert!(out.contains("log verified: 200 entries"), "{out}");

    // Retention: nothing is old enough to leave under 30 days.
    let usb_dir = d.join("usb");
    let (code, out) = archive(d, "30", &usb_dir);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("nothing to archive"), "{out}");
    let (code, out) = archive(d, "0", &usb_dir);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("archived segments 0..="), "{out}");
    assert!(
        segments(&d.join("log"), "log").is_empty(),
        "moved, not copied"
    );
    assert_eq!(
        segments(&d.join("log"), "seal").len(),
        sealed.len(),
        "the seals stay"
    );
    assert_eq!(segments(&usb_dir, "log").len(), sealed.len());
    let mode = |p: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).expect("meta").permissions())
            & 0o777
    };
    assert_eq!(
        mode(&usb_dir.join("segments")),
        0o700,
        "private on the medium"
    );
    assert_eq!(mode(&usb_dir.join("segments/00000000.log")), 0o600);

    // The live log alone: the moved segments are named, with where they went.
    let (code, out) = audit(&["-c", &config, "log", "verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("segment 0 (entries 0..") && out.contains("not here, archived to "),
        "{out}"
    );
    assert!(out.contains("log verified: 200 entries"), "{out}");
    // With the archive: every entry checked again, and shown.
    let usb = usb_dir.to_str().expect("utf8");
    let (code, out) = audit(&["-c", &config, "log", "verify", "--archive", usb]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("not here"), "{out}");
    let (code, out) = audit(&["-c", &config, "log", "show", "--archive", usb]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().count(), 200);
    // The archive alone, on a machine with only the verifier key.
    let key = verifier_key(d);
    let (code, out) = audit(&[
        "-c",
        "/nonexistent.toml",
        "log",
        "verify",
        "--archive",
        usb,
        "--archive-only",
        "--key",
        &key,
    ]);
    assert_eq!(code, 0, "{out}");
    // A proof of an archived entry, checked with the key alone.
    let (code, proof) = audit(&["-c", &config, "log", "prove", "5", "--archive", usb]);
    assert_eq!(code, 0, "{proof}");
    let proof_file = d.join("proof.json");
    std::fs::write(&proof_file, &proof).expect("proof");
    let (code, out) = audit(&[
        "-c",
        "/nonexistent.toml",
        "log",
        "check-proof",
        proof_file.to_str().expect("utf8"),
        "--key",
        &key,
    ]);
    assert_eq!(code, 0, "{out}");
    expect_exit(
        &["-c", &config, "log", "prove", "5"],
        2,
        "pass its archive with --archive",
    );

    // A checkpoint kept elsewhere: checked where its entries are.
    // (a seal is a checkpoint note too).
    let trusted = usb_dir.join("segments/00000001.seal");
    let trusted = trusted.to_str().expect("utf8");
    let (code, out) = audit(&[
        "-c",
        &config,
        "log",
        "verify",
        "--archive",
        usb,
        "--trusted-checkpoint",
        trusted,
    ]);
    assert_eq!(code, 0, "{out}");
    expect_exit(
        &[
            "-c",
            &config,
            "log",
            "verify",
            "--trusted-checkpoint",
            trusted,
        ],
        2,
        "whose entries are not here",
    );
    // A byte changed in the archive.
    let third = usb_dir.join("segments/00000002.log");
    let original = std::fs::read(&third).expect("segment");
    std::fs::write(
        &third,
        String::from_utf8_lossy(&original).replacen("\"status\":200", "\"status\":500", 1),
    )
    .expect("edit");
    expect_exit(
        &["-c", &config, "log", "verify", "--archive", usb],
        2,
        "00000002.log",
    );
    // The archive copied again over a changed file is refused, not mixed.
    let (code, out) = audit(&[
        "-c",
        &config,
        "log",
        "archive",
        "--to",
        usb,
        "--keep-days",
        "0",
    ]);
    assert_eq!(code, 0, "nothing new to move: {out}");
    std::fs::write(&third, &original).expect("restore");
    // A segment removed from the archive, read alone.
    std::fs::remove_file(&third).expect("remove");
    let out = expect_exit(
        &[
            "-c",
            "/nonexistent.toml",
            "log",
            "verify",
            "--archive",
            usb,
            "--archive-only",
            "--key",
            &key,
        ],
        2,
        "no archive record says where it went: it was removed",
    );
    assert!(out.contains("segment 2 (entries "), "{out}");
    // A seal removed from the live log: the gap is named; the archive's
    // copy still proves the history.
    std::fs::write(&third, &original).expect("restore");
    std::fs::remove_file(d.join("log/segments/00000003.seal")).expect("remove");
    expect_exit(
        &["-c", &config, "log", "verify"],
        2,
        "the seal of segment 3 was removed",
    );
    let (code, out) = audit(&["-c", &config, "log", "verify", "--archive", usb]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_segment_removed_or_replaced_in_the_live_log_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    rotated_log(d, 100);
    let config = config(d);
    let log = d.join("log");
    // Replaced by another, internally consistent, file: the seal's digest.
    let second = log.join("segments/00000001.log");
    let original = std::fs::read(&second).expect("segment");
    std::fs::write(
        &second,
        [&original[..], b""]
            .concat()
            .iter()
            .map(|&b| if b == b'7' { b'8' } else { b })
            .collect::<Vec<u8>>(),
    )
    .expect("replace");
    expect_exit(&["-c", &config, "log", "verify"], 2, "00000001.log");
    let (code, out) = audit(&["-c", &config, "serve"]);
    assert_eq!(code, 74, "never appends to it: {out}");
    // Removed, with no record of an archive.
    std::fs::remove_file(&second).expect("remove");
    let out = expect_exit(
        &["-c", &config, "log", "verify"],
        2,
        "no archive record says where it went: it was removed",
    );
    assert!(out.contains("segment 1 (entries "), "{out}");
    // A seal removed: the gap is named.
    std::fs::write(&second, &original).expect("restore");
    std::fs::remove_file(log.join("segments/00000001.seal")).expect("remove");
    expect_exit(
        &["-c", &config, "log", "verify"],
        2,
        "the seal of segment 1 was removed",
    );
}

/// Cuts the log back to its last seal, as if the service had crashed in
/// the rotation that wrote it: the active file and the checkpoints after
/// the seal removed. Returns the last sealed segment and its end.
fn cut_back_to_last_seal(d: &Path) -> (PathBuf, u64) {
    let (code, out) = audit(&["-c", &config(d), "log", "verify"]);
    assert_eq!(code, 0, "{out}");
    let end: u64 = out
        .lines()
        .rfind(|l| l.starts_with("segment "))
        .and_then(|l| l.split("..").nth(1)?.split(',').next()?.parse().ok())
        .expect("a sealed segment");
    let log = d.join("log");
    for checkpoint in std::fs::read_dir(log.join("checkpoints"))
        .expect("checkpoints")
        .flatten()
    {
        let size: u64 = checkpoint
            .file_name()
            .to_string_lossy()
            .trim_end_matches(".note")
            .parse()
            .unwrap_or(0);
        if size > end {
            std::fs::remove_file(checkpoint.path()).expect("remove");
        }
    }
    std::fs::remove_file(log.join("entries.log")).expect("remove");
    (segments(&log, "log").pop().expect("a segment"), end)
}

#[test]
fn a_rotation_cut_short_by_a_crash_is_finished_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    rotated_log(d, 100);
    let config = config(d);
    // The crash came after the seal, before the rename: the sealed file is
    // still the active one.
    let (last, end) = cut_back_to_last_seal(d);
    std::fs::rename(&last, d.join("log/entries.log")).expect("undo the rename");
    // No false alarm meanwhile: the active file is the sealed segment.
    expect_exit(&["-c", &config, "log", "verify"], 0, "log/entries.log");
    let service = serve(d);
    assert_eq!(append(d, 5).len(), 5);
    assert_eq!(stop(service), Some(0));
    assert!(last.exists(), "the rotation was finished");
    let (code, out) = audit(&["-c", &config, "log", "verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("log verified: {} entries", end + 5)),
        "{out}"
    );
    // After the rename, before the new active file.
    let (_, end) = cut_back_to_last_seal(d);
    let (code, out) = audit(&["-c", &config, "log", "verify"]);
    assert_eq!(code, 0, "{out}");
    let service = serve(d);
    assert_eq!(append(d, 1).len(), 1);
    assert_eq!(stop(service), Some(0));
    let (code, out) = audit(&["-c", &config, "log", "verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("log verified: {} entries", end + 1)),
        "{out}"
    );
}

#[test]
fn every_acknowledged_record_survives_a_crash_across_rotations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    setup_with(d, SMALL_SEGMENTS);
    let mut service = serve(d);
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let dir = d.to_owned();
            std::thread::spawn(move || append(&dir, 2000))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while segments(&d.join("log"), "seal").len() < 5 {
        assert!(Instant::now() < deadline, "no rotation");
        std::thread::sleep(Duration::from_millis(2));
    }
    service.kill().expect("SIGKILL during the burst");
    let _ = service.wait();
    let acked: Vec<u64> = writers
        .into_iter()
        .flat_map(|w| w.join().expect("writer"))
        .collect();
    let service = serve(d);
    assert_eq!(stop(service), Some(0));
    let (code, out) = audit(&["-c", &config(d), "log", "export"]);
    assert_eq!(code, 0, "{out}");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&out).expect("json");
    let recorded = entries.len() as u64;
    assert!(
        acked.iter().all(|&seq| seq < recorded),
        "an acknowledged record is missing: {recorded} entries"
    );
    assert!(
        entries
            .iter()
            .enumerate()
            .all(|(i, e)| e["seq"] == i as u64)
    );
}

#[test]
fn segments_rotate_by_age() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    setup_with(d, "segment_max_age_secs = 1\n");
    let service = KillOnDrop(serve(d));
    assert_eq!(append(d, 3).len(), 3);
    // The clock seals it once the first entry is a second old; no deadline
    // races the machine: the wait is long.
    let deadline = Instant::now() + Duration::from_secs(60);
    while segments(&d.join("log"), "seal").is_empty() {
        assert!(Instant::now() < deadline, "never sealed by age");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        append(d, 2).len(),
        2,
        "and records go on in the next segment"
    );
    drop(service);
    expect_exit(
        &["-c", &config(d), "log", "verify"],
        0,
        "segment 0 (entries 0..3, 3)",
    );
}

#[test]
fn the_key_is_handed_over_inside_one_log_and_verification_follows_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let first = setup(d);
    let config = config(d);
    let service = serve(d);
    assert_eq!(append(d, 20).len(), 20);
    assert_eq!(stop(service), Some(0));
    // A new key in signing_key, the old one kept for the hand-over.
    let new_key = d.join("audit-2.key");
    let (code, second) = audit(&[
        "keygen",
        "--name",
        "deepseek-audit/test-2",
        "--out",
        new_key.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 0, "{second}");
    let text = std::fs::read_to_string(&config).expect("config");
    let old_key = d.join("audit.key");
    let switched = text.replace(
        &format!("signing_key = \"{}\"", old_key.display()),
        &format!("signing_key = \"{}\"", new_key.display()),
    );
    assert_ne!(switched, text);
    std::fs::write(&config, &switched).expect("config");
    expect_exit(&["-c", &config, "serve"], 78, "set previous_signing_key");
    std::fs::write(
        &config,
        format!(
            "{switched}previous_signing_key = \"{}\"\n",
            old_key.display()
        ),
    )
    .expect("config");
    let service = serve(d);
    assert_eq!(append(d, 20).len(), 20);
    assert_eq!(stop(service), Some(0));
    // Once handed over, the old key is no longer needed.
    std::fs::write(&config, &switched).expect("config");
    std::fs::remove_file(&old_key).expect("retire the old key");
    let service = serve(d);
    assert_eq!(append(d, 5).len(), 5);
    assert_eq!(stop(service), Some(0));
    let (code, out) = audit(&["-c", &config, "log", "verify"]);
    assert_eq!(code, 0, "{out}");
    let first_key = first.split('"').nth(1).expect("key");
    let second_key = second.trim().split('"').nth(1).expect("key");
    assert!(
        out.contains(&format!(
            "keys, first to current: {first_key} -> {second_key}"
        )),
        "{out}"
    );
    assert!(out.contains("log verified: 46 entries"), "{out}");
    let (_, shown) = audit(&["-c", &config, "log", "show"]);
    assert_eq!(
        shown.lines().filter(|l| l.contains("key_rotated")).count(),
        1,
        "{shown}"
    );
    // A checkpoint signed by the old key after the hand-over is refused.
    let checkpoints = d.join("log/checkpoints");
    let latest = std::fs::read_dir(&checkpoints)
        .expect("checkpoints")
        .flatten()
        .map(|e| e.path())
        .max()
        .expect("one");
    let note = std::fs::read_to_string(&latest).expect("note");
    let forged = note.replace("deepseek-audit/test-2", "deepseek-audit/test");
    std::fs::write(&latest, forged).expect("forge");
    let (code, out) = audit(&["-c", &config, "log", "verify"]);
    assert_eq!(code, 2, "{out}");
    // Verification from the new key alone fails in the first segment,
    // at the old key's checkpoint.
    std::fs::write(&latest, note).expect("restore");
    let (code, out) = audit(&["-c", &config, "log", "verify", "--key", second_key]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(
            "00000000000000000020.note: not signed by the verifier key deepseek-audit/test-2"
        ),
        "{out}"
    );
}

#[test]
fn with_the_disk_full_across_rotations_no_acknowledged_record_is_lost() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let small = d.join("log");
    std::fs::create_dir(&small).expect("dir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&small)
        .status();
    if !mounted.is_ok_and(|s| s.success()) {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    // With the floor at one byte, writes themselves hit ENOSPC.
    setup_with(d, "segment_max_bytes = 3000\n");
    std::fs::write(small.join("filler"), vec![0u8; 900 << 10]).expect("fill most of the disk");
    let mut service = serve(d);
    let acked = append(d, 5000);
    assert!(
        !acked.is_empty() && acked.len() < 5000,
        "{} acknowledged",
        acked.len()
    );
    let status = service.wait().expect("the service stops");
    let stderr = std::fs::read_to_string(d.join("serve.err")).unwrap_or_default();
    assert_eq!(status.code(), Some(74), "{stderr}");
    assert!(
        segments(&small, "seal").len() >= 2,
        "it rotated before the disk filled"
    );
    std::fs::remove_file(small.join("filler")).expect("free the disk");
    let service = serve(d);
    assert_eq!(append(d, 3).len(), 3, "back once there is room");
    assert_eq!(stop(service), Some(0));
    let (code, out) = audit(&["-c", &config(d), "log", "export"]);
    assert_eq!(code, 0, "{out}");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&out).expect("json");
    let last = *acked.last().expect("one");
    assert!(
        last < entries.len() as u64,
        "acknowledged {last}, recorded {}",
        entries.len()
    );
    for seq in acked {
        assert_eq!(entries[seq as usize]["event"], "request");
    }
}
