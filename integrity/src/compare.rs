//! Comparing the database with the system: what was added, removed, and
//! which attributes of which entries changed, old and new.

use serde::Serialize;

use crate::digest::hex;
use crate::entry::{Attributes, Entry, time_text};

/// One changed attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttrChange {
    pub attribute: &'static str,
    pub old: String,
    pub new: String,
}

/// One entry whose attributes changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Changed {
    pub path: String,
    pub changes: Vec<AttrChange>,
}

/// The differences between the database and the system.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Differences {
    pub added: Vec<Entry>,
    pub removed: Vec<Entry>,
    pub changed: Vec<Changed>,
}

impl Differences {
    /// AIDE's summed code: 1 added, 2 removed, 4 changed.
    pub fn code(&self) -> u8 {
        let mut code = 0;
        if !self.added.is_empty() {
            code |= crate::exit::ADDED;
        }
        if !self.removed.is_empty() {
            code |= crate::exit::REMOVED;
        }
        if !self.changed.is_empty() {
            code |= crate::exit::CHANGED;
        }
        code
    }

    pub fn is_empty(&self) -> bool {
        self.code() == 0
    }
}

/// The attributes that differ, as text. An attribute recorded on one side
/// only (the rules changed since the database was written) is a change too:
/// otherwise a rule that stopped recording a digest would silently stop
/// checking content until the next `update`.
fn attribute_changes(old: &Attributes, new: &Attributes) -> Vec<AttrChange> {
    let mut changes = Vec::new();
    let mut push = |attribute, old: String, new: String| {
        if old != new {
            changes.push(AttrChange {
                attribute,
                old,
                new,
            });
        }
    };
    // A growing file may get longer; only a shrink (or a change of any
    // attribute that is not about content) is a change.
    let grew = old.growing && matches!((old.size, new.size), (Some(o), Some(n)) if n >= o);
    const NOT_RECORDED: &str = "(not recorded)";
    macro_rules! compare {
        ($field:ident, $name:literal, $fmt:expr) => {
            let show = |v: &Option<_>| v.as_ref().map_or_else(|| NOT_RECORDED.to_owned(), $fmt);
            push($name, show(&old.$field), show(&new.$field));
        };
    }
    compare!(mode, "perm", |v: &u32| format!("{v:04o}"));
    compare!(uid, "uid", |v: &u32| v.to_string());
    compare!(gid, "gid", |v: &u32| v.to_string());
    if !grew {
        compare!(size, "size", |v: &u64| v.to_string());
        compare!(mtime, "mtime", |v: &i128| time_text(*v));
        compare!(ctime, "ctime", |v: &i128| time_text(*v));
        compare!(sha256, "sha256", |v: &[u8; 32]| hex(v));
        compare!(chunked, "chunked", |v: &[u8; 32]| hex(v));
        compare!(fsverity, "fsverity", |v: &[u8; 32]| hex(v));
    }
    compare!(verity, "verity", |v: &bool| if *v {
        "enabled"
    } else {
        "off"
    }
    .to_owned());
    compare!(inode, "inode", |v: &u64| v.to_string());
    compare!(nlink, "nlink", |v: &u64| v.to_string());
    compare!(target, "target", |v: &std::path::PathBuf| v
        .display()
        .to_string());
    compare!(xattrs, "xattrs", |v: &std::collections::BTreeMap<
        String,
        Vec<u8>,
    >| {
        v.iter()
            .map(|(k, val)| format!("{k}={}", hex(val)))
            .collect::<Vec<_>>()
            .join(",")
    });
    changes
}

/// Compares two sorted entry lists (database, then system).
pub fn compare(database: &[Entry], system: &[Entry]) -> Differences {
    let mut differences = Differences::default();
    let (mut i, mut j) = (0, 0);
    while i < database.len() || j < system.len() {
        match (database.get(i), system.get(j)) {
            (Some(old), Some(new)) if old.path == new.path => {
                let mut changes = Vec::new();
                if old.kind != new.kind {
                    changes.push(AttrChange {
                        attribute: "type",
                        old: old.kind.name().to_owned(),
                        new: new.kind.name().to_owned(),
                    });
                }
                changes.extend(attribute_changes(&old.attrs, &new.attrs));
                if !changes.is_empty() {
                    differences.changed.push(Changed {
                        path: old.path.display().to_string(),
                        changes,
                    });
                }
                i += 1;
                j += 1;
            }
            (Some(old), Some(new)) if old.path < new.path => {
                differences.removed.push(old.clone());
                i += 1;
            }
            (Some(old), None) => {
                differences.removed.push(old.clone());
                i += 1;
            }
            (_, Some(new)) => {
                differences.added.push(new.clone());
                j += 1;
            }
            (None, None) => break,
        }
    }
    differences
}
