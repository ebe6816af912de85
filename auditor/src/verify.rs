//! `deepseek-audit log verify`: recompute the tree over the entries, check
//! every checkpoint's signature and consistency, and name the first bad
//! entry when something was changed. Entries after the last checkpoint are
//! reported as the unsealed tail, separately from tampering.

use deepseek_integrity::digest::unhex32;

use crate::checkpoint::Checkpoint;
use crate::entry::Entry;
use crate::merkle::{self, Frontier, Hash};
use deepseek_integrity::note::NoteVerifier;

/// A signed checkpoint as stored, and where it came from.
#[derive(Debug, Clone)]
pub struct StoredCheckpoint {
    pub name: String,
    pub note: String,
}

/// What a clean log looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub entries: u64,
    pub checkpoints: usize,
    /// Size of the largest verified checkpoint.
    pub sealed: u64,
    /// Entries after it: not yet covered by a signature.
    pub unsealed: u64,
}

/// Evidence of tampering, naming what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Tamper {
    #[error("line {line}: entry is not a valid canonical entry ({reason})")]
    Malformed { line: u64, reason: String },
    #[error(
        "line {line}: expected entry {expected}, found entry {found} (an entry was deleted, inserted or moved)"
    )]
    Sequence {
        line: u64,
        expected: u64,
        found: u64,
    },
    #[error("entry {seq}: does not chain to entry {previous}: entry {previous} was changed")]
    Chain { seq: u64, previous: u64 },
    #[error("checkpoint {name}: not signed by the verifier key {key}")]
    Signature { name: String, key: String },
    #[error("checkpoint {name}: {reason}")]
    BadCheckpoint { name: String, reason: String },
    #[error(
        "checkpoint {name} covers {size} entries but the log has only {entries}: the log was truncated"
    )]
    Truncated {
        name: String,
        size: u64,
        entries: u64,
    },
    #[error(
        "checkpoint {name}: the root of entries 0..{size} differs: an entry between {from} and {size} was changed"
    )]
    Root { name: String, size: u64, from: u64 },
    #[error(
        "the log's checkpoint at size {size} is not consistent with the trusted checkpoint: the log was rewritten"
    )]
    Inconsistent { size: u64 },
}

/// What verification needs of one line: its `seq`, its `prev` and its leaf
/// hash, or why it is not an entry.
type DecodedLine = Result<(u64, Option<Hash>, Hash), String>;

/// Decodes every line (canonical check included) and hashes it, in parallel.
fn decode_all(lines: &[&[u8]]) -> Vec<DecodedLine> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = lines.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = lines
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|line| {
                            let entry = Entry::decode(line).map_err(|e| e.to_string())?;
                            let prev = match entry.prev {
                                None => None,
                                Some(text) => {
                                    Some(unhex32(&text).ok_or("prev is not 64 hex digits")?)
                                }
                            };
                            Ok((entry.seq, prev, merkle::leaf_hash(line)))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("decoding thread"))
            .collect()
    })
}

/// Verifies `log`, a whole log in one file (one canonical entry per line),
/// against the signed `checkpoints` and, when given, a `trusted` checkpoint
/// kept elsewhere (a copy from syslog), which must be consistent with it.
pub fn verify(
    log: &[u8],
    checkpoints: &[StoredCheckpoint],
    verifier: &NoteVerifier,
    trusted: Option<&Checkpoint>,
) -> Result<Verified, Tamper> {
    let mut parsed = Vec::with_capacity(checkpoints.len() + 1);
    for stored in checkpoints {
        parsed.push(open_checkpoint(stored, verifier)?);
    }
    parsed.extend(trusted.map(|c| Sealing::trusted(c.clone())));
    let end = verify_segment(log, &Frontier::default(), None, parsed)?;
    let entries = end.frontier.size();
    Ok(Verified {
        entries,
        checkpoints: checkpoints.len(),
        sealed: end.sealed,
        unsealed: entries - end.sealed,
    })
}

/// A checkpoint that a segment must match: a stored note, or the trusted
/// checkpoint given on the command line.
#[derive(Debug, Clone)]
pub(crate) struct Sealing {
    pub name: String,
    pub checkpoint: Checkpoint,
    pub trusted: bool,
}

impl Sealing {
    pub(crate) fn trusted(checkpoint: Checkpoint) -> Self {
        Self {
            name: "trusted".into(),
            checkpoint,
            trusted: true,
        }
    }
}

