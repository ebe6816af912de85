//! The auditor's checkpoint signing key: a note signer key in a file of its
//! own (mode 0600, owned by the auditor's user), refused otherwise.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::note::{NoteError, NoteSigner};

/// Why the key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} has mode {mode:o}: group and others must have no access (chmod 600)")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{path} is owned by uid {owner}, not by uid {me} who runs this")]
    Owner { path: PathBuf, owner: u32, me: u32 },
    #[error("{path}: {source}")]
    Malformed { path: PathBuf, source: NoteError },
    #[error("{path} already exists; refusing to overwrite a signing key")]
    Exists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Makes a key named `name` and writes it to `path` (0600, never over an
/// existing file).
pub fn generate(name: &str, path: &Path, seed: [u8; 32]) -> Result<NoteSigner, KeyError> {
    let signer = NoteSigner::from_seed(name, seed).map_err(|source| KeyError::Malformed {
        path: path.to_owned(),
        source,
    })?;
    let write = |source| KeyError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists {
                    path: path.to_owned(),
                }
            } else {
                write(e)
            }
        })?;
    writeln!(file, "{signer}").map_err(write)?;
    file.sync_all().map_err(write)?;
    Ok(signer)
}

/// Loads the key, refusing one readable by group or others or owned by
/// another user.
pub fn load(path: &Path) -> Result<NoteSigner, KeyError> {
    let read = |source| KeyError::Read {
        path: path.to_owned(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(read)?;
    let mode = metadata.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    let me = nix::unistd::Uid::effective().as_raw();
    if metadata.uid() != me {
        return Err(KeyError::Owner {
            path: path.to_owned(),
            owner: metadata.uid(),
            me,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    NoteSigner::parse(&text).map_err(|source| KeyError::Malformed {
        path: path.to_owned(),
        source,
    })
}
