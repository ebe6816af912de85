//! Signed bundles: the one format that carries models and software onto the
//! air-gapped appliance (docs/guide/bundles.md).
//!
//! A bundle is an uncompressed ustar archive of regular files only:
//! `manifest.json` (every file's path, size and SHA-256), `manifest.sig` (a
//! C2SP signed note over the manifest's SHA-256, by a release key), then
//! each file under `files/`, in the manifest's order. It is verified as it
//! streams: the signature before any file is read, each file's size and
//! digest as it passes, so a bad bundle is refused without unpacking it.

pub mod cli;
mod create;
mod hashes;
pub mod manifest;
mod read;
mod ustar;

pub use create::{CreateOptions, create};
pub use manifest::{FileEntry, Kind, Manifest};
pub use read::{ReleaseKeys, Verified, verify};

/// What a bundle may hold, checked before the work: every bound is in
/// docs/guide/bundles.md.
pub mod limits {
    /// Bytes of `manifest.json`.
    pub const MAX_MANIFEST: u64 = 16 << 20;
    /// Bytes of `manifest.sig`.
    pub const MAX_SIGNATURE: u64 = 64 << 10;
    /// Files in one bundle.
    pub const MAX_FILES: usize = 100_000;
    /// Bytes of a path inside `files/` (a ustar name and prefix hold 255
    /// with the `files/` prefix).
    pub const MAX_PATH: usize = 240;
    /// Bytes of a name, version, `created` or `builder`.
    pub const MAX_NAME: usize = 128;
    /// Bytes of one file (1 TiB).
    pub const MAX_FILE: u64 = 1 << 40;
    /// Zero bytes accepted after the archive's end marker (tar pads to
    /// 10 KiB records; this allows any blocking factor up to 1 MiB).
    pub const MAX_TRAILER: u64 = 1 << 20;
    /// Release keys read from a directory.
    pub const MAX_KEYS: usize = 64;
}

/// The first two members' names, and the directory of the files.
pub const MANIFEST: &str = "manifest.json";
pub const SIGNATURE: &str = "manifest.sig";
pub const FILES: &str = "files/";

/// Why a bundle was refused or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("the manifest is invalid: {0}")]
    Manifest(String),
    #[error("path {0:?} is refused: {1}")]
    Path(String, String),
    #[error("the signature is refused: {0}")]
    Signature(String),
    #[error("the archive is refused: {0}")]
    Archive(String),
    #[error("{path}: {why}")]
    Mismatch { path: String, why: String },
    #[error("a release key is invalid: {0}")]
    Key(String),
}

impl BundleError {
    /// The exit code for this error (docs/guide/exit-codes.md).
    pub fn exit(&self) -> crate::exit::Exit {
        use crate::exit::Exit;
        match self {
            Self::Io(..) => Exit::Io,
            Self::Signature(_) | Self::Key(_) => Exit::Signature,
            Self::Manifest(_) | Self::Path(..) | Self::Archive(_) | Self::Mismatch { .. } => {
                Exit::Bundle
            }
        }
    }
}

/// `action` on `path` failed.
fn io(action: &str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> BundleError {
    let what = format!("cannot {action} {}", path.display());
    move |e| BundleError::Io(what, e)
}
