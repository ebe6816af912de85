//! The auditor's checkpoint signing key: a note signer key in a file of its
//! own, written and read with the same checks as the integrity key (mode
//! 0600 from creation, refused when group or others can read it or another
//! user owns it).

use std::path::{Path, PathBuf};

use deepseek_integrity::keys::{
    KeyError as FileError, read_secret, write_secret, write_verifier_file,
};

use deepseek_integrity::note::{NoteError, NoteSigner};

/// Why the key cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: {source}")]
    Malformed { path: PathBuf, source: NoteError },
}

/// Makes a key named `name` and writes it to `path` (0600), and its
/// verifier key to `verifier_out` (0644) when given; neither file is ever
/// written over an existing one.
pub(crate) fn generate(
    name: &str,
    path: &Path,
    verifier_out: Option<&Path>,
    seed: [u8; 32],
) -> Result<NoteSigner, KeyError> {
    let signer = NoteSigner::from_seed(name, seed).map_err(|source| KeyError::Malformed {
        path: path.to_owned(),
        source,
    })?;
    write_secret(path, &format!("{signer}\n"))?;
    if let Some(verifier_out) = verifier_out {
        write_verifier_file(verifier_out, &signer.verifier().to_string(), path)?;
    }
    Ok(signer)
}

/// Loads the key.
pub(crate) fn load(path: &Path) -> Result<NoteSigner, KeyError> {
    let text = read_secret(path)?;
    NoteSigner::parse(&text).map_err(|source| KeyError::Malformed {
        path: path.to_owned(),
        source,
    })
}
