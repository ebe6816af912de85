//! Re-recording part of the signed database: the paths an operation
//! changes are scanned again, everything else stays exactly as it was
//! signed. Unlike `deepseek-integrity update`, an import never accepts a
//! change elsewhere on the system.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use sha2::{Digest, Sha256};

use super::error::StoreError;
use crate::config::{Attr, Config, Rule};
use crate::database;
use crate::entry::Entry;
use crate::keys::Signer25519;
use crate::scan::{self, Options};

/// A path to record again: with `recursive`, everything beneath it;
/// otherwise the path and its direct entries.
#[derive(Debug, Clone)]
pub(super) struct Scope {
    pub(super) path: PathBuf,
    pub(super) recursive: bool,
}

impl Scope {
    pub(super) fn tree(path: PathBuf) -> Self {
        Self {
            path,
            recursive: true,
        }
    }

    pub(super) fn level(path: PathBuf) -> Self {
        Self {
            path,
            recursive: false,
        }
    }

    fn holds(&self, path: &Path) -> bool {
        path == self.path
            || if self.recursive {
                path.starts_with(&self.path)
            } else {
                path.parent() == Some(&self.path)
            }
    }
}

/// The rule that records `path`: the deepest whose path holds it and does
/// not exclude it (the rule a full scan would apply).
pub(super) fn covering<'c>(config: &'c Config, path: &Path) -> Option<&'c Rule> {
    config
        .compiled_rules()
        .into_iter()
        .find(|r| path.starts_with(&r.rule.path) && !r.exclude.is_match(path))
        .map(|r| r.rule)
}

/// Checks that `config` records the store at `root` as the store needs:
/// content digests, link targets, and the whole tree.
pub(super) fn check_coverage(config: &Config, root: &Path) -> Result<(), StoreError> {
    let Some(rule) = covering(config, root) else {
        return Err(StoreError::Uncovered(format!(
            "no [[rule]] of the integrity configuration records the model store {}: add one \
             with path = \"{}\" and preset = \"model\" (docs/guide/models.md)",
            root.display(),
            root.display()
        )));
    };
    let missing: Vec<&str> = [(Attr::Digest, "digest"), (Attr::Target, "target")]
        .into_iter()
        .filter(|(attr, _)| !rule.records(*attr))
        .map(|(_, name)| name)
        .collect();
    if !missing.is_empty() || !rule.recursive || rule.digest == crate::config::DigestChoice::None {
        return Err(StoreError::Uncovered(format!(
            "the [[rule]] for {} that records the model store {} must be recursive and record \
             the digest and link targets (preset = \"model\" does){}",
            rule.path.display(),
            root.display(),
            if missing.is_empty() {
                String::new()
            } else {
                format!("; it lacks {}", missing.join(", "))
            }
        )));
    }
    Ok(())
}

/// The signed database, loaded under the store's lock, and what it will
/// be once an operation commits.
#[derive(Debug)]
pub(super) struct Recorded {
    pub(super) entries: Vec<Entry>,
    /// SHA-256 of the file as loaded: a database replaced meanwhile (by
    /// `deepseek-integrity update`, say) is not overwritten.
    sum: [u8; 32],
}

impl Recorded {
    pub(super) fn load(config: &Config) -> Result<Self, StoreError> {
        let bytes = database::read(&config.database)?;
        let entries = database::decode(&config.database, &bytes, config.verifier())?;
        Ok(Self {
            entries,
            sum: Sha256::digest(&bytes).into(),
        })
    }

