//! Fuzz targets for the parsers of the auditor that read bytes someone
//! else may have written: the frames and records a client sends, the
//! lines of the log and the signed checkpoint notes `log verify` reads (an
//! attacker may have edited them), and the inclusion proofs an assessor is
//! handed. Each target takes arbitrary bytes, must never panic, and asserts
//! the parser's invariants itself. docs/development/fuzzing.md has the list;
//! proptest drives them in `cargo test`, libFuzzer in `make fuzz`.

use deepseek_integrity::digest::hex;

use crate::checkpoint::Checkpoint;
use crate::entry::Entry;
use crate::merkle::{self, Hash};
use crate::proof::InclusionProof;
use crate::segment::Seal;
use crate::service::{Reply, Request, read_frame, write_frame};
use crate::verify::{StoredCheckpoint, verify};
use deepseek_integrity::note::{NoteSigner, NoteVerifier};

pub use deepseek_integrity::fuzz::{cases, mutate};

/// The frame limit the target reads with (the service's default is 1 MiB;
/// a small one exercises the refusal as often as the acceptance).
pub const FRAME_LIMIT: usize = 4096;

/// The fuzz targets' checkpoint key (a fixed seed: reproducible crashes).
pub fn signer() -> &'static NoteSigner {
    static SIGNER: std::sync::OnceLock<NoteSigner> = std::sync::OnceLock::new();
    SIGNER.get_or_init(|| NoteSigner::from_seed("deepseek-audit/fuzz", [0x3c; 32]).expect("name"))
}

/// A record as the daemon sends it, framed: the seed of `audit_frames`.
pub fn sample_frames() -> Vec<u8> {
    let mut out = Vec::new();
    for entry in sample_entries(2) {
        let request = serde_json::to_vec(&Request { tag: 7, entry }).expect("serializes");
        write_frame(&mut out, &request).expect("in memory");
    }
    out
}

/// `count` entries as the auditor stores them (numbered and chained).
pub fn sample_entries(count: u64) -> Vec<Entry> {
    let mut previous: Option<Hash> = None;
    (0..count)
        .map(|seq| {
            let mut entry = Entry::event(crate::entry::Event::Request);
            entry.seq = seq;
            entry.prev = previous.map(|h| hex(&h));
            entry.time_ns = 1_795_000_000_123_456_789 + u128::from(seq);
            entry.peer = Some(crate::entry::Peer {
                uid: 1000,
                gid: 1000,
                pid: 42,
                exe: Some("/usr/bin/curl".into()),
            });
            entry.model = Some("demo".into());
            entry.request_id = Some(format!("r{seq} \u{2014} \"quoted\"\n"));
            entry.request_sha256 = Some("cd".repeat(32));
            entry.status = Some(200);
            entry.latency_us = Some(512);
            entry.tokens_in = Some(3);
            entry.content = Some([("request".to_owned(), "{\"x\":[1.5e-7]}".to_owned())].into());
            entry.details.insert("finish_reason".into(), "stop".into());
            previous = Some(merkle::leaf_hash(&entry.encode()));
            entry
        })
        .collect()
}

/// A log of `count` entries, as `entries.log` holds it.
pub fn sample_log(count: u64) -> Vec<u8> {
    let mut log = Vec::new();
    for entry in sample_entries(count) {
        log.extend_from_slice(&entry.encode());
        log.push(b'\n');
    }
    log
}

/// Target `audit_frames`: what a client writes to the audit socket.
/// Frames are never longer than the limit; every record the auditor
/// accepts is stored (numbered, chained and timed as `LogFile::append`
/// does) as one line that decodes to the same entry, so that no client can
/// make the log look tampered with; replies always serialize.
pub fn audit_frames(data: &[u8]) {
    let mut reader = data;
    let mut previous: Option<Hash> = None;
    for seq in 0.. {
        let frame = match read_frame(&mut reader, FRAME_LIMIT) {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => break,
        };
        assert!(frame.len() <= FRAME_LIMIT, "a frame over the limit");
        let reply = match serde_json::from_slice::<Request>(&frame) {
            Ok(request) => {
                let mut entry = request.entry;
                entry.seq = seq;
                entry.prev = previous.map(|h| hex(&h));
                entry.time_ns = 1_795_000_000_000_000_000;
                let line = entry.encode();
                assert!(!line.contains(&b'\n'), "an entry spans two lines");
                let decoded = Entry::decode(&line).expect("a stored entry decodes");
                assert_eq!(decoded, entry, "an entry changed on the way round");
                previous = Some(merkle::leaf_hash(&line));
                Reply {
                    tag: request.tag,
                    seq: Some(seq),
                    error: None,
                }
            }
            Err(e) => Reply {
                tag: 0,
                seq: None,
                error: Some(format!("malformed record: {e}")),
            },
        };
        serde_json::to_vec(&reply).expect("replies serialize");
    }
}

