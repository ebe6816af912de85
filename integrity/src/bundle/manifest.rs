//! The manifest: what a bundle holds, and the text its signature covers.

use serde::{Deserialize, Serialize};

use super::error::BundleError;
use super::limits::{MAX_FILE, MAX_FILES, MAX_NAME};
use super::ustar::{check_path, header};

/// The first two members' names, and the directory of the files.
pub const MANIFEST: &str = "manifest.json";
pub const SIGNATURE: &str = "manifest.sig";
pub const FILES: &str = "files/";

/// The format's name, first in the manifest and in the signed text.
pub const FORMAT: &str = "deepseek-bundle/1";

/// What the bundle carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A model directory, for the model store.
    Model,
    /// Packages and their software bill of materials.
    Software,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Model => "model",
            Self::Software => "software",
        }
    }
}

/// One file of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative, `/`-separated, without `.` or `..` components.
    pub path: String,
    pub size: u64,
    /// SHA-256 of the content, hex.
    pub sha256: String,
    /// The integrity database's chunked digest (hex), for files of at least
    /// one chunk (64 MiB), so that importing them needs no second hashing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunked_sha256: Option<String>,
}

/// The manifest, `manifest.json`, the bundle's first member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    pub name: String,
    pub version: String,
    pub kind: Kind,
    /// When it was made, RFC 3339 UTC.
    pub created: String,
    /// Who made it (`user@host` on the staging machine).
    pub builder: String,
    /// The path of the CycloneDX SBOM among `files`, if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sbom: Option<String>,
    /// In the order the bundle carries them.
    pub files: Vec<FileEntry>,
}

/// A name or version: letters, digits, `.`, `_`, `-`, `+`, not starting
/// with `.` or `-`, at most [`MAX_NAME`] bytes; it becomes a directory name
/// in the model store.
pub fn check_label(field: &'static str, value: &str) -> Result<(), BundleError> {
    let valid = !value.is_empty()
        && value.len() <= MAX_NAME
        && !value.starts_with(['.', '-'])
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'));
    if valid {
        Ok(())
    } else {
        Err(BundleError::Manifest(format!(
            "{field} {value:?}: expected 1 to {MAX_NAME} letters, digits, '.', '_', '-' or '+', not starting with '.' or '-'"
        )))
    }
}

impl Manifest {
    /// Parses and checks a manifest: its format, labels, paths (unique,
    /// none a prefix directory of another), digests, and the SBOM's place.
    pub fn parse(bytes: &[u8]) -> Result<Self, BundleError> {
        let manifest: Self = serde_json::from_slice(bytes)
            .map_err(|e| BundleError::Manifest(format!("manifest.json: {e}")))?;
        manifest.check()?;
        Ok(manifest)
    }

    /// The checks of [`Self::parse`], also run before signing.
    pub fn check(&self) -> Result<(), BundleError> {
        if self.format != FORMAT {
            return Err(BundleError::Manifest(format!(
                "format {:?}: expected {FORMAT:?}",
                self.format
            )));
        }
        check_label("name", &self.name)?;
        check_label("version", &self.version)?;
        for (field, value) in [("created", &self.created), ("builder", &self.builder)] {
            if value.len() > MAX_NAME || value.chars().any(char::is_control) {
                return Err(BundleError::Manifest(format!(
                    "{field}: at most {MAX_NAME} bytes without control characters"
                )));
            }
        }
        if self.files.len() > MAX_FILES {
            return Err(BundleError::Manifest(format!(
                "{} files: at most {MAX_FILES}",
                self.files.len()
            )));
        }
        let mut paths = std::collections::BTreeSet::new();
        for file in &self.files {
            check_path(&file.path)?;
            if header(&format!("{FILES}{}", file.path), 0).is_err() {
                return Err(BundleError::Path(
                    file.path.clone(),
                    "too long for a ustar header: after files/, at most 100 bytes, or a split at a '/' \
                     into at most 155 and 100"
                        .into(),
                ));
            }
            let hex = |d: &str| {
                d.len() == 64
                    && d.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            };
            if !hex(&file.sha256) || !file.chunked_sha256.as_deref().is_none_or(hex) {
                return Err(BundleError::Manifest(format!(
                    "{}: a digest is not 64 lowercase hex digits",
                    file.path
                )));
            }
            if file.size > MAX_FILE {
                return Err(BundleError::Path(
                    file.path.clone(),
                    format!("{} bytes, over {MAX_FILE}", file.size),
                ));
            }
            if file.chunked_sha256.is_some() != (file.size >= crate::digest::CHUNK_SIZE) {
                return Err(BundleError::Manifest(format!(
                    "{}: chunked_sha256 is listed exactly for files of 64 MiB or more",
                    file.path
                )));
            }
            if !paths.insert(file.path.as_str()) {
                return Err(BundleError::Path(file.path.clone(), "listed twice".into()));
            }
        }
        // A file may not also be a directory of another ("a" and "a/b").
        for path in &paths {
            if let Some((at, _)) = path
                .match_indices('/')
                .find(|(at, _)| paths.contains(&path[..*at]))
            {
                return Err(BundleError::Path(
                    (*path).to_owned(),
                    format!("{} is also a file", &path[..at]),
                ));
            }
        }
        if let Some(sbom) = &self.sbom
            && !paths.contains(sbom.as_str())
        {
            return Err(BundleError::Manifest(format!(
                "sbom {sbom:?} is not among the files"
            )));
        }
        Ok(())
    }

    /// The manifest's bytes as the bundle carries them.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("manifests serialize");
        bytes.push(b'\n');
        bytes
    }

    /// Total bytes of the files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// The text the release key signs: the format, what the bundle is, and the
/// SHA-256 of `manifest.json` (the bundle's digest).
pub fn signed_text(manifest: &Manifest, digest: &str) -> String {
    format!(
        "{FORMAT}\n{} {} {}\nmanifest sha256 {digest}\n",
        manifest.kind.name(),
        manifest.name,
        manifest.version
    )
}
