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

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::digest::{hex, parse_hex32};
use crate::entry::{Attributes, Entry, Kind};
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

fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"/._+~:@,-".contains(&b)
}

fn encode_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if plain(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An xattr name in the `xattrs=[name:hex,...]` list: escaped like a path,
/// and its `,` and `:` too, which separate the list (Linux allows both in
/// names; unescaped, `user.a,b` made the database unreadable).
fn encode_xattr_name(name: &str) -> String {
    encode_bytes(name.as_bytes())
        .replace(',', "%2C")
        .replace(':', "%3A")
}

fn decode_bytes(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let pair = text.get(i + 1..i + 3).ok_or("truncated %-escape")?;
                out.push(
                    u8::from_str_radix(pair, 16).map_err(|_| format!("bad %-escape %{pair}"))?,
                );
                i += 3;
            }
            b if plain(b) => {
                out.push(b);
                i += 1;
            }
            b => return Err(format!("byte {b:#04x} must be %-escaped")),
        }
    }
    Ok(out)
}

/// One entry as a line (without the newline).
fn encode_entry(entry: &Entry) -> String {
    let a = &entry.attrs;
    let mut line = encode_bytes(entry.path.as_os_str().as_bytes());
    let mut field = |key: &str, value: String| {
        line.push(' ');
        line.push_str(key);
        line.push('=');
        line.push_str(&value);
    };
    field("type", entry.kind.name().to_owned());
    if let Some(v) = a.mode {
        field("mode", format!("{v:o}"));
    }
    for (key, value) in [
        ("uid", a.uid.map(u64::from)),
        ("gid", a.gid.map(u64::from)),
        ("size", a.size),
    ] {
        if let Some(v) = value {
            field(key, v.to_string());
        }
    }
    for (key, value) in [("mtime", a.mtime), ("ctime", a.ctime)] {
        if let Some(v) = value {
            field(key, v.to_string());
        }
    }
    for (key, value) in [("inode", a.inode), ("nlink", a.nlink)] {
        if let Some(v) = value {
            field(key, v.to_string());
        }
    }
    if let Some(target) = &a.target {
        field("target", encode_bytes(target.as_os_str().as_bytes()));
    }
    if let Some(xattrs) = &a.xattrs {
        let list: Vec<String> = xattrs
            .iter()
            .map(|(name, value)| format!("{}:{}", encode_xattr_name(name), hex(value)))
            .collect();
        field("xattrs", format!("[{}]", list.join(",")));
    }
    for (key, value) in [
        ("sha256", a.sha256),
        ("chunked", a.chunked),
        ("fsverity", a.fsverity),
    ] {
        if let Some(v) = value {
            field(key, hex(&v));
        }
    }
    if let Some(v) = a.verity {
        field("verity", u8::from(v).to_string());
    }
    if a.growing {
        field("growing", "1".to_owned());
    }
    line
}

fn decode_entry(line: &str) -> Result<Entry, String> {
    let mut fields = line.split(' ');
    let path = PathBuf::from(OsStr::from_bytes(&decode_bytes(
        fields.next().unwrap_or_default(),
    )?));
    if !path.is_absolute() {
        return Err(format!("path {} is not absolute", path.display()));
    }
    let mut kind = None;
    let mut a = Attributes::default();
    let mut seen = Vec::new();
    for token in fields {
        let (key, value) = token
            .split_once('=')
            .ok_or_else(|| format!("field {token:?} is not key=value"))?;
        if seen.contains(&key) {
            return Err(format!("field {key} appears twice"));
        }
        seen.push(key);
        let int = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{key}={v} is not a number"))
        };
        let digest = |v: &str| parse_hex32(v).ok_or_else(|| format!("{key} is not 64 hex digits"));
        match key {
            "type" => {
                kind = Some(Kind::from_name(value).ok_or_else(|| format!("unknown type {value}"))?)
            }
            "mode" => {
                a.mode = Some(
                    u32::from_str_radix(value, 8)
                        .map_err(|_| format!("mode={value} is not octal"))?,
                )
            }
            "uid" => {
                a.uid = Some(u32::try_from(int(value)?).map_err(|_| "uid out of range".to_owned())?)
            }
            "gid" => {
                a.gid = Some(u32::try_from(int(value)?).map_err(|_| "gid out of range".to_owned())?)
            }
            "size" => a.size = Some(int(value)?),
            "mtime" => {
                a.mtime = Some(
                    value
                        .parse()
                        .map_err(|_| format!("mtime={value} is not a number"))?,
                )
            }
            "ctime" => {
                a.ctime = Some(
                    value
                        .parse()
                        .map_err(|_| format!("ctime={value} is not a number"))?,
                )
            }
            "inode" => a.inode = Some(int(value)?),
            "nlink" => a.nlink = Some(int(value)?),
            "target" => a.target = Some(PathBuf::from(OsStr::from_bytes(&decode_bytes(value)?))),
            "xattrs" => {
                let inner = value
                    .strip_prefix('[')
                    .and_then(|v| v.strip_suffix(']'))
                    .ok_or("xattrs is not [...]")?;
                let mut map = BTreeMap::new();
                for item in inner.split(',').filter(|i| !i.is_empty()) {
                    let (name, hexvalue) = item.split_once(':').ok_or("xattr is not name:hex")?;
                    let name = String::from_utf8(decode_bytes(name)?)
                        .map_err(|_| "xattr name is not UTF-8")?;
                    let value = (0..hexvalue.len())
                        .step_by(2)
                        .map(|i| {
                            hexvalue
                                .get(i..i + 2)
                                .and_then(|p| u8::from_str_radix(p, 16).ok())
                        })
                        .collect::<Option<Vec<u8>>>()
                        .ok_or("xattr value is not hex")?;
                    map.insert(name, value);
                }
                a.xattrs = Some(map);
            }
            "sha256" => a.sha256 = Some(digest(value)?),
            "chunked" => a.chunked = Some(digest(value)?),
            "fsverity" => a.fsverity = Some(digest(value)?),
            "verity" => {
                a.verity = Some(match value {
                    "0" => false,
                    "1" => true,
                    other => return Err(format!("verity={other} is not 0 or 1")),
                })
            }
            "growing" if value == "1" => a.growing = true,
            other => return Err(format!("unknown field {other}={value}")),
        }
    }
    let kind = kind.ok_or("no type field")?;
    Ok(Entry {
        path,
        kind,
        attrs: a,
    })
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
        let entry = decode_entry(line).map_err(|reason| malformed(offset + 4, reason))?;
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
    let bytes = std::fs::read(path).map_err(|source| DatabaseError::Read {
        path: path.to_owned(),
        source,
    })?;
    decode(path, &bytes, pinned)
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
    use super::*;

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

            /// The parser behind a valid signature: arbitrary lines never panic.
            #[test]
            fn entry_lines_never_panic(line in "[ -~]{0,200}") {
                let _ = decode_entry(&line);
            }

            #[test]
            fn arbitrary_databases_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
                let dir = tempfile::tempdir().expect("tempdir");
                let key = Signer25519::generate(&dir.path().join("k")).expect("key");
                let _ = decode(Path::new("db"), &bytes, &key.verifier());
            }
        }
    }
}