/// Opens a stored checkpoint with `verifier` and parses it.
pub(crate) fn open_checkpoint(
    stored: &StoredCheckpoint,
    verifier: &NoteVerifier,
) -> Result<Sealing, Tamper> {
    let text = verifier.open(&stored.note).map_err(|_| Tamper::Signature {
        name: stored.name.clone(),
        key: verifier.to_string(),
    })?;
    let checkpoint = Checkpoint::parse(text).map_err(|e| Tamper::BadCheckpoint {
        name: stored.name.clone(),
        reason: e.to_string(),
    })?;
    Ok(Sealing {
        name: stored.name.clone(),
        checkpoint,
        trusted: false,
    })
}

/// Where a verified segment ends.
#[derive(Debug, Clone)]
pub(crate) struct End {
    /// The tree after its last entry.
    pub frontier: Frontier,
    /// Its last entry's leaf hash.
    pub last: Option<Hash>,
    /// The largest stored checkpoint it matched (or the start).
    pub sealed: u64,
}

/// Verifies one segment, whose entries follow the tree `start` and the
/// leaf `last`: numbering, chain, and every checkpoint in `sealings` (all
/// of them after `start`, none beyond the segment's end). Line numbers in
/// errors are the segment's own.
pub(crate) fn verify_segment(
    log: &[u8],
    start: &Frontier,
    last: Option<Hash>,
    mut sealings: Vec<Sealing>,
) -> Result<End, Tamper> {
    // Every entry ends in a newline; what follows the last one (nothing, in
    // a clean log) is a torn entry and is refused like any malformed line.
    let body = log.strip_suffix(b"\n").unwrap_or(log);
    let lines: Vec<&[u8]> = if log.is_empty() {
        Vec::new()
    } else {
        body.split(|&b| b == b'\n').collect()
    };
    sealings.sort_by_key(|s| s.checkpoint.size);
    let mut pending = sealings.into_iter().peekable();
    // Decoding and hashing are independent per line: spread them over the
    // cores, then check sequence, chain and checkpoints in order.
    let decoded = decode_all(&lines);
    let mut frontier = start.clone();
    let mut previous = last;
    let mut sealed = start.size();
    let mut check = |frontier: &Frontier, sealed: &mut u64| -> Result<(), Tamper> {
        while let Some(sealing) = pending.next_if(|s| s.checkpoint.size <= frontier.size()) {
            let Sealing {
                name,
                checkpoint,
                trusted,
            } = sealing;
            if checkpoint.size < frontier.size() || checkpoint.root != frontier.root() {
                return Err(if trusted {
                    Tamper::Inconsistent {
                        size: checkpoint.size,
                    }
                } else {
                    Tamper::Root {
                        name,
                        size: checkpoint.size,
                        from: *sealed,
                    }
                });
            }
            if !trusted {
                *sealed = checkpoint.size;
            }
        }
        Ok(())
    };
    // A checkpoint of the start itself: an empty log's first.
    check(&frontier, &mut sealed)?;
    for (index, item) in decoded.into_iter().enumerate() {
        let number = index as u64 + 1;
        let (seq, prev, leaf) = item.map_err(|reason| Tamper::Malformed {
            line: number,
            reason,
        })?;
        if seq != frontier.size() {
            return Err(Tamper::Sequence {
                line: number,
                expected: frontier.size(),
                found: seq,
            });
        }
        if prev != previous {
            return Err(Tamper::Chain {
                seq,
                previous: seq.saturating_sub(1),
            });
        }
        frontier.push(leaf);
        previous = Some(leaf);
        check(&frontier, &mut sealed)?;
    }
    if let Some(beyond) = pending.next() {
        return Err(Tamper::Truncated {
            name: beyond.name,
            size: beyond.checkpoint.size,
            entries: frontier.size(),
        });
    }
    Ok(End {
        frontier,
        last: previous,
        sealed,
    })
}

#[cfg(test)]
mod tests {
    use deepseek_integrity::digest::hex;

    use super::*;
    use crate::entry::Event;
    use deepseek_integrity::note::NoteSigner;

    fn signer() -> NoteSigner {
        NoteSigner::from_seed("deepseek-audit/test", [3; 32]).expect("key")
    }

    /// A log of `n` chained entries and checkpoints after `at` entries.
    fn build(n: u64, at: &[u64]) -> (Vec<u8>, Vec<StoredCheckpoint>) {
        build_failing_from(n, at, u64::MAX)
    }

