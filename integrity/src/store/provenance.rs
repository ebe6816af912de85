//! The proof of origin of a stored version: the bundle's signed manifest,
//! kept beside it, checked again against the pinned release keys and
//! against what the signed integrity database records for the version.
//! `deepseek-audit verify` runs it for each active version.

use std::path::Path;

use super::error::StoreError;
use super::layout::{Layout, Origin, read_small};
use crate::bundle::{self, FileEntry, MANIFEST, ReleaseKeys, SIGNATURE};
use crate::digest::hex;
use crate::entry::{Entry, Kind};

/// What the proof of a version showed.
#[derive(Debug)]
pub struct Provenance {
    /// SHA-256 of the signed manifest.
    pub bundle_sha256: String,
    /// The pinned release key that signed it.
    pub signer: String,
    /// Files the manifest lists, all as the database records them.
    pub files: usize,
}

/// Checks `version` of `name`: its kept manifest is signed by one of
/// `keys`, names this model and version, matches its origin record, and
/// lists exactly the files the signed database (`entries`) records in the
/// version's directory, with the same sizes and digests.
pub fn provenance(
    entries: &[Entry],
    layout: &Layout,
    keys: &ReleaseKeys,
    name: &str,
    version: &str,
) -> Result<Provenance, StoreError> {
    let origin = layout.origin(name, version);
    let read = |file: &str| {
        let path = origin.join(file);
        read_small(&path)?.ok_or_else(|| {
            StoreError::Mismatch(format!("{} is missing: no proof of origin", path.display()))
        })
    };
    let manifest_bytes = read(MANIFEST)?;
    let note = String::from_utf8(read(SIGNATURE)?).map_err(|_| {
        StoreError::Mismatch(format!("{} is not UTF-8", origin.join(SIGNATURE).display()))
    })?;
    let signed = bundle::signed(keys, &manifest_bytes, &note)?;
    let manifest = &signed.manifest;
    if manifest.name != name || manifest.version != version {
        return Err(StoreError::Mismatch(format!(
            "{}: the signed manifest is for {} {}, not {name} {version}",
            origin.display(),
            manifest.name,
            manifest.version
        )));
    }
    if let Some(recorded) = Origin::read(layout, name, version)?
        && recorded.bundle_sha256 != signed.digest
    {
        return Err(StoreError::Mismatch(format!(
            "{}: the origin record names bundle {}, the kept manifest is {}",
            origin.display(),
            recorded.bundle_sha256,
            signed.digest
        )));
    }
    let dir = layout.version(name, version);
    matches_manifest(entries, &dir, &manifest.files)?;
    Ok(Provenance {
        bundle_sha256: signed.digest.clone(),
        signer: signed.signer.clone(),
        files: manifest.files.len(),
    })
}

/// Checks that the freshly recorded entries of a version's directory are
/// exactly the manifest's files, with its sizes and digests: what gets
/// signed is what the release key signed.
pub(super) fn matches_manifest(
    entries: &[Entry],
    dir: &Path,
    files: &[FileEntry],
) -> Result<(), StoreError> {
    let mismatch = |why: String| StoreError::Mismatch(format!("{}: {why}", dir.display()));
    let mut expected: std::collections::BTreeMap<std::path::PathBuf, &FileEntry> =
        files.iter().map(|f| (dir.join(&f.path), f)).collect();
    for entry in entries.iter().filter(|e| e.path.starts_with(dir)) {
        match entry.kind {
            Kind::Dir => continue,
            Kind::File => {}
            other => {
                return Err(mismatch(format!(
                    "{} is a {}, not a file of the bundle",
                    entry.path.display(),
                    other.name()
                )));
            }
        }
        let Some(file) = expected.remove(&entry.path) else {
            return Err(mismatch(format!(
                "{} is not in the bundle's manifest",
                entry.path.display()
            )));
        };
        let sha256 = entry.attrs.sha256.map(|d| hex(&d));
        let chunked = entry.attrs.chunked.map(|d| hex(&d));
        // Each digest both sides have must agree, and there must be one.
        let chunked_pair = chunked.as_ref().zip(file.chunked_sha256.as_ref());
        let agrees = entry.attrs.size == Some(file.size)
            && sha256.as_ref().is_none_or(|d| *d == file.sha256)
            && chunked_pair.is_none_or(|(a, b)| a == b)
            && (sha256.is_some() || chunked_pair.is_some());
        if !agrees {
            return Err(mismatch(format!(
                "{} as recorded now (size {:?}, sha256 {:?}, chunked {:?}) does not match the \
                 signed manifest (size {}, sha256 {}, chunked {:?})",
                entry.path.display(),
                entry.attrs.size,
                sha256,
                chunked,
                file.size,
                file.sha256,
                file.chunked_sha256
            )));
        }
    }
    if let Some(path) = expected.keys().next() {
        return Err(mismatch(format!("{} is missing", path.display())));
    }
    Ok(())
}
