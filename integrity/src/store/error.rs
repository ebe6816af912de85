//! Why a model store operation was refused or failed.

use std::path::{Path, PathBuf};

use crate::bundle::BundleError;
use crate::config::ConfigError;
use crate::database::DatabaseError;
use crate::exit::Exit;
use crate::keys::KeyError;
use crate::scan::ScanError;

/// Why a model store operation was refused or failed; nothing was changed
/// unless the message says so.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error("signing key {path}: {source}")]
    Key { path: PathBuf, source: KeyError },
    #[error("signing key {path} is not the pinned verifier key {pinned}")]
    WrongKey { path: PathBuf, pinned: String },
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The integrity configuration does not record the store as it must.
    #[error("{0}")]
    Uncovered(String),
    /// A name, version or state that the operation cannot work on.
    #[error("{0}")]
    Refused(String),
    /// The store on disk disagrees with the signed database.
    #[error("{0}")]
    Mismatch(String),
}

impl StoreError {
    /// The exit code (docs/guide/exit-codes.md): the integrity tool's.
    pub fn exit(&self) -> Exit {
        match self {
            Self::Bundle(e) => e.exit(),
            Self::Config(_) | Self::Uncovered(_) => Exit::Config,
            Self::Database(e) if e.is_signature() => Exit::Signature,
            Self::Database(DatabaseError::Read { .. } | DatabaseError::Write { .. }) => Exit::Io,
            Self::Database(_) | Self::Mismatch(_) => Exit::Database,
            Self::Scan(ScanError::Interrupted) => Exit::Interrupted,
            Self::Scan(_) | Self::Io(..) | Self::Key { .. } => Exit::Io,
            Self::WrongKey { .. } => Exit::Signature,
            Self::Refused(_) => Exit::Store,
        }
    }
}

/// `action` on `path` failed.
pub(super) fn io(action: &str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let what = format!("cannot {action} {}", path.display());
    move |e| StoreError::Io(what, e)
}
