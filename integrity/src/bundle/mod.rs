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
mod error;
mod hashes;
pub mod limits;
pub mod manifest;
mod read;
mod ustar;

pub use create::{CreateOptions, create};
pub use error::BundleError;
pub use manifest::{FILES, FileEntry, Kind, MANIFEST, Manifest, SIGNATURE};
pub use read::{ReleaseKeys, Signed, Verified, signed, verify};
