//! Why a bundle was refused or could not be made, and the file helpers
//! that say so.

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
    /// A key file that could not be read or written (it exists, say).
    #[error("{0}")]
    KeyFile(String),
}

impl BundleError {
    /// The exit code for this error (docs/guide/exit-codes.md).
    pub fn exit(&self) -> crate::exit::Exit {
        use crate::exit::Exit;
        match self {
            Self::Io(..) | Self::KeyFile(_) => Exit::Io,
            Self::Signature(_) | Self::Key(_) => Exit::Signature,
            Self::Manifest(_) | Self::Path(..) | Self::Archive(_) | Self::Mismatch { .. } => {
                Exit::Bundle
            }
        }
    }
}

impl From<crate::keys::KeyError> for BundleError {
    /// As `deepseek-integrity keygen` has them: a file that cannot be read
    /// or written, or exists, is an I/O error (18); a key that is no key,
    /// or open to others, is refused (26).
    fn from(e: crate::keys::KeyError) -> Self {
        use crate::keys::KeyError;
        match e {
            KeyError::Read { .. } | KeyError::Exists { .. } | KeyError::Write { .. } => {
                Self::KeyFile(e.to_string())
            }
            _ => Self::Key(e.to_string()),
        }
    }
}

/// `action` on `path` failed.
pub(super) fn io(
    action: &str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> BundleError {
    let what = format!("cannot {action} {}", path.display());
    move |e| BundleError::Io(what, e)
}

/// Renames `from` to `to`, never over an existing `to`.
pub(super) fn rename_new(from: &std::path::Path, to: &std::path::Path) -> Result<(), BundleError> {
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        from,
        rustix::fs::CWD,
        to,
        rustix::fs::RenameFlags::NOREPLACE,
    )
    .map_err(|e| io("rename into place", to)(e.into()))
}
