//! Fuzz targets for the parsers of this crate that read bytes someone else
//! may have written: the signed database and the verifier key. Each target
//! takes arbitrary bytes, must never panic, and asserts the parser's
//! invariants itself (a failed assertion is a crash to the fuzzer).
//!
//! The same functions are driven two ways (docs/development/fuzzing.md):
//! by proptest in `cargo test` (a bounded smoke run, `PROPTEST_CASES`
//! raises it) and by libFuzzer in `make fuzz` (fuzz/, coverage-guided).
//! [`mutate`] and [`cases`] are shared with the other crates' targets.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::database;
use crate::entry::{Attributes, Entry, Kind};
use crate::keys::{Signer25519, VerifierKey};

/// The number of proptest cases of a fuzz smoke test: `PROPTEST_CASES`
/// when set (as proptest itself reads it, which a literal `cases` in a
/// config would override), else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Byte strings that parsers of JSON, numbers, notes and %-escapes tend to
/// get wrong, spliced in by [`mutate`].
const TOKENS: &[&str] = &[
    "NaN",
    "\"NaN\"",
    "Infinity",
    "\"-Infinity\"",
    "1e999",
    "-1e999",
    "-0",
    "-1",
    "0.1e-400",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "340282366920938463463374607431768211456",
    "-9223372036854775809",
    "null",
    "true",
    "[]",
    "{}",
    "\"\"",
    "\"\\ud800\"",
    "\\u0000",
    "\u{10FFFF}",
    "\u{a0}",
    "\u{feff}",
    "\u{2014} ",
    "\n",
    "\n\n",
    "\r\n",
    "\0",
    "%",
    "%+F",
    "%zz",
    "\"",
    ",",
    ":",
    " ",
    "=",
    "+",
    "[",
    "]",
];

/// Applies `ops` to a copy of `seed`, the structure-aware half of every
/// target: a valid sample with bytes flipped, inserted, deleted, cut,
/// duplicated, nested deeply or replaced by a [`TOKENS`] entry. Each op is
/// `(kind, position, argument)`; positions wrap around the current length.
pub fn mutate(seed: &[u8], ops: &[(u8, u32, u32)]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for &(kind, position, argument) in ops {
        let at = position as usize % (out.len() + 1);
        let n = argument as usize;
        match kind % 8 {
            0 if at < out.len() => out[at] = argument as u8,
            0 => out.push(argument as u8),
            1 => out.insert(at, argument as u8),
            2 => {
                let end = (at + n % 16 + 1).min(out.len());
                out.drain(at..end);
            }
            3 => out.truncate(at),
            4 => {
                // Splice: a copy of one range inserted elsewhere.
                let end = (at + n % 64 + 1).min(out.len());
                let piece = out[at..end].to_vec();
                let to = n % (out.len() + 1);
                out.splice(to..to, piece);
            }
            5 => {
                let token = TOKENS[n % TOKENS.len()].as_bytes();
                out.splice(at..at, token.iter().copied());
            }
            6 => {
                // Deep nesting (past every recursion limit) or long runs.
                let unit: &[u8] = [b"[".as_slice(), b"{\"a\":", b"9", b"\\"][n % 4];
                let times = n % 4096 + 1;
                out.splice(
                    at..at,
                    unit.iter().copied().cycle().take(unit.len() * times),
                );
            }
            _ => {
                // A token over what was there.
                let token = TOKENS[n % TOKENS.len()].as_bytes();
                let end = (at + token.len()).min(out.len());
                out.splice(at..end, token.iter().copied());
            }
        }
        if out.len() > 1 << 20 {
            out.truncate(1 << 20);
        }
    }
    out
}

/// The fuzz targets' signing key (a fixed seed: reproducible crashes).
pub fn key() -> &'static Signer25519 {
    static KEY: std::sync::OnceLock<Signer25519> = std::sync::OnceLock::new();
    KEY.get_or_init(|| Signer25519::from_seed([0x5e; 32]))
}

/// `body` signed as `database::encode` signs (a final newline added when
/// it lacks one), so that the entries' parser behind the signature is
/// reached.
pub(crate) fn sign_database(body: &[u8], key: &Signer25519) -> Vec<u8> {
    let mut text = String::from_utf8_lossy(body).into_owned();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let signature = key.sign(text.as_bytes());
    format!("{text}signature {}\n", BASE64.encode(signature)).into_bytes()
}

/// A valid database of a few entries, the seed the mutations start from.
pub(crate) fn sample_database(key: &Signer25519) -> Vec<u8> {
    let mut xattrs = BTreeMap::new();
    xattrs.insert("security.selinux".to_owned(), b"system_u\0".to_vec());
    let entries = [
        Entry {
            path: "/etc/deepseek/deepseekd.toml".into(),
            kind: Kind::File,
            attrs: Attributes {
                mode: Some(0o644),
                uid: Some(0),
                gid: Some(0),
                size: Some(812),
                mtime: Some(1_700_000_000_123_456_789),
                ctime: Some(-1),
                inode: Some(42),
                nlink: Some(1),
                xattrs: Some(xattrs),
                sha256: Some([0xab; 32]),
                verity: Some(false),
                ..Attributes::default()
            },
        },
        Entry {
            path: "/srv/models/a b%/model.onnx".into(),
            kind: Kind::File,
            attrs: Attributes {
                chunked: Some([1; 32]),
                fsverity: Some([2; 32]),
                growing: true,
                ..Attributes::default()
            },
        },
        Entry {
            path: "/srv/models/latest".into(),
            kind: Kind::Symlink,
            attrs: Attributes {
                target: Some("../models/a b%".into()),
                ..Attributes::default()
            },
        },
    ];
    database::encode(&entries, key)
}

