//! The store's operations. Each is prepared (checked, and where it must
//! be, written to disk), then described for the audit log, then committed
//! (the signed database replaced) or, if the audit record failed, undone:
//! an operation the log does not hold does not take effect.

use std::cell::RefCell;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::active::recorded_active;
use super::amend::{Recorded, Scope, check_coverage, signing_key};
use super::error::{StoreError, io};
use super::layout::{
    ACTIVATIONS, ACTIVE, Layout, Origin, activations, check_name, check_version, is_recorded,
    model_names,
};
use super::provenance::provenance;
use crate::bundle::ReleaseKeys;
use crate::config::{Attr, Config};
use crate::entry::Entry;
use crate::keys::Signer25519;
use crate::scan::Options;

/// What an operation does, as the audit log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Import,
    Activate,
    Rollback,
    Remove,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Import => "import",
            Self::Activate => "activate",
            Self::Rollback => "rollback",
            Self::Remove => "remove",
        }
    }
}

/// A store opened for changes: its lock held, the database loaded and
/// verified, the signing key checked against the pinned verifier key.
#[derive(Debug)]
pub struct Store {
    pub(super) config: Config,
    pub(super) layout: Layout,
    /// Replaced by each commit, so that the next operation sees it.
    pub(super) recorded: RefCell<Recorded>,
    pub(super) key: Signer25519,
    pub(super) options: Options,
    pub(super) interrupted: std::sync::Arc<AtomicBool>,
    /// `flock`ed: one operation at a time.
    _lock: OwnedFd,
    /// The integrity database's lock: no `deepseek-integrity update` signs
    /// meanwhile.
    _database_lock: OwnedFd,
}

/// One version of a stored model, as `list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VersionInfo {
    pub name: String,
    pub version: String,
    pub active: bool,
    /// Whether the signed database records the version's directory.
    pub recorded: bool,
    pub origin: Option<Origin>,
}

/// A prepared operation, to be recorded and then committed; dropped
/// uncommitted, it is undone.
#[derive(Debug)]
pub struct Pending<'s> {
    store: &'s Store,
    pub operation: Operation,
    pub name: String,
    pub version: String,
    /// The version active before, if any.
    pub previous: Option<String>,
    /// The version's origin: bundle digest and signer.
    pub origin: Option<Origin>,
    /// The database once committed; `None` for a removal, recorded after
    /// the files are gone.
    pub(super) entries: Option<Vec<Entry>>,
    undo: Undo,
    done: bool,
}

/// How to take back what a prepared operation wrote.
#[derive(Debug)]
pub(super) enum Undo {
    Nothing,
    /// An import: its version and origin directories.
    Remove(Vec<PathBuf>),
    /// An activation: the link's and the stack's former state.
    Restore {
        link: Option<PathBuf>,
        stack: Option<Vec<u8>>,
    },
}