/// Target `audit_entry`: one line of `entries.log`. An accepted line is
/// canonical: it encodes to exactly itself.
pub fn audit_entry(data: &[u8]) {
    if let Ok(entry) = Entry::decode(data) {
        assert_eq!(entry.encode(), data, "a non-canonical line was accepted");
    }
}

/// Target `audit_log`: a whole `entries.log` as `log verify` reads it
/// (with the fuzz key's checkpoint over its first entries, when the first
/// byte asks for one). An accepted log has one entry per line.
pub fn audit_log(data: &[u8]) {
    let verifier = signer().verifier();
    let lines = data
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count() as u64;
    if let Ok(verified) = verify(data, &[], &verifier, None) {
        assert_eq!(verified.entries, lines);
        assert_eq!(verified.unsealed, lines);
    }
    // A checkpoint the fuzz key signed, over a prefix the first byte picks
    // and a root computed from the lines as they are: reaches the Merkle
    // checks behind the signature.
    let size = u64::from(data.first().copied().unwrap_or(0) % 8);
    let leaves: Vec<Hash> = data
        .strip_suffix(b"\n")
        .unwrap_or(data)
        .split(|&b| b == b'\n')
        .take(size as usize)
        .map(merkle::leaf_hash)
        .collect();
    let checkpoint = Checkpoint {
        origin: "deepseek-audit/fuzz".into(),
        size,
        root: merkle::root(&leaves),
        extensions: vec![],
    };
    let note = signer()
        .sign(&checkpoint.text())
        .expect("ends in a newline");
    let stored = [StoredCheckpoint {
        name: "1.note".into(),
        note,
    }];
    if let Ok(verified) = verify(data, &stored, &verifier, Some(&checkpoint)) {
        assert_eq!(verified.sealed, size);
        assert!(verified.entries >= size);
    }
}

/// Target `audit_note`: verifier keys, signed notes and checkpoints. A
/// parsed key prints as itself; a key made from a name parses back; a note
/// opens only to a text ending in a newline, and one the fuzz key signs
/// opens to exactly its text; a parsed checkpoint prints as its text.
pub fn audit_note(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(key) = NoteVerifier::parse(&text) {
        assert_eq!(NoteVerifier::parse(&key.to_string()).as_ref(), Ok(&key));
    }
    let name = text.lines().next().unwrap_or_default();
    if let Ok(named) = NoteSigner::from_seed(name, [1; 32]) {
        let verifier = named.verifier();
        assert_eq!(
            NoteVerifier::parse(&verifier.to_string()).as_ref(),
            Ok(&verifier),
            "a key made for {name:?} does not parse back"
        );
    }
    let verifier = signer().verifier();
    if let Ok(opened) = verifier.open(&text) {
        assert!(opened.ends_with('\n') && text.starts_with(opened));
    }
    if let Ok(note) = signer().sign(&text) {
        assert_eq!(
            verifier.open(&note),
            Ok(&*text),
            "a signed note did not open"
        );
    }
    if let Ok(checkpoint) = Checkpoint::parse(&text) {
        assert_eq!(checkpoint.text(), text, "a checkpoint prints differently");
    }
    // A seal is a checkpoint with its own lines: a parsed one reads back
    // from its own text unchanged, and its root is its frontier's.
    if let Ok(seal) = Seal::parse(&text) {
        assert_eq!(Seal::parse(&seal.text()).as_ref(), Ok(&seal));
        assert!(seal.first < seal.frontier.size());
    }
}

/// Target `audit_proof`: an inclusion proof as `log check-proof` reads it
/// (JSON from anyone). A proof that checks is of an entry inside the tree
/// its checkpoint signs.
pub fn audit_proof(data: &[u8]) {
    let Ok(proof) = serde_json::from_slice::<InclusionProof>(data) else {
        return;
    };
    if let Ok(checkpoint) = proof.check(&signer().verifier()) {
        assert!(proof.seq < checkpoint.size);
        assert!(proof.path.len() <= 64, "a path longer than any tree");
    }
}

/// A valid proof of entry 2 of a log of 5, signed by the fuzz key.
pub fn sample_proof() -> Vec<u8> {
    let lines: Vec<Vec<u8>> = sample_entries(5).iter().map(Entry::encode).collect();
    let leaves: Vec<Hash> = lines.iter().map(|l| merkle::leaf_hash(l)).collect();
    let checkpoint = Checkpoint {
        origin: "deepseek-audit/fuzz".into(),
        size: 5,
        root: merkle::root(&leaves),
        extensions: vec!["extension line".into()],
    };
    let note = signer()
        .sign(&checkpoint.text())
        .expect("ends in a newline");
    let proof = InclusionProof::new(
        &lines[2],
        2,
        &merkle::inclusion_proof(2, &leaves[..5]),
        &note,
    );
    serde_json::to_vec(&proof).expect("serializes")
}

/// A checkpoint of a log of 12, signed by the fuzz key: a note as
/// `audit_note` reads it.
pub fn sample_note() -> String {
    let checkpoint = Checkpoint {
        origin: "deepseek-audit/fuzz".into(),
        size: 12,
        root: [9; 32],
        extensions: vec!["x".into()],
    };
    signer().sign(&checkpoint.text()).expect("signs")
}

