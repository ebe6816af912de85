//! Which version of a stored model is active: the link on disk, accepted
//! only where the signed database records the same link. deepseekd and
//! `deepseek-audit verify` read it this way.

use std::path::Path;

use super::error::{StoreError, io};
use super::layout::{Layout, check_version, is_recorded};
use crate::entry::{Entry, Kind};

/// The active version of `name`: the target of `ROOT/NAME/active`, which
/// the signed database (`entries`) must record as that same link, and
/// whose directory the database must record.
pub fn active_version(
    entries: &[Entry],
    layout: &Layout,
    name: &str,
) -> Result<String, StoreError> {
    let link = layout.active(name);
    let target = match std::fs::read_link(&link) {
        Ok(target) => target,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StoreError::Refused(format!(
                "model {name:?} has no active version in the store {} ({} does not exist): \
                 import a bundle and activate a version",
                layout.root().display(),
                link.display()
            )));
        }
        Err(e) => return Err(io("read the link", &link)(e)),
    };
    let version = target
        .to_str()
        .filter(|t| check_version(t).is_ok())
        .ok_or_else(|| {
            StoreError::Mismatch(format!(
                "{} points to {}, not to a version beside it",
                link.display(),
                target.display()
            ))
        })?
        .to_owned();
    let recorded = entries.iter().find(|e| e.path == link);
    match recorded {
        Some(e) if e.kind == Kind::Symlink && e.attrs.target.as_deref() == Some(&target) => {}
        Some(e) if e.kind == Kind::Symlink && e.attrs.target.is_some() => {
            return Err(StoreError::Mismatch(format!(
                "{} points to {version}, but the signed integrity database records {}: \
                 the link was changed outside `deepseek-audit model activate`",
                link.display(),
                e.attrs.target.as_deref().unwrap_or(Path::new("")).display()
            )));
        }
        _ => {
            return Err(StoreError::Mismatch(format!(
                "{} is not recorded as a link with its target in the signed integrity \
                 database: activate the version with `deepseek-audit model activate`",
                link.display()
            )));
        }
    }
    if !is_recorded(entries, layout, name, &version) {
        return Err(StoreError::Mismatch(format!(
            "the active version {version} of {name:?} ({}) is not in the signed integrity database",
            layout.version(name, &version).display()
        )));
    }
    Ok(version)
}

/// The active version of `name` as the signed database records it (the
/// target of its `active` link entry), whatever the disk says now.
pub(super) fn recorded_active(entries: &[Entry], layout: &Layout, name: &str) -> Option<String> {
    let link = layout.active(name);
    entries
        .iter()
        .find(|e| e.path == link && e.kind == Kind::Symlink)
        .and_then(|e| e.attrs.target.as_deref()?.to_str().map(str::to_owned))
        .filter(|v| check_version(v).is_ok())
}