impl Store {
    /// Opens the store at `root` for an operation on it.
    pub fn open(
        config: Config,
        root: &Path,
        options: Options,
        interrupted: std::sync::Arc<AtomicBool>,
    ) -> Result<Self, StoreError> {
        let layout = Layout::new(root)?;
        check_coverage(&config, root)?;
        let lock = crate::database::lock_directory(root)
            .map_err(io("open the model store", root))?
            .ok_or_else(|| {
                StoreError::Refused(format!(
                    "another model store operation holds {} (flock): wait for it to finish",
                    root.display()
                ))
            })?;
        let database_lock = crate::database::lock(&config.database)?;
        let key = signing_key(&config)?;
        let recorded = Recorded::load(&config)?;
        Ok(Self {
            config,
            layout,
            recorded: RefCell::new(recorded),
            key,
            options,
            interrupted,
            _lock: lock,
            _database_lock: database_lock,
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Whether identical files may be hard-linked between versions: not if
    /// the database records inode numbers or link counts, which a new link
    /// would change under an earlier version's signed entries.
    pub(super) fn may_link(&self) -> bool {
        super::amend::covering(&self.config, self.layout.root())
            .is_some_and(|rule| !rule.records(Attr::Inode) && !rule.records(Attr::Nlink))
    }

    /// The scopes every operation on `name` records again: the store's
    /// and the model's directories, and the origin records.
    pub(super) fn model_scopes(&self, name: &str) -> Vec<Scope> {
        vec![
            Scope::level(self.layout.root().to_owned()),
            Scope::level(self.layout.model(name)),
            Scope::tree(self.layout.origins(name)),
        ]
    }

    /// The versions of `name` on disk, oldest import first.
    pub fn versions(&self, name: &str) -> Result<Vec<String>, StoreError> {
        versions(&self.layout, name)
    }

    /// An operation on `version` of `name`, to be recorded, then signed
    /// (its `entries` set by the operation) or taken back by `undo`.
    pub(super) fn pending(
        &self,
        operation: Operation,
        name: &str,
        version: &str,
        undo: Undo,
    ) -> Result<Pending<'_>, StoreError> {
        Ok(Pending {
            store: self,
            operation,
            name: name.to_owned(),
            version: version.to_owned(),
            previous: self.recorded_active(name),
            origin: Origin::read(&self.layout, name, version)?,
            entries: None,
            undo,
            done: false,
        })
    }

    /// The active version the signed database records for `name`.
    pub(super) fn recorded_active(&self, name: &str) -> Option<String> {
        recorded_active(&self.recorded.borrow().entries, &self.layout, name)
    }

    /// Refuses unless the store's paths for `name` are as signed, but for
    /// `except`, which the operation rewrites whole.
    pub(super) fn unchanged(&self, name: &str, except: &[PathBuf]) -> Result<(), StoreError> {
        let model = self.layout.model(name);
        match std::fs::symlink_metadata(&model) {
            Ok(m) if !m.is_dir() => {
                return Err(StoreError::Refused(format!(
                    "{} is not a directory (a link?): the store keeps each model in a directory",
                    model.display()
                )));
            }
            _ => {}
        }
        self.recorded.borrow().unchanged(
            &self.config,
            &self.model_scopes(name),
            except,
            &self.options,
            &self.interrupted,
        )
    }

    /// Whether the signed database records `version` of `name`.
    fn is_recorded(&self, name: &str, version: &str) -> bool {
        is_recorded(&self.recorded.borrow().entries, &self.layout, name, version)
    }

    /// Activates `version` of `name`: the link and the activation stack
    /// are rewritten now, and signed when committed.
    ///
    /// The version must be a signed release as signed: its kept manifest
    /// signed by one of `keys` and matching what the database records.
    pub fn activate(
        &self,
        name: &str,
        version: &str,
        keys: &ReleaseKeys,
    ) -> Result<Pending<'_>, StoreError> {
        check_name(name)?;
        check_version(version)?;
        if !self.is_recorded(name, version) {
            return Err(StoreError::Refused(format!(
                "{name} {version} is not in the store (deepseek-audit model list shows what is)"
            )));
        }
        if self.recorded_active(name).as_deref() == Some(version) {
            return Err(StoreError::Refused(format!(
                "{name} {version} is already the active version"
            )));
        }
        let mut stack = activations(&self.layout, name)?;
        stack.retain(|v| v != version && self.is_recorded(name, v));
        stack.push(version.to_owned());
        self.switch(Operation::Activate, name, version, &stack, keys)
    }

    /// Re-activates the version that was active before the active one
    /// (skipping any removed since), and pops the active one off the
    /// activation stack, so that a second rollback goes one further back.
    pub fn rollback(&self, name: &str, keys: &ReleaseKeys) -> Result<Pending<'_>, StoreError> {
        check_name(name)?;
        let active = self.recorded_active(name).ok_or_else(|| {
            StoreError::Refused(format!("{name} has no active version to roll back from"))
        })?;
        let mut stack = activations(&self.layout, name)?;
        stack.retain(|v| self.is_recorded(name, v));
        if stack.last() != Some(&active) {
            stack.retain(|v| v != &active);
        } else {
            stack.pop();
        }
        let Some(previous) = stack.last().cloned() else {
            return Err(StoreError::Refused(format!(
                "{name} {active} is the only version ever activated that is still in the store: \
                 nothing to roll back to"
            )));
        };
        self.switch(Operation::Rollback, name, &previous, &stack, keys)
    }

