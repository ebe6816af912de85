//! The Ed25519 keys that sign the database: the signing key file (secret,
//! mode 0600) and the verifier key pinned in the configuration, inline or
//! in a file of its own (mode 0644). The file handling is shared with the
//! auditor's checkpoint keys.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// The public half, as `ed25519:BASE64` in `integrity.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey(pub VerifyingKey);

const PREFIX: &str = "ed25519:";
const KEY_FILE_HEADER: &str = "deepseek-integrity signing key v1";

/// Why a verifier key's text is not a key.
#[derive(Debug, thiserror::Error)]
pub enum VerifierKeyError {
    #[error("expected \"ed25519:\" followed by base64, got {0:?}")]
    Prefix(String),
    #[error("invalid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("expected 32 bytes of public key, got {0}")]
    Length(usize),
    #[error("not an Ed25519 public key: {0}")]
    Curve(#[from] ed25519_dalek::SignatureError),
}

impl VerifierKey {
    pub fn parse(text: &str) -> Result<Self, VerifierKeyError> {
        let encoded = text
            .strip_prefix(PREFIX)
            .ok_or_else(|| VerifierKeyError::Prefix(text.to_owned()))?;
        let bytes: [u8; 32] = BASE64
            .decode(encoded)?
            .try_into()
            .map_err(|b: Vec<u8>| VerifierKeyError::Length(b.len()))?;
        Ok(Self(VerifyingKey::from_bytes(&bytes)?))
    }

    /// A short identifier for reports: the first 8 bytes of the key, in hex.
    pub fn id(&self) -> String {
        crate::digest::hex(&self.0.as_bytes()[..8])
    }

    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        self.0
            .verify(message, &Signature::from_bytes(signature))
            .is_ok()
    }
}

impl std::fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}{}", BASE64.encode(self.0.as_bytes()))
    }
}

/// Why a key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read signing key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "signing key {path} has mode {mode:o}: group and others must have no access (chmod 600)"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("signing key {path} is owned by uid {owner}, not by uid {me} who runs this")]
    Owner { path: PathBuf, owner: u32, me: u32 },
    #[error("signing key {path} is malformed: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("{path} already exists; refusing to overwrite a {what}")]
    Exists { what: &'static str, path: PathBuf },
    #[error("cannot write {what} {path}: {source}")]
    Write {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the system has no randomness for a key: {0}")]
    Random(String),
}

/// Creates a secret key file holding `text`: mode 0600 from the start,
/// never over an existing file, synced. Shared with the auditor's key.
pub fn write_secret(path: &Path, text: &str) -> Result<(), KeyError> {
    create_key_file("signing key", path, text, 0o600)
}

/// Writes the verifier key file `keygen --verifier-out` asks for, for
/// configurations that cannot hold the key inline (static files such as
/// dpkg conffiles, while the key is made at install): mode 0644 whatever
/// the umask, never over an existing file. `secret` is the signing key the
/// same keygen just created: it is removed when this fails, so that keygen
/// leaves both files or neither and can simply be run again.
pub fn write_verifier_file(path: &Path, text: &str, secret: &Path) -> Result<(), KeyError> {
    create_key_file("verifier key", path, &format!("{text}\n"), 0o644).inspect_err(|_| {
        let _ = std::fs::remove_file(secret);
    })
}

fn create_key_file(what: &'static str, path: &Path, text: &str, mode: u32) -> Result<(), KeyError> {
    let write_error = |source| KeyError::Write {
        what,
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists {
                    what,
                    path: path.to_owned(),
                }
            } else {
                write_error(e)
            }
        })?;
    // The umask may have taken bits away; a verifier key others cannot
    // read is as useless as a secret others can.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| file.write_all(text.as_bytes()))
        .and_then(|()| file.sync_all())
        .map_err(write_error)
}

/// Reads a secret key file, refusing one that group or others can access
/// or that another user owns. Shared with the auditor's key.
pub fn read_secret(path: &Path) -> Result<String, KeyError> {
    let read_error = |source| KeyError::Read {
        path: path.to_owned(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(read_error)?;
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
    std::fs::read_to_string(path).map_err(read_error)
}

/// Why the verifier key a configuration gives cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum VerifierSettingError {
    #[error("conflicts with {table}verifier_key: set only one of the two")]
    Both { table: &'static str },
    #[error("expected an absolute path, got {0:?}")]
    Relative(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} has mode {mode:o}: group and others must not be able to write it, as its key decides \
         which signatures are trusted (chmod 644)"
    )]
    Writable { path: PathBuf, mode: u32 },
    #[error("{path}: {reason}")]
    InFile { path: PathBuf, reason: String },
    #[error("{0}")]
    Inline(String),
}

impl VerifierSettingError {
    /// The configuration key at fault, without its table.
    pub fn key(&self) -> &'static str {
        match self {
            Self::Inline(_) => "verifier_key",
            _ => "verifier_key_file",
        }
    }
}