    /// Refuses unless `scopes` on disk are exactly as the signed database
    /// records them, but for the paths in `except` (those the operation
    /// rewrites whole): an operation re-records its scopes, and must not
    /// sign a change someone else made there (a link moved by hand, a
    /// planted file, an import that was killed).
    pub(super) fn unchanged(
        &self,
        config: &Config,
        scopes: &[Scope],
        except: &[PathBuf],
        options: &Options,
        interrupted: &AtomicBool,
    ) -> Result<(), StoreError> {
        let outside = |path: &Path| !except.iter().any(|e| path.starts_with(e));
        let in_scope = |e: &&Entry| scopes.iter().any(|s| s.holds(&e.path)) && outside(&e.path);
        let current: Vec<Entry> = scan_scopes(config, scopes, options, interrupted)?
            .into_iter()
            .filter(|e| in_scope(&e))
            .collect();
        let recorded: Vec<Entry> = self.entries.iter().filter(in_scope).cloned().collect();
        let d = crate::compare::compare(&recorded, &current);
        if d.is_empty() {
            return Ok(());
        }
        let paths: Vec<String> = d
            .changed
            .iter()
            .map(|c| format!("changed {}", c.path))
            .chain(
                d.added
                    .iter()
                    .map(|e| format!("added {}", e.path.display())),
            )
            .chain(
                d.removed
                    .iter()
                    .map(|e| format!("removed {}", e.path.display())),
            )
            .collect();
        Err(StoreError::Mismatch(format!(
            "the store differs from the signed integrity database ({}{}): it was changed \
             outside `deepseek-audit model`, or an operation was interrupted. Nothing was \
             done. Review with `deepseek-integrity check`; a version left by an interrupted \
             import goes with `deepseek-audit model remove NAME VERSION`, a moved link is \
             set with `deepseek-audit model activate NAME VERSION` (docs/guide/models.md)",
            paths.iter().take(8).cloned().collect::<Vec<_>>().join(", "),
            if paths.len() > 8 {
                format!(" and {} more", paths.len() - 8)
            } else {
                String::new()
            }
        )))
    }

    /// The entries with `scopes` recorded afresh from the disk.
    pub(super) fn rescan(
        &self,
        config: &Config,
        scopes: &[Scope],
        options: &Options,
        interrupted: &AtomicBool,
    ) -> Result<Vec<Entry>, StoreError> {
        let scanned = scan_scopes(config, scopes, options, interrupted)?;
        let mut entries: Vec<Entry> = self
            .entries
            .iter()
            .filter(|e| !scopes.iter().any(|s| s.holds(&e.path)))
            .cloned()
            .chain(scanned)
            .collect();
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        entries.dedup_by(|a, b| a.path == b.path);
        Ok(entries)
    }

    /// Signs `entries` and replaces the database, unless it changed since
    /// it was loaded; returns the database as it now is.
    pub(super) fn store(
        &self,
        config: &Config,
        key: &Signer25519,
        entries: Vec<Entry>,
    ) -> Result<Self, StoreError> {
        let now = database::read(&config.database)?;
        if <[u8; 32]>::from(Sha256::digest(&now)) != self.sum {
            return Err(StoreError::Mismatch(format!(
                "{} changed while the model store operation ran (deepseek-integrity update?): \
                 nothing was signed; run the operation again",
                config.database.display()
            )));
        }
        let bytes = database::encode(&entries, key);
        database::store(&config.database, &bytes)?;
        Ok(Self {
            entries,
            sum: Sha256::digest(&bytes).into(),
        })
    }
}

/// What `scopes` hold on disk now, recorded with the rules that cover
/// them (each re-rooted at its scope).
fn scan_scopes(
    config: &Config,
    scopes: &[Scope],
    options: &Options,
    interrupted: &AtomicBool,
) -> Result<Vec<Entry>, StoreError> {
    let mut rules = Vec::new();
    for scope in scopes {
        let rule = covering(config, &scope.path).ok_or_else(|| {
            StoreError::Uncovered(format!(
                "no [[rule]] of the integrity configuration records {}",
                scope.path.display()
            ))
        })?;
        rules.push(Rule {
            path: scope.path.clone(),
            recursive: scope.recursive,
            ..rule.clone()
        });
    }
    let scanned = scan::scan(&config.with_rules(rules), options, interrupted)?;
    Ok(scanned
        .into_iter()
        .filter(|e| scopes.iter().any(|s| s.holds(&e.path)))
        .collect())
}

/// The signing key of `config`, which must be the pinned verifier's.
pub(super) fn signing_key(config: &Config) -> Result<Signer25519, StoreError> {
    let key = Signer25519::load(&config.signing_key).map_err(|source| StoreError::Key {
        path: config.signing_key.clone(),
        source,
    })?;
    if &key.verifier() != config.verifier() {
        return Err(StoreError::WrongKey {
            path: config.signing_key.clone(),
            pinned: config.verifier().to_string(),
        });
    }
    Ok(key)
}
