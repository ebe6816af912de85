//! The signed database: a versioned, deterministic text encoding (one line
//! per path, sorted, every value in a fixed order) followed by an Ed25519
//! signature over every byte before it.
//!
//! ```text
//! deepseek-integrity database v1
//! signed-by 1a2b3c4d5e6f7081
//! entries 2
//! /etc/deepseek type=dir mode=755 uid=0 gid=0
//! /etc/deepseek/deepseekd.toml type=file mode=644 uid=0 gid=0 size=812 sha256=...
//! signature BASE64
//! ```
//!
//! Paths and other free text are percent-encoded (anything but
//! `[A-Za-z0-9/._+~:@,-]`), so one line is one entry whatever the names.

mod line;

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use line::{decode_entry, encode_entry};

use crate::entry::Entry;
use crate::keys::{Signer25519, VerifierKey};

const HEADER: &str = "deepseek-integrity database v1";

/// Why a database cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("cannot read database {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write database {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database {path} is not signed (no signature line at the end)")]
    Unsigned { path: PathBuf },
    #[error("database {path} is signed by key {found}, not by the pinned verifier key {expected}")]
    WrongKey {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("database {path} has an invalid signature: it was modified after signing")]
    BadSignature { path: PathBuf },
    #[error(
        "database {path} is in use: another deepseek-integrity init or update, or a \
         deepseek-audit model operation, holds its lock (flock on its directory); run this \
         again when it is done"
    )]
    Busy { path: PathBuf },
    #[error("database {path}, line {line}: {reason}")]
    Malformed {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

impl DatabaseError {
    /// True for the signature failures, which have their own exit code.
    pub fn is_signature(&self) -> bool {
        matches!(
            self,
            Self::Unsigned { .. } | Self::WrongKey { .. } | Self::BadSignature { .. }
        )
    }
}

/// The signed bytes for `entries` (sorted by path), without the signature.
fn body(entries: &[Entry], signer: &VerifierKey) -> String {
    let mut text = format!(
        "{HEADER}\nsigned-by {}\nentries {}\n",
        signer.id(),
        entries.len()
    );
    for entry in entries {
        text.push_str(&encode_entry(entry));
        text.push('\n');
    }
    text
}

/// Encodes and signs `entries`.
pub fn encode(entries: &[Entry], key: &Signer25519) -> Vec<u8> {
    let mut sorted = entries.to_vec();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let text = body(&sorted, &key.verifier());
    let signature = key.sign(text.as_bytes());
    format!("{text}signature {}\n", BASE64.encode(signature)).into_bytes()
}

/// Checks the signature against the pinned key, then parses every entry.
pub fn decode(
    path: &Path,
    bytes: &[u8],
    pinned: &VerifierKey,
) -> Result<Vec<Entry>, DatabaseError> {
    let malformed = |line: usize, reason: String| DatabaseError::Malformed {
        path: path.to_owned(),
        line,
        reason,
    };
    let text =
        std::str::from_utf8(bytes).map_err(|e| malformed(0, format!("not UTF-8 text: {e}")))?;
    let trimmed = text.strip_suffix('\n').ok_or(DatabaseError::Unsigned {
        path: path.to_owned(),
    })?;
    let (signed, last) = match trimmed.rfind('\n') {
        Some(i) => (&text[..=i], &trimmed[i + 1..]),
        None => {
            return Err(DatabaseError::Unsigned {
                path: path.to_owned(),
            });
        }
    };
    let signature = last
        .strip_prefix("signature ")
        .ok_or(DatabaseError::Unsigned {
            path: path.to_owned(),
        })?;
    let mut lines = signed.lines();
    if lines.next() != Some(HEADER) {
        return Err(malformed(1, format!("expected the header {HEADER:?}")));
    }
    let signer = lines
        .next()
        .and_then(|l| l.strip_prefix("signed-by "))
        .ok_or_else(|| malformed(2, "expected \"signed-by KEYID\"".to_owned()))?;
    if signer != pinned.id() {
        return Err(DatabaseError::WrongKey {
            path: path.to_owned(),
            found: signer.to_owned(),
            expected: pinned.id(),
        });
    }
    let signature: [u8; 64] = BASE64
        .decode(signature)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or(DatabaseError::BadSignature {
            path: path.to_owned(),
        })?;
    if !pinned.verify(signed.as_bytes(), &signature) {
        return Err(DatabaseError::BadSignature {
            path: path.to_owned(),
        });
    }
    // Signed by the pinned key: what follows was written by `encode`, but
    // is still parsed strictly (a key could have signed anything).
    let count: usize = lines
        .next()
        .and_then(|l| l.strip_prefix("entries "))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| malformed(3, "expected \"entries N\"".to_owned()))?;
    let mut entries: Vec<Entry> = Vec::with_capacity(count.min(1 << 20));
    for (offset, line) in lines.enumerate() {
        let entry = decode_entry(line).map_err(|e| malformed(offset + 4, e.to_string()))?;
        if entries.last().is_some_and(|last| last.path >= entry.path) {
            return Err(malformed(
                offset + 4,
                "entries are not sorted and unique".to_owned(),
            ));
        }
        entries.push(entry);
    }
    if entries.len() != count {
        return Err(malformed(
            3,
            format!("says {count} entries, has {}", entries.len()),
        ));
    }
    Ok(entries)
}