/// The text of a seal of entries 3..7, with a hand-over: a note text as
/// `audit_note` reads it.
pub fn sample_seal() -> String {
    let mut frontier = merkle::Frontier::default();
    (0..7u8).for_each(|i| frontier.push([i; 32]));
    Seal {
        origin: "deepseek-audit/fuzz".into(),
        index: 1,
        first: 3,
        sha256: [1; 32],
        last: [6; 32],
        frontier,
        next_key: Some(signer().verifier().to_string()),
    }
    .text()
}

/// The seed inputs of this crate's targets, `(target, bytes)`: written to
/// fuzz/corpus by the daemon's `write_seed_corpus`.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("audit_frames", sample_frames()),
        ("audit_entry", sample_entries(1)[0].encode()),
        ("audit_log", sample_log(4)),
        ("audit_note", sample_note().into_bytes()),
        ("audit_note", signer().verifier().to_string().into_bytes()),
        ("audit_note", sample_seal().into_bytes()),
        ("audit_proof", sample_proof()),
    ]
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use proptest::prelude::*;

    use super::*;

    fn ops() -> impl Strategy<Value = Vec<(u8, u32, u32)>> {
        proptest::collection::vec(any::<(u8, u32, u32)>(), 1..8)
    }

    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases(256)))]

        #[test]
        fn fuzz_audit_frames_arbitrary(bytes in bytes(128)) {
            audit_frames(&bytes);
        }

        #[test]
        fn fuzz_audit_frames_mutated(ops in ops()) {
            audit_frames(&mutate(&sample_frames(), &ops));
        }

        /// Records with strings of every kind: what the daemon copies from
        /// requests into ids, models, paths and details.
        #[test]
        fn fuzz_audit_frames_strings(strings in proptest::collection::vec(any::<String>(), 4)) {
            let mut entry = Entry::event(crate::entry::Event::DeniedPeer);
            entry.request_id = Some(strings[0].clone());
            entry.model = Some(strings[1].clone());
            entry.details.insert(strings[2].clone(), strings[3].clone());
            entry.content = Some([(strings[3].clone(), strings[0].clone())].into());
            let mut frames = Vec::new();
            let request = serde_json::to_vec(&Request { tag: u64::MAX, entry }).expect("serializes");
            write_frame(&mut frames, &request).expect("in memory");
            audit_frames(&frames);
        }

        #[test]
        fn fuzz_audit_entry(ops in ops()) {
            audit_entry(&mutate(&sample_entries(1)[0].encode(), &ops));
        }

        #[test]
        fn fuzz_audit_log(ops in ops()) {
            audit_log(&mutate(&sample_log(4), &ops));
        }

        #[test]
        fn fuzz_audit_note(ops in ops(), text in "[a-z0-9+/=\\n \\u{2014}\\u{a0}\\u{3000}-]{0,40}") {
            audit_note(text.as_bytes());
            audit_note(&mutate(sample_note().as_bytes(), &ops));
            audit_note(&mutate(signer().verifier().to_string().as_bytes(), &ops));
            audit_note(&mutate(sample_seal().as_bytes(), &ops));
        }

        #[test]
        fn fuzz_audit_proof_mutated(ops in ops()) {
            audit_proof(&mutate(&sample_proof(), &ops));
        }

        /// Signed checkpoints of any size and root, proofs of any index
        /// and length: the Merkle path check with hostile numbers.
        #[test]
        fn fuzz_audit_proof_structured(size in any::<u64>(), seq in any::<u64>(), path in 0usize..80, small in any::<bool>()) {
            let (size, seq) = if small { (size % 70, seq % 70) } else { (size, seq) };
            let checkpoint = Checkpoint {
                origin: "deepseek-audit/fuzz".into(),
                size,
                root: [7; 32],
                extensions: vec![],
            };
            let proof = InclusionProof {
                entry: "{}".into(),
                seq,
                checkpoint: signer().sign(&checkpoint.text()).expect("signs"),
                path: vec![BASE64.encode([1u8; 32]); path],
            };
            audit_proof(&serde_json::to_vec(&proof).expect("serializes"));
        }
    }

    #[test]
    fn the_seeds_are_accepted() {
        let proof: InclusionProof = serde_json::from_slice(&sample_proof()).expect("json");
        proof
            .check(&signer().verifier())
            .expect("the sample proof checks");
        let verified = verify(&sample_log(4), &[], &signer().verifier(), None).expect("log");
        assert_eq!(verified.entries, 4);
        let mut frames = sample_frames().into_iter().collect::<Vec<_>>();
        let mut reader = frames.as_slice();
        let frame = read_frame(&mut reader, FRAME_LIMIT)
            .expect("frame")
            .expect("some");
        serde_json::from_slice::<Request>(&frame).expect("a request");
        frames.clear();
        audit_frames(&sample_frames());
        audit_log(&sample_log(4));
        audit_proof(&sample_proof());
    }
}
