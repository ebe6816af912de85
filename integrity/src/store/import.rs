//! Importing a model bundle: verified as it streams into a staging
//! directory, moved to `ROOT/NAME/VERSION`, its files identical to an
//! earlier version's hard-linked, its signed manifest kept beside it, and
//! everything recorded again, checked against the manifest before anything
//! is signed.

use std::io::Read;
use std::path::Path;

use super::amend::Scope;
use super::error::{StoreError, io};
use super::layout::{ORIGIN_FILE, Origin, check_name, check_version};
use super::ops::{Operation, Pending, Store, Undo, replace_file, sync_parent};
use super::provenance::matches_manifest;
use crate::bundle::{self, FileEntry, Kind as BundleKind, MANIFEST, ReleaseKeys, SIGNATURE};
use crate::digest::hex;
use crate::entry::{Entry, Kind};

/// Where a bundle is unpacked before its name and version are known.
const STAGING: &str = ".incoming";

impl Store {
    /// Imports the model bundle `reader` streams, verified against `keys`.
    pub fn import(&self, reader: impl Read, keys: &ReleaseKeys) -> Result<Pending<'_>, StoreError> {
        let layout = &self.layout;
        let staging = layout.root().join(STAGING);
        // Leftovers of an import that was killed: this one holds the lock.
        for leftover in [
            staging.clone(),
            layout.root().join(format!(".{STAGING}.partial")),
        ] {
            match std::fs::remove_dir_all(&leftover) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io("remove the leftover", &leftover)(e));
                }
                _ => {}
            }
        }
        let verified = bundle::verify(reader, keys, Some(&staging));
        let mut staged = Staged {
            path: &staging,
            kept: false,
        };
        let verified = verified?;
        let manifest = &verified.signed.manifest;
        if manifest.kind != BundleKind::Model {
            return Err(StoreError::Refused(format!(
                "{} {} is a {} bundle, not a model bundle",
                manifest.name,
                manifest.version,
                manifest.kind.name()
            )));
        }
        let (name, version) = (manifest.name.as_str(), manifest.version.as_str());
        check_name(name)?;
        check_version(version)?;
        let dir = layout.version(name, version);
        let origin_dir = layout.origin(name, version);
        self.unchanged(name, std::slice::from_ref(&staging))?;
        if dir.exists() || origin_dir.exists() {
            return Err(StoreError::Refused(format!(
                "{name} {version} is already in the store ({}): remove it first to import it again",
                dir.display()
            )));
        }
        for parent in [layout.model(name), layout.origins(name)] {
            match std::fs::create_dir(&parent) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(io("create", &parent)(e));
                }
                _ => {}
            }
        }
        std::fs::rename(&staging, &dir).map_err(io("move into place", &dir))?;
        staged.kept = true;
        // From here the pending import removes what it wrote if dropped.
        let mut pending = self.pending(
            Operation::Import,
            name,
            version,
            Undo::Remove(vec![dir.clone(), origin_dir.clone()]),
        )?;
        sync_parent(&dir)?;
        let linked = if self.may_link() {
            self.link_identical(name, version, &manifest.files)?
        } else {
            0
        };
        std::fs::create_dir(&origin_dir).map_err(io("create", &origin_dir))?;
        let origin = Origin {
            bundle_sha256: verified.signed.digest.clone(),
            signer: verified.signed.signer.clone(),
            imported_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
            imported_by_uid: nix::unistd::getuid().as_raw(),
            linked_files: linked,
        };
        let origin_json = serde_json::to_vec_pretty(&origin).expect("an origin serializes");
        for (file, bytes) in [
            (MANIFEST, verified.manifest_bytes.as_slice()),
            (SIGNATURE, verified.note.as_bytes()),
            (ORIGIN_FILE, origin_json.as_slice()),
        ] {
            replace_file(&origin_dir.join(file), bytes)?;
        }
        let mut scopes = self.model_scopes(name);
        scopes.push(Scope::tree(dir.clone()));
        let entries = self.recorded.borrow().rescan(
            &self.config,
            &scopes,
            &self.options,
            &self.interrupted,
        )?;
        matches_manifest(&entries, &dir, &manifest.files)?;
        pending.entries = Some(entries);
        pending.origin = Some(origin);
        Ok(pending)
    }

    /// Replaces each file of the new version that is identical (size and
    /// recorded digest) to a signed file of an earlier version of the
    /// model with a hard link to it; returns how many. The new version is
    /// then scanned and checked against its manifest like any other, so a
    /// linked file that no longer matches is caught.
    fn link_identical(
        &self,
        name: &str,
        version: &str,
        files: &[FileEntry],
    ) -> Result<usize, StoreError> {
        let model = self.layout.model(name);
        let dir = self.layout.version(name, version);
        let recorded = self.recorded.borrow();
        let earlier: Vec<&Entry> = recorded
            .entries
            .iter()
            .filter(|e| e.kind == Kind::File && e.path.starts_with(&model))
            .filter(|e| !e.path.starts_with(self.layout.origins(name)) && !e.path.starts_with(&dir))
            .collect();
        let mut linked = 0;
        for file in files {
            let same = earlier.iter().find(|e| {
                e.attrs.size == Some(file.size)
                    && (e.attrs.sha256.map(|d| hex(&d)).as_ref() == Some(&file.sha256)
                        || (e.attrs.chunked.is_some()
                            && e.attrs.chunked.map(|d| hex(&d)) == file.chunked_sha256))
            });
            let Some(same) = same else { continue };
            let target = dir.join(&file.path);
            let temporary = target.with_file_name(format!(".{}.link", linked));
            if std::fs::hard_link(&same.path, &temporary).is_err() {
                continue; // Gone, or on another filesystem: keep the copy.
            }
            std::fs::rename(&temporary, &target).map_err(io("replace", &target))?;
            linked += 1;
        }
        Ok(linked)
    }
}

/// The staging directory, removed unless it was moved into place.
struct Staged<'p> {
    path: &'p Path,
    kept: bool,
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_dir_all(self.path);
        }
    }
}