/// Reads and verifies the database at `path`.
pub fn load(path: &Path, pinned: &VerifierKey) -> Result<Vec<Entry>, DatabaseError> {
    decode(path, &read(path)?, pinned)
}

/// The database's bytes at `path`, unverified (for [`decode`]).
pub fn read(path: &Path) -> Result<Vec<u8>, DatabaseError> {
    std::fs::read(path).map_err(|source| DatabaseError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Takes the lock of the database at `path` (an exclusive `flock` on its
/// directory), held until the returned handle is dropped: whatever signs a
/// new database holds it from reading the old one to storing the new, so
/// that two writers never sign over each other's work.
pub fn lock(path: &Path) -> Result<std::os::fd::OwnedFd, DatabaseError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    lock_directory(dir)
        .map_err(|source| DatabaseError::Read {
            path: dir.to_owned(),
            source,
        })?
        .ok_or_else(|| DatabaseError::Busy {
            path: path.to_owned(),
        })
}

/// An exclusive `flock` on the directory `dir`, without waiting: `None`
/// while another holds it. Released when the handle is dropped.
pub(crate) fn lock_directory(dir: &Path) -> std::io::Result<Option<std::os::fd::OwnedFd>> {
    use rustix::fs::{FlockOperation, Mode, OFlags};
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(fd)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Replaces the database at `path` atomically: a synced temporary file
/// renamed over it, then the directory synced.
pub fn store(path: &Path, bytes: &[u8]) -> Result<(), DatabaseError> {
    let write_error = |source| DatabaseError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    let temporary = dir.join(format!(
        ".{}.new",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    // A leftover from an interrupted write is removed (a symlink planted
    // there is removed, not followed), then the file is created exclusively.
    match std::fs::remove_file(&temporary) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(write_error(e)),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temporary)
        .map_err(write_error)?;
    file.write_all(bytes).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    std::fs::rename(&temporary, path).map_err(write_error)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(write_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::entry::{Attributes, Kind};

    fn key(dir: &Path, name: &str) -> Signer25519 {
        Signer25519::generate(&dir.join(name)).expect("key")
    }

    fn sample() -> Vec<Entry> {
        vec![
            Entry {
                path: PathBuf::from("/m/model data.onnx"),
                kind: Kind::File,
                attrs: Attributes {
                    mode: Some(0o640),
                    uid: Some(0),
                    gid: Some(7),
                    size: Some(12),
                    sha256: Some([0xab; 32]),
                    chunked: Some([0x01; 32]),
                    xattrs: Some(BTreeMap::from([("user.x y".to_owned(), vec![0, 255])])),
                    ..Attributes::default()
                },
            },
            Entry {
                path: PathBuf::from("/m/link"),
                kind: Kind::Symlink,
                attrs: Attributes {
                    target: Some(PathBuf::from("../é\nx")),
                    mtime: Some(-5),
                    growing: true,
                    ..Attributes::default()
                },
            },
        ]
    }

    #[test]
    fn round_trips_and_is_deterministic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = key(dir.path(), "k");
        let bytes = encode(&sample(), &key);
        let mut reversed = sample();
        reversed.reverse();
        assert_eq!(bytes, encode(&reversed, &key), "same entries, same bytes");
        let decoded = decode(Path::new("db"), &bytes, &key.verifier()).expect("decodes");
        let mut expected = sample();
        expected.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(decoded, expected);
        assert_eq!(String::from_utf8(bytes).expect("utf8").lines().count(), 6);
    }

    #[test]
    fn tampering_is_refused_as_a_signature_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = key(dir.path(), "k");
        let bytes = encode(&sample(), &key);
        let text = String::from_utf8(bytes.clone()).expect("utf8");
        let pinned = key.verifier();
        let edited = text.replace(&"ab".repeat(32), &"ac".repeat(32));
        assert!(matches!(
            decode(Path::new("db"), edited.as_bytes(), &pinned),
            Err(DatabaseError::BadSignature { .. })
        ));
        let dropped: String = text
            .lines()
            .filter(|l| !l.starts_with("/m/link"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(matches!(
            decode(Path::new("db"), dropped.as_bytes(), &pinned),
            Err(DatabaseError::BadSignature { .. })
        ));
        let unsigned: String = text
            .lines()
            .filter(|l| !l.starts_with("signature"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(matches!(
            decode(Path::new("db"), unsigned.as_bytes(), &pinned),
            Err(DatabaseError::Unsigned { .. })
        ));
        assert!(matches!(
            decode(Path::new("db"), &bytes[..bytes.len() / 2], &pinned),
            Err(DatabaseError::Unsigned { .. } | DatabaseError::BadSignature { .. })
        ));
        let other = self::key(dir.path(), "other");
        let resigned = encode(&sample(), &other);
        let err = decode(Path::new("db"), &resigned, &pinned).expect_err("other key");
        assert!(matches!(err, DatabaseError::WrongKey { .. }), "{err}");
        assert!(err.is_signature());
    }

    /// Found by the fuzz target `integrity_entry` (docs/development/fuzzing.md):
    /// an xattr name holding `,` or `:` was written unescaped into the
    /// `xattrs=[name:hex,...]` list, so the database `update` wrote could not
    /// be read back ("xattr value is not hex"), or read as other xattrs.
    #[test]
    fn xattr_names_with_list_separators_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = key(dir.path(), "k");
        let mut xattrs = BTreeMap::new();
        xattrs.insert(",".to_owned(), Vec::new());
        xattrs.insert("user.a:61,user.b".to_owned(), b"b".to_vec());
        let entry = Entry {
            path: "/srv/model.onnx".into(),
            kind: Kind::File,
            attrs: Attributes {
                xattrs: Some(xattrs),
                ..Attributes::default()
            },
        };
        let bytes = encode(std::slice::from_ref(&entry), &key);
        let text = String::from_utf8(bytes.clone()).expect("utf8");
        assert!(
            text.contains("xattrs=[%2C:,user.a%3A61%2Cuser.b:62]"),
            "{text}"
        );
        assert_eq!(
            decode(Path::new("db"), &bytes, &key.verifier()).expect("decodes"),
            [entry]
        );
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_databases_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
                let dir = tempfile::tempdir().expect("tempdir");
                let key = Signer25519::generate(&dir.path().join("k")).expect("key");
                let _ = decode(Path::new("db"), &bytes, &key.verifier());
            }
        }
    }
}