/// Target `integrity_database`: the signed database, as read and as
/// signed by the pinned key (the entries' parser sits behind the
/// signature). Accepted databases hold absolute paths, strictly sorted,
/// and encode back to the same entries.
pub fn integrity_database(data: &[u8]) {
    let key = key();
    let pinned = key.verifier();
    check_database(key, &pinned, data);
    check_database(key, &pinned, &sign_database(data, key));
}

fn check_database(key: &Signer25519, pinned: &VerifierKey, bytes: &[u8]) {
    let Ok(entries) = database::decode(Path::new("db"), bytes, pinned) else {
        return;
    };
    for pair in entries.windows(2) {
        assert!(pair[0].path < pair[1].path, "entries not strictly sorted");
    }
    assert!(entries.iter().all(|e| e.path.is_absolute()));
    let again = database::decode(Path::new("db"), &database::encode(&entries, key), pinned)
        .expect("an accepted database encodes to one that decodes");
    assert_eq!(again, entries, "entries changed on the way round");
}

/// Target `integrity_entry`: any entry the scanner could record (a path,
/// a symlink target and xattr names and values made of arbitrary bytes,
/// split at 0xff) survives the database's encoding unchanged, so that a
/// file name or an xattr cannot make the database unreadable or ambiguous.
pub fn integrity_entry(data: &[u8]) {
    let mut parts = data.split(|&b| b == 0xff);
    let mut next = || parts.next().unwrap_or_default();
    let mut path = b"/".to_vec();
    path.extend_from_slice(next());
    let target = next().to_vec();
    let mut xattrs = BTreeMap::new();
    loop {
        let (name, value) = (next(), next());
        if name.is_empty() {
            break;
        }
        xattrs.insert(String::from_utf8_lossy(name).into_owned(), value.to_vec());
    }
    let entry = Entry {
        path: PathBuf::from(OsStr::from_bytes(&path)),
        kind: Kind::Symlink,
        attrs: Attributes {
            target: Some(PathBuf::from(OsStr::from_bytes(&target))),
            xattrs: Some(xattrs),
            ..Attributes::default()
        },
    };
    let key = key();
    let decoded = database::decode(
        Path::new("db"),
        &database::encode(std::slice::from_ref(&entry), key),
        &key.verifier(),
    )
    .expect("a recorded entry decodes");
    assert_eq!(decoded, [entry], "an entry changed on the way round");
}

/// Target `integrity_verifier_key`: `verifier_key` as configured; an
/// accepted key prints as a key that parses to itself.
pub fn integrity_verifier_key(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(key) = VerifierKey::parse(&text) {
        let printed = key.to_string();
        assert_eq!(
            VerifierKey::parse(&printed).map_err(|e| e.to_string()),
            Ok(key.clone())
        );
    }
}

/// The seed inputs of this crate's targets, `(target, bytes)`: written to
/// fuzz/corpus by the daemon's `write_seed_corpus`.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let sample = sample_database(key());
    let body = sample[..sample.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or_else(Vec::new, |i| sample[..=i].to_vec());
    vec![
        ("integrity_database", sample),
        ("integrity_database", body),
        (
            "integrity_entry",
            b"srv/a b%/model.onnx\xff../model\xffuser.x\xffvalue".to_vec(),
        ),
        (
            "integrity_verifier_key",
            key().verifier().to_string().into_bytes(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ops() -> impl Strategy<Value = Vec<(u8, u32, u32)>> {
        proptest::collection::vec(any::<(u8, u32, u32)>(), 1..8)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases(128)))]

        #[test]
        fn fuzz_integrity_database_arbitrary(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            integrity_database(&bytes);
        }

        #[test]
        fn fuzz_integrity_database_mutated(ops in ops()) {
            let key = key();
            let sample = sample_database(key);
            // Mutated and re-signed: the entries' parser sees the damage.
            let body = &sample[..sample.len() - 1];
            let body = &body[..body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)];
            integrity_database(&mutate(body, &ops));
            integrity_database(&mutate(&sample, &ops));
        }

        #[test]
        fn fuzz_integrity_entry(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            integrity_entry(&bytes);
        }

        /// The same with names made of the bytes the encoding treats
        /// specially, which random bytes rarely line up.
        #[test]
        fn fuzz_integrity_entry_structured(parts in proptest::collection::vec("[a./ %,:=+\\[\\]\n\u{a0}\u{1F980}-]{0,6}", 1..7)) {
            let bytes: Vec<u8> = parts.iter().map(|p| p.as_bytes()).collect::<Vec<_>>().join(&0xff);
            integrity_entry(&bytes);
        }

        #[test]
        fn fuzz_integrity_verifier_key(ops in ops()) {
            let printed = key().verifier().to_string();
            integrity_verifier_key(&mutate(printed.as_bytes(), &ops));
        }
    }

    #[test]
    fn the_seeds_are_accepted() {
        let key = key();
        let sample = sample_database(key);
        let entries = database::decode(Path::new("db"), &sample, &key.verifier()).expect("sample");
        assert_eq!(entries.len(), 3);
        integrity_database(&sample);
        integrity_verifier_key(key.verifier().to_string().as_bytes());
    }
}
