//! Where the model store keeps things, and the small files beside each
//! version that say where it came from.
//!
//! ```text
//! ROOT/NAME/VERSION/...               the model's files, as the bundle carried them
//! ROOT/NAME/active -> VERSION         the version deepseekd serves (a symbolic link)
//! ROOT/NAME/.origin/VERSION/manifest.json, manifest.sig
//!                                     the bundle's signed manifest: the proof of origin
//! ROOT/NAME/.origin/VERSION/origin.json
//!                                     the bundle digest, signer and import time
//! ROOT/NAME/.activations              the activation stack, newest last (rollback pops it)
//! ```
//!
//! Hidden names cannot be versions (a version never starts with `.`), so
//! the store's own files never collide with one.
//!
//! All of it is in the signed integrity database, the link's target
//! included, so an activation is signed like a file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{StoreError, io};
use crate::bundle::manifest::check_label;
use crate::entry::{Entry, Kind};

/// The store's default root.
pub const DEFAULT_ROOT: &str = "/var/lib/deepseek/models";
/// The link naming a model's active version.
pub const ACTIVE: &str = "active";
/// The directory of the versions' signed manifests and origin records.
pub const ORIGIN: &str = ".origin";
/// The activation stack, one version per line, newest last.
pub const ACTIVATIONS: &str = ".activations";
/// The origin record in each version's origin directory.
pub const ORIGIN_FILE: &str = "origin.json";
/// How many versions of a model are kept by default.
pub const DEFAULT_KEEP: usize = 3;
/// The most versions `--keep` may ask for.
pub const MAX_KEEP: usize = 100;

/// The paths of one store.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// A store at `root`, which must be absolute.
    pub fn new(root: &Path) -> Result<Self, StoreError> {
        if !root.is_absolute() {
            return Err(StoreError::Refused(format!(
                "the store {} must be an absolute path",
                root.display()
            )));
        }
        Ok(Self {
            root: root.to_owned(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn model(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// A version's directory: what deepseekd loads.
    pub fn version(&self, name: &str, version: &str) -> PathBuf {
        self.model(name).join(version)
    }

    pub fn active(&self, name: &str) -> PathBuf {
        self.model(name).join(ACTIVE)
    }

    pub fn origins(&self, name: &str) -> PathBuf {
        self.model(name).join(ORIGIN)
    }

    /// A version's signed manifest and origin record.
    pub fn origin(&self, name: &str, version: &str) -> PathBuf {
        self.origins(name).join(version)
    }

    pub fn activations(&self, name: &str) -> PathBuf {
        self.model(name).join(ACTIVATIONS)
    }
}

/// A model name: a bundle label (letters, digits, `.`, `_`, `-`, `+`, at
/// most 128 bytes, not starting with `.` or `-`) that is also a model name
/// deepseekd accepts (at most 64 bytes, no `+`).
pub fn check_name(name: &str) -> Result<(), StoreError> {
    check_label("name", name)?;
    if name.len() > 64 || name.contains('+') {
        return Err(StoreError::Refused(format!(
            "model name {name:?}: a stored model's name is also its name in deepseekd: \
             at most 64 characters from [A-Za-z0-9._-]"
        )));
    }
    Ok(())
}

/// The models in the store at `root`: its directories whose names are
/// model names, sorted; none when the store does not exist yet.
pub fn model_names(root: &Path) -> Result<Vec<String>, StoreError> {
    let read = match std::fs::read_dir(root) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("read", root)(e)),
    };
    let mut names: Vec<String> = read
        .filter_map(Result::ok)
        .filter(|i| i.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|i| i.file_name().to_str().map(str::to_owned))
        .filter(|n| check_name(n).is_ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Whether the signed database (`entries`) records `version` of `name`:
/// its directory.
pub(super) fn is_recorded(entries: &[Entry], layout: &Layout, name: &str, version: &str) -> bool {
    let dir = layout.version(name, version);
    entries.iter().any(|e| e.path == dir && e.kind == Kind::Dir)
}

/// A version: a bundle label other than `active`, which names the link.
pub fn check_version(version: &str) -> Result<(), StoreError> {
    check_label("version", version)?;
    if version == ACTIVE {
        return Err(StoreError::Refused(format!(
            "version {ACTIVE:?} is reserved: it names the link to the active version"
        )));
    }
    Ok(())
}

/// `origin.json`: what the import recorded about a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    /// SHA-256 of the bundle's manifest: the bundle's identity.
    pub bundle_sha256: String,
    /// The release key that signed it, `NAME+KEYID` as pinned.
    pub signer: String,
    /// When it was imported, nanoseconds since the epoch (orders versions).
    pub imported_ns: u128,
    /// The uid that imported it.
    pub imported_by_uid: u32,
    /// Files hard-linked to an identical file of an earlier version
    /// instead of being stored again.
    pub linked_files: usize,
}

/// The most bytes of `origin.json` or `activations` read: both are small.
const MAX_SMALL_FILE: u64 = 1 << 20;

/// Reads a small file of the store whole, refusing one over
/// [`MAX_SMALL_FILE`].
pub(super) fn read_small(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read", path)(e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_SMALL_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(io("read", path))?;
    if bytes.len() as u64 > MAX_SMALL_FILE {
        return Err(StoreError::Mismatch(format!(
            "{} is over {MAX_SMALL_FILE} bytes",
            path.display()
        )));
    }
    Ok(Some(bytes))
}

impl Origin {
    /// The origin record of a version, if it has one.
    pub fn read(layout: &Layout, name: &str, version: &str) -> Result<Option<Self>, StoreError> {
        let path = layout.origin(name, version).join(ORIGIN_FILE);
        read_small(&path)?
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|e| {
                    StoreError::Mismatch(format!("{}: not an origin record: {e}", path.display()))
                })
            })
            .transpose()
    }
}

/// The activation stack of a model, oldest first; empty if it was never
/// activated.
pub fn activations(layout: &Layout, name: &str) -> Result<Vec<String>, StoreError> {
    let path = layout.activations(name);
    let Some(bytes) = read_small(&path)? else {
        return Ok(Vec::new());
    };
    let text = String::from_utf8(bytes)
        .map_err(|_| StoreError::Mismatch(format!("{} is not UTF-8", path.display())))?;
    text.lines()
        .map(|line| {
            check_version(line)
                .map_err(|e| StoreError::Mismatch(format!("{}: {line:?}: {e}", path.display())))?;
            Ok(line.to_owned())
        })
        .collect()
}