    /// Points the link at `version` and writes `stack`, then records them.
    /// The link and the stack are rewritten whole, so they may differ from
    /// the database (a link moved by hand, an activation interrupted):
    /// that is what an activation repairs.
    fn switch(
        &self,
        operation: Operation,
        name: &str,
        version: &str,
        stack: &[String],
        keys: &ReleaseKeys,
    ) -> Result<Pending<'_>, StoreError> {
        let link = self.layout.active(name);
        let stack_path = self.layout.activations(name);
        self.unchanged(name, &[link.clone(), stack_path.clone()])?;
        provenance(
            &self.recorded.borrow().entries,
            &self.layout,
            keys,
            name,
            version,
        )?;
        let undo = Undo::Restore {
            link: std::fs::read_link(&link).ok(),
            stack: std::fs::read(&stack_path).ok(),
        };
        let mut pending = self.pending(operation, name, version, undo)?;
        replace_link(&link, Path::new(version))?;
        let mut text = stack.join("\n");
        text.push('\n');
        replace_file(&stack_path, text.as_bytes())?;
        pending.entries = Some(self.recorded.borrow().rescan(
            &self.config,
            &self.model_scopes(name),
            &self.options,
            &self.interrupted,
        )?);
        Ok(pending)
    }

    /// Removes `version` of `name` (not the active one): recorded first,
    /// then the files go when committed.
    pub fn remove(&self, name: &str, version: &str) -> Result<Pending<'_>, StoreError> {
        check_name(name)?;
        check_version(version)?;
        if !self.layout.version(name, version).exists() && !self.is_recorded(name, version) {
            return Err(StoreError::Refused(format!(
                "{name} {version} is not in the store"
            )));
        }
        if self.recorded_active(name).as_deref() == Some(version) {
            return Err(StoreError::Refused(format!(
                "{name} {version} is the active version: activate another (or roll back) first"
            )));
        }
        self.unchanged(
            name,
            &[
                self.layout.version(name, version),
                self.layout.origin(name, version),
            ],
        )?;
        self.pending(Operation::Remove, name, version, Undo::Nothing)
    }

    /// The versions beyond the newest `keep` imports of `name`, oldest
    /// first; never the active one nor `imported` (the version just
    /// imported), which count towards `keep`.
    pub fn surplus(
        &self,
        name: &str,
        keep: usize,
        imported: &str,
    ) -> Result<Vec<String>, StoreError> {
        let active = self.recorded_active(name);
        let mut protected: Vec<&str> = vec![imported];
        if let Some(active) = active.as_deref()
            && active != imported
        {
            protected.push(active);
        }
        let mut versions = self.versions(name)?;
        versions.retain(|v| !protected.contains(&v.as_str()));
        let kept = keep.saturating_sub(protected.len());
        let excess = versions.len().saturating_sub(kept);
        versions.truncate(excess);
        Ok(versions)
    }
}

impl Pending<'_> {
    /// Makes the operation take effect: signs and stores the database
    /// (for a removal, once its files are gone).
    pub fn commit(mut self) -> Result<(), StoreError> {
        let store = self.store;
        let entries = match self.entries.take() {
            Some(entries) => entries,
            None => {
                for path in [
                    store.layout.version(&self.name, &self.version),
                    store.layout.origin(&self.name, &self.version),
                ] {
                    match std::fs::remove_dir_all(&path) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(io("remove", &path)(e));
                        }
                        _ => {}
                    }
                }
                let mut scopes = store.model_scopes(&self.name);
                scopes.push(Scope::tree(store.layout.version(&self.name, &self.version)));
                store.recorded.borrow().rescan(
                    &store.config,
                    &scopes,
                    &store.options,
                    &store.interrupted,
                )?
            }
        };
        let stored = store
            .recorded
            .borrow()
            .store(&store.config, &store.key, entries)?;
        *store.recorded.borrow_mut() = stored;
        self.done = true;
        Ok(())
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        match &self.undo {
            Undo::Nothing => {}
            Undo::Remove(paths) => {
                for path in paths {
                    let _ = std::fs::remove_dir_all(path);
                }
                // The model's directories too, if the import made them.
                let layout = &self.store.layout;
                let _ = std::fs::remove_dir(layout.origins(&self.name));
                let _ = std::fs::remove_dir(layout.model(&self.name));
            }
            Undo::Restore { link, stack } => {
                let active = self.store.layout.active(&self.name);
                let _ = match link {
                    Some(target) => replace_link(&active, target),
                    None => std::fs::remove_file(&active).map_err(io("remove", &active)),
                };
                let path = self.store.layout.activations(&self.name);
                let _ = match stack {
                    Some(bytes) => replace_file(&path, bytes),
                    None => std::fs::remove_file(&path).map_err(io("remove", &path)),
                };
            }
        }
    }
}