/// The verifier key a configuration gives inline (`verifier_key`) or in a
/// file of its own (`verifier_key_file`, as `keygen --verifier-out` writes
/// it; surrounding whitespace is ignored): a configuration shipped as a
/// static file cannot hold a key made at install. At most one of the two
/// may be set; `None` when neither is. `parse` reads the key (this crate's
/// or the auditor's), and `table` prefixes the key names in messages.
/// Shared by integrity.toml, deepseekd.toml and audit.toml.
pub fn configured_verifier<T, E: std::fmt::Display>(
    table: &'static str,
    inline: Option<&str>,
    file: Option<&Path>,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<Option<T>, VerifierSettingError> {
    let path = match (inline, file) {
        (Some(_), Some(_)) => return Err(VerifierSettingError::Both { table }),
        (None, None) => return Ok(None),
        (Some(text), None) => {
            return parse(text)
                .map(Some)
                .map_err(|e| VerifierSettingError::Inline(e.to_string()));
        }
        (None, Some(path)) => path,
    };
    if !path.is_absolute() {
        return Err(VerifierSettingError::Relative(path.to_owned()));
    }
    let read_error = |source| VerifierSettingError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    let mode = file.metadata().map_err(read_error)?.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(VerifierSettingError::Writable {
            path: path.to_owned(),
            mode,
        });
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text).map_err(read_error)?;
    parse(text.trim())
        .map(Some)
        .map_err(|e| VerifierSettingError::InFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

/// The secret key, loaded only by `init` and `update`.
#[derive(Debug)]
pub struct Signer25519(SigningKey);

impl Signer25519 {
    pub fn verifier(&self) -> VerifierKey {
        VerifierKey(self.0.verifying_key())
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// A key from a fixed seed, never written anywhere: for the fuzz
    /// targets (`crate::fuzz`), which sign what they feed the parser.
    #[doc(hidden)]
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    /// Makes a new key and writes it to `path` (mode 0600, never over an
    /// existing file).
    pub fn generate(path: &Path) -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        let key = Self(SigningKey::from_bytes(&seed));
        write_secret(
            path,
            &format!("{KEY_FILE_HEADER}\n{}\n", BASE64.encode(seed)),
        )?;
        Ok(key)
    }

    /// Loads the key, refusing one that group or others can access or that
    /// another user owns.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = read_secret(path)?;
        let malformed = |reason: &str| KeyError::Malformed {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let mut lines = text.lines();
        if lines.next() != Some(KEY_FILE_HEADER) {
            return Err(malformed("the first line is not the key file header"));
        }
        let seed = BASE64
            .decode(lines.next().unwrap_or_default())
            .map_err(|_| malformed("the second line is not base64"))?;
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| malformed("the key is not 32 bytes"))?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_keys_load_back_and_verify() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        let key = Signer25519::generate(&path).expect("generate");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = Signer25519::load(&path).expect("load");
        assert_eq!(loaded.verifier(), key.verifier());
        let signature = loaded.sign(b"hello");
        let verifier = VerifierKey::parse(&key.verifier().to_string()).expect("parse");
        assert!(verifier.verify(b"hello", &signature));
        assert!(!verifier.verify(b"hellO", &signature));
        let err = Signer25519::generate(&path).expect_err("no overwrite");
        assert!(matches!(err, KeyError::Exists { .. }), "{err}");
    }

    #[test]
    fn a_verifier_key_file_is_world_readable_and_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("k");
        let public = dir.path().join("k.pub");
        let key = Signer25519::generate(&secret).expect("generate");
        write_verifier_file(&public, &key.verifier().to_string(), &secret).expect("write");
        let mode = std::fs::metadata(&public)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(
            std::fs::read_to_string(&public).expect("read"),
            format!("{}\n", key.verifier())
        );
        // A second keygen onto the same files: the secret is refused first.
        assert!(matches!(
            Signer25519::generate(&secret),
            Err(KeyError::Exists { .. })
        ));
        // A new secret with an existing verifier file: refused, and the new
        // secret is removed so that keygen can be run again.
        let other = dir.path().join("k2");
        let key2 = Signer25519::generate(&other).expect("generate");
        let err = write_verifier_file(&public, &key2.verifier().to_string(), &other)
            .expect_err("no overwrite");
        assert_eq!(
            err.to_string(),
            format!(
                "{} already exists; refusing to overwrite a verifier key",
                public.display()
            )
        );
        assert!(!other.exists(), "the new secret key is removed");
        assert_eq!(
            std::fs::read_to_string(&public).expect("read"),
            format!("{}\n", key.verifier()),
            "the existing file is untouched"
        );
    }

    #[test]
    fn a_readable_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        Signer25519::generate(&path).expect("generate");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let err = Signer25519::load(&path).expect_err("refused").to_string();
        assert!(
            err.ends_with("has mode 640: group and others must have no access (chmod 600)"),
            "{err}"
        );
    }

    #[test]
    fn verifier_keys_are_checked() {
        assert!(VerifierKey::parse("ed25519:AAAA").is_err());
        assert!(VerifierKey::parse("rsa:AAAA").is_err());
    }
}
