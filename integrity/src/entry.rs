//! What the database records about one path: its type and the attributes
//! its rule selects.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::digest::hex;

/// The type of a filesystem object (never followed through symlinks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    Char,
    Block,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
            Kind::Char => "char",
            Kind::Block => "block",
        }
    }

    /// The kind of what `lstat` saw.
    pub fn of(file_type: std::fs::FileType) -> Self {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_symlink() {
            Kind::Symlink
        } else if file_type.is_dir() {
            Kind::Dir
        } else if file_type.is_fifo() {
            Kind::Fifo
        } else if file_type.is_socket() {
            Kind::Socket
        } else if file_type.is_char_device() {
            Kind::Char
        } else if file_type.is_block_device() {
            Kind::Block
        } else {
            Kind::File
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [
            Kind::File,
            Kind::Dir,
            Kind::Symlink,
            Kind::Fifo,
            Kind::Socket,
            Kind::Char,
            Kind::Block,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }
}

/// The attributes of one path. `None` means "not recorded" (the rule did not
/// ask for it, or it does not apply to this type).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    /// Nanoseconds since the epoch.
    pub mtime: Option<i128>,
    pub ctime: Option<i128>,
    pub inode: Option<u64>,
    pub nlink: Option<u64>,
    /// Symlink target, as stored in the link.
    pub target: Option<PathBuf>,
    pub xattrs: Option<BTreeMap<String, Vec<u8>>>,
    /// Plain SHA-256 of the content, as `sha256sum` prints it.
    pub sha256: Option<[u8; 32]>,
    /// SHA-256 over fixed-size chunk digests (see `digest::chunked`).
    pub chunked: Option<[u8; 32]>,
    /// The fs-verity digest (SHA-256, 4 KiB blocks, no salt).
    pub fsverity: Option<[u8; 32]>,
    /// Whether the kernel has fs-verity enabled on the file (`statx`).
    pub verity: Option<bool>,
    /// An append-only file: growth is expected, shrinking is a change.
    pub growing: bool,
}

impl Attributes {
    /// The content digest as the audit log records it at model load: the
    /// plain SHA-256 in hex, or `chunked:` and the chunked digest when only
    /// that was recorded. `None` when no content digest was recorded.
    pub fn digest_text(&self) -> Option<String> {
        self.sha256
            .map(|d| hex(&d))
            .or_else(|| self.chunked.map(|d| format!("chunked:{}", hex(&d))))
    }
}

/// One recorded path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: PathBuf,
    pub kind: Kind,
    pub attrs: Attributes,
}

/// Seconds and nanoseconds since the epoch, as `1700000000.123456789`.
pub(crate) fn time_text(ns: i128) -> String {
    format!(
        "{}.{:09}",
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000)
    )
}

/// JSON as an operator reads it: digests in hex, permissions in octal,
/// times as seconds, attributes that were not recorded left out.
impl Serialize for Entry {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let a = &self.attrs;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("path", &self.path)?;
        map.serialize_entry("type", self.kind.name())?;
        if let Some(v) = a.mode {
            map.serialize_entry("perm", &format!("{v:04o}"))?;
        }
        for (key, value) in [
            ("uid", a.uid.map(u64::from)),
            ("gid", a.gid.map(u64::from)),
            ("size", a.size),
            ("inode", a.inode),
            ("nlink", a.nlink),
        ] {
            if let Some(v) = value {
                map.serialize_entry(key, &v)?;
            }
        }
        for (key, value) in [("mtime", a.mtime), ("ctime", a.ctime)] {
            if let Some(v) = value {
                map.serialize_entry(key, &time_text(v))?;
            }
        }
        if let Some(target) = &a.target {
            map.serialize_entry("target", target)?;
        }
        if let Some(xattrs) = &a.xattrs {
            let hexed: BTreeMap<&String, String> =
                xattrs.iter().map(|(k, v)| (k, hex(v))).collect();
            map.serialize_entry("xattrs", &hexed)?;
        }
        for (key, value) in [
            ("sha256", a.sha256),
            ("chunked", a.chunked),
            ("fsverity", a.fsverity),
        ] {
            if let Some(v) = value {
                map.serialize_entry(key, &hex(&v))?;
            }
        }
        if let Some(v) = a.verity {
            map.serialize_entry("verity", &v)?;
        }
        if a.growing {
            map.serialize_entry("growing", &true)?;
        }
        map.end()
    }
}