/// The versions of `name` on disk (directories other than the link and the
/// hidden ones), oldest import first (by their origin records; a version
/// without one sorts first, by name).
pub(super) fn versions(layout: &Layout, name: &str) -> Result<Vec<String>, StoreError> {
    Ok(versions_with_origins(layout, name)?
        .into_iter()
        .map(|(version, _)| version)
        .collect())
}

/// [`versions`], each with its origin record, read once.
fn versions_with_origins(
    layout: &Layout,
    name: &str,
) -> Result<Vec<(String, Option<Origin>)>, StoreError> {
    let dir = layout.model(name);
    let read = match std::fs::read_dir(&dir) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("read", &dir)(e)),
    };
    let mut versions = Vec::new();
    for item in read {
        let item = item.map_err(io("read", &dir))?;
        let Some(version) = item.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if version == ACTIVE || version.starts_with('.') || check_version(&version).is_err() {
            continue;
        }
        if item.file_type().map_err(io("read", &dir))?.is_dir() {
            let origin = Origin::read(layout, name, &version)?;
            versions.push((origin.as_ref().map(|o| o.imported_ns), version, origin));
        }
    }
    versions.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    Ok(versions
        .into_iter()
        .map(|(_, version, origin)| (version, origin))
        .collect())
}

/// Every stored version of every model, with the active one marked and
/// whether the signed database records it. Reads, never writes: no lock
/// and no signing key needed.
pub fn list(config: &Config, root: &Path) -> Result<Vec<VersionInfo>, StoreError> {
    let layout = Layout::new(root)?;
    let entries = crate::database::load(&config.database, config.verifier())?;
    let mut list = Vec::new();
    for name in model_names(root)? {
        let active = recorded_active(&entries, &layout, &name);
        for (version, origin) in versions_with_origins(&layout, &name)? {
            list.push(VersionInfo {
                active: active.as_deref() == Some(version.as_str()),
                recorded: is_recorded(&entries, &layout, &name, &version),
                origin,
                name: name.clone(),
                version,
            });
        }
    }
    Ok(list)
}

/// Points the link `link` at `target`: a new link beside it renamed over
/// it, then the directory synced.
fn replace_link(link: &Path, target: &Path) -> Result<(), StoreError> {
    let temporary = link.with_file_name(format!(".{ACTIVE}.new"));
    let _ = std::fs::remove_file(&temporary);
    std::os::unix::fs::symlink(target, &temporary).map_err(io("create the link", &temporary))?;
    std::fs::rename(&temporary, link).map_err(io("replace", link))?;
    sync_parent(link)
}

/// Replaces the small file `path` with `bytes` atomically.
pub(super) fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    let temporary = path.with_file_name(format!(
        ".{}.new",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(ACTIVATIONS)
    ));
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temporary)
        .map_err(io("create", &temporary))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io("write", &temporary))?;
    std::fs::rename(&temporary, path).map_err(io("replace", path))?;
    sync_parent(path)
}

/// Syncs the directory holding `path`, so that a rename in it is durable.
pub(super) fn sync_parent(path: &Path) -> Result<(), StoreError> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", parent))
}
