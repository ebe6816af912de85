//! One database line: an entry's path and attributes as `key=value`
//! fields, and back. Split from the file framing (header, count,
//! signature) in `database`, which only sees whole entries.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::digest::{hex, unhex, unhex32};
use crate::entry::{Attributes, Entry, Kind};

/// Why a line is not an entry; `database` reports it with the line number.
#[derive(Debug, thiserror::Error)]
pub(super) enum LineError {
    #[error("truncated %-escape")]
    TruncatedEscape,
    #[error("bad %-escape %{0}")]
    BadEscape(String),
    #[error("byte {0:#04x} must be %-escaped")]
    Unescaped(u8),
    #[error("path {} is not absolute", .0.display())]
    Relative(PathBuf),
    #[error("field {0:?} is not key=value")]
    NotKeyValue(String),
    #[error("field {0} appears twice")]
    Twice(String),
    #[error("{key}={value} is not a number")]
    NotANumber { key: String, value: String },
    #[error("{0} out of range")]
    OutOfRange(&'static str),
    #[error("{0} is not 64 hex digits")]
    NotADigest(String),
    #[error("unknown type {0}")]
    UnknownType(String),
    #[error("mode={0} is not octal")]
    NotOctal(String),
    #[error("xattrs is not [...]")]
    NotAList,
    #[error("xattr is not name:hex")]
    NotNameHex,
    #[error("xattr name is not UTF-8")]
    NameNotUtf8,
    #[error("xattr value is not hex")]
    ValueNotHex,
    #[error("verity={0} is not 0 or 1")]
    NotABool(String),
    #[error("unknown field {key}={value}")]
    UnknownField { key: String, value: String },
    #[error("no type field")]
    NoType,
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

fn decode_bytes(text: &str) -> Result<Vec<u8>, LineError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let pair = text.get(i + 1..i + 3).ok_or(LineError::TruncatedEscape)?;
                out.push(
                    u8::from_str_radix(pair, 16)
                        .map_err(|_| LineError::BadEscape(pair.to_owned()))?,
                );
                i += 3;
            }
            b if plain(b) => {
                out.push(b);
                i += 1;
            }
            b => return Err(LineError::Unescaped(b)),
        }
    }
    Ok(out)
}

/// One entry as a line (without the newline).
pub(super) fn encode_entry(entry: &Entry) -> String {
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

/// One line back into an entry, refusing anything [`encode_entry`] would
/// not write.
pub(super) fn decode_entry(line: &str) -> Result<Entry, LineError> {
    let mut fields = line.split(' ');
    let path = PathBuf::from(OsStr::from_bytes(&decode_bytes(
        fields.next().unwrap_or_default(),
    )?));
    if !path.is_absolute() {
        return Err(LineError::Relative(path));
    }
    let mut kind = None;
    let mut a = Attributes::default();
    let mut seen = Vec::new();
    for token in fields {
        let (key, value) = token
            .split_once('=')
            .ok_or_else(|| LineError::NotKeyValue(token.to_owned()))?;
        if seen.contains(&key) {
            return Err(LineError::Twice(key.to_owned()));
        }
        seen.push(key);
        let not_a_number = |v: &str| LineError::NotANumber {
            key: key.to_owned(),
            value: v.to_owned(),
        };
        let int = |v: &str| v.parse::<u64>().map_err(|_| not_a_number(v));
        let digest = |v: &str| unhex32(v).ok_or_else(|| LineError::NotADigest(key.to_owned()));
        match key {
            "type" => {
                kind = Some(
                    Kind::from_name(value)
                        .ok_or_else(|| LineError::UnknownType(value.to_owned()))?,
                )
            }
            "mode" => {
                a.mode = Some(
                    u32::from_str_radix(value, 8)
                        .map_err(|_| LineError::NotOctal(value.to_owned()))?,
                )
            }
            "uid" => {
                a.uid = Some(u32::try_from(int(value)?).map_err(|_| LineError::OutOfRange("uid"))?)
            }
            "gid" => {
                a.gid = Some(u32::try_from(int(value)?).map_err(|_| LineError::OutOfRange("gid"))?)
            }
            "size" => a.size = Some(int(value)?),
            "mtime" => a.mtime = Some(value.parse().map_err(|_| not_a_number(value))?),
            "ctime" => a.ctime = Some(value.parse().map_err(|_| not_a_number(value))?),
            "inode" => a.inode = Some(int(value)?),
            "nlink" => a.nlink = Some(int(value)?),
            "target" => a.target = Some(PathBuf::from(OsStr::from_bytes(&decode_bytes(value)?))),
            "xattrs" => {
                let inner = value
                    .strip_prefix('[')
                    .and_then(|v| v.strip_suffix(']'))
                    .ok_or(LineError::NotAList)?;
                let mut map = BTreeMap::new();
                for item in inner.split(',').filter(|i| !i.is_empty()) {
                    let (name, hexvalue) = item.split_once(':').ok_or(LineError::NotNameHex)?;
                    let name = String::from_utf8(decode_bytes(name)?)
                        .map_err(|_| LineError::NameNotUtf8)?;
                    let value = unhex(hexvalue).ok_or(LineError::ValueNotHex)?;
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
                    other => return Err(LineError::NotABool(other.to_owned())),
                })
            }
            "growing" if value == "1" => a.growing = true,
            other => {
                return Err(LineError::UnknownField {
                    key: other.to_owned(),
                    value: value.to_owned(),
                });
            }
        }
    }
    let kind = kind.ok_or(LineError::NoType)?;
    Ok(Entry {
        path,
        kind,
        attrs: a,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn errors_read_as_before() {
        let err = |line: &str| decode_entry(line).expect_err(line).to_string();
        assert_eq!(err("m type=file"), "path m is not absolute");
        assert_eq!(err("/m%4"), "truncated %-escape");
        assert_eq!(err("/m%zz"), "bad %-escape %zz");
        assert_eq!(err("/m type=file uid=x"), "uid=x is not a number");
        assert_eq!(err("/m type=file mtime=x"), "mtime=x is not a number");
        assert_eq!(err("/m type=file uid=4294967296"), "uid out of range");
        assert_eq!(err("/m type=file sha256=AB"), "sha256 is not 64 hex digits");
        assert_eq!(err("/m type=file xattrs=[a:F]"), "xattr value is not hex");
        assert_eq!(err("/m type=file x=1"), "unknown field x=1");
        assert_eq!(err("/m type=file type=dir"), "field type appears twice");
        assert_eq!(err("/m mode=9"), "mode=9 is not octal");
        assert_eq!(err("/m"), "no type field");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        /// The parser behind a valid signature: arbitrary lines never panic.
        #[test]
        fn entry_lines_never_panic(line in "[ -~]{0,200}") {
            let _ = decode_entry(&line);
        }
    }
}