    /// Like `build`, with status 500 from entry `failing` on: a different,
    /// but internally consistent, history.
    fn build_failing_from(n: u64, at: &[u64], failing: u64) -> (Vec<u8>, Vec<StoredCheckpoint>) {
        let mut log = Vec::new();
        let mut leaves = Vec::new();
        for seq in 0..n {
            let entry = Entry {
                seq,
                prev: leaves.last().map(|h: &Hash| hex(h)),
                time_ns: 1_000 + u128::from(seq),
                event: Event::Request,
                peer: None,
                model: Some("demo".into()),
                model_sha256: None,
                request_id: Some(format!("r{seq}")),
                request_sha256: None,
                response_sha256: None,
                tokens_in: None,
                tokens_out: None,
                status: Some(if seq >= failing { 500 } else { 200 }),
                latency_us: Some(seq),
                content: None,
                details: Default::default(),
            };
            let line = entry.encode();
            leaves.push(merkle::leaf_hash(&line));
            log.extend_from_slice(&line);
            log.push(b'\n');
        }
        let checkpoints = at
            .iter()
            .map(|&size| {
                let c = Checkpoint {
                    origin: "deepseek-audit/test".into(),
                    size,
                    root: merkle::root(&leaves[..size as usize]),
                    extensions: vec![],
                };
                StoredCheckpoint {
                    name: format!("{size}"),
                    note: signer().sign(&c.text()).expect("sign"),
                }
            })
            .collect();
        (log, checkpoints)
    }

    fn lines(log: &[u8]) -> Vec<String> {
        String::from_utf8(log.to_vec())
            .expect("utf8")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn join(lines: &[String]) -> Vec<u8> {
        lines
            .iter()
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn a_clean_log_verifies_with_its_unsealed_tail() {
        let (log, checkpoints) = build(10, &[4, 8]);
        let verified = verify(&log, &checkpoints, &signer().verifier(), None).expect("clean");
        assert_eq!(
            verified,
            Verified {
                entries: 10,
                checkpoints: 2,
                sealed: 8,
                unsealed: 2
            }
        );
    }

    #[test]
    fn every_kind_of_tampering_is_located() {
        let (log, checkpoints) = build(10, &[4, 8]);
        let verifier = signer().verifier();
        let original = lines(&log);

        let mut edited = original.clone();
        edited[5] = edited[5].replace("\"status\":200", "\"status\":500");
        assert_eq!(
            verify(&join(&edited), &checkpoints, &verifier, None),
            Err(Tamper::Chain {
                seq: 6,
                previous: 5
            })
        );

        let mut deleted = original.clone();
        deleted.remove(3);
        assert_eq!(
            verify(&join(&deleted), &checkpoints, &verifier, None),
            Err(Tamper::Sequence {
                line: 4,
                expected: 3,
                found: 4
            })
        );

        let mut reordered = original.clone();
        reordered.swap(2, 3);
        assert_eq!(
            verify(&join(&reordered), &checkpoints, &verifier, None),
            Err(Tamper::Sequence {
                line: 3,
                expected: 2,
                found: 3
            })
        );

        let mut inserted = original.clone();
        inserted.insert(7, original[6].clone());
        assert_eq!(
            verify(&join(&inserted), &checkpoints, &verifier, None),
            Err(Tamper::Sequence {
                line: 8,
                expected: 7,
                found: 6
            })
        );

        let truncated = join(&original[..6]);
        assert!(matches!(
            verify(&truncated, &checkpoints, &verifier, None),
            Err(Tamper::Truncated {
                size: 8,
                entries: 6,
                ..
            })
        ));

        let unknown = NoteSigner::from_seed("deepseek-audit/test", [4; 32]).expect("key");
        let mut forged = checkpoints.clone();
        forged[1].note = unknown
            .sign(
                &Checkpoint::parse(
                    signer()
                        .verifier()
                        .open(&checkpoints[1].note)
                        .expect("open"),
                )
                .expect("parse")
                .text(),
            )
            .expect("sign");
        assert!(matches!(
            verify(&log, &forged, &verifier, None),
            Err(Tamper::Signature { .. })
        ));

        // The tail from entry 6 rewritten consistently (chain and sequence
        // intact): only the signed checkpoint at 8 catches it, and the
        // checkpoint at 4 bounds where the change is.
        let (rewritten, _) = build_failing_from(10, &[], 6);
        assert_ne!(rewritten, log);
        assert_eq!(
            verify(&rewritten, &checkpoints, &verifier, None),
            Err(Tamper::Root {
                name: "8".into(),
                size: 8,
                from: 4
            })
        );
    }

    #[test]
    fn a_checkpoint_inconsistent_with_a_trusted_one_is_refused() {
        let (log, checkpoints) = build(10, &[8]);
        let (_, trusted_list) = build(10, &[5]);
        let trusted = Checkpoint::parse(
            signer()
                .verifier()
                .open(&trusted_list[0].note)
                .expect("open"),
        )
        .expect("parse");
        assert!(verify(&log, &checkpoints, &signer().verifier(), Some(&trusted)).is_ok());
        let wrong = Checkpoint {
            root: [0; 32],
            ..trusted
        };
        assert_eq!(
            verify(&log, &checkpoints, &signer().verifier(), Some(&wrong)),
            Err(Tamper::Inconsistent { size: 5 })
        );
    }
}
