//! `audit.toml`: the service's settings, shared by every subcommand that
//! reads the log or talks to the service.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use deepseek_integrity::config::from_toml;
use deepseek_integrity::keys::configured_verifier;

use deepseek_integrity::note::{NoteError, NoteVerifier};

/// `audit.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    #[serde(default = "default_log_dir")]
    pub log_dir: PathBuf,
    #[serde(default = "default_key")]
    pub signing_key: PathBuf,
    /// The key the log was signed with until now, for one start after
    /// `signing_key` changed: the service seals the log with a hand-over
    /// signed by both keys, then signs with `signing_key` alone.
    #[serde(default)]
    pub previous_signing_key: Option<PathBuf>,
    /// The checkpoint verifier key (`name+hash+base64`) of the log's first
    /// key: verification follows the hand-overs from it.
    #[serde(default)]
    pub verifier_key: Option<String>,
    /// Or the file holding it (`keygen --verifier-out`), for a
    /// configuration that cannot hold a key made at install.
    #[serde(default)]
    pub verifier_key_file: Option<PathBuf>,
    /// The key of either, read and checked at load.
    #[serde(skip)]
    pub verifier: Option<NoteVerifier>,
    /// Peers allowed to append, by uid.
    #[serde(default)]
    pub allowed_uids: Vec<u32>,
    /// And by user name, looked up when `serve` starts: system users get
    /// their uids at install (systemd-sysusers), so a static file cannot
    /// list them by number.
    #[serde(default)]
    pub allowed_users: Vec<String>,
    #[serde(default = "default_frame")]
    pub max_frame_bytes: usize,
    #[serde(default = "default_every")]
    pub checkpoint_every: std::num::NonZeroU64,
    #[serde(default = "default_interval")]
    pub checkpoint_interval_secs: u64,
    /// Stop (and refuse records) when the log's filesystem has less free.
    #[serde(default = "default_floor")]
    pub min_free_bytes: u64,
    /// The low-water mark: under this many bytes free the service records
    /// a `low_space` entry and warns (syslog, metric, `verify`), once per
    /// crossing; 0 = four times `min_free_bytes`.
    #[serde(default)]
    pub warn_free_bytes: u64,
    /// Also send every checkpoint to syslog, so a copy lives elsewhere.
    #[serde(default = "yes")]
    pub syslog: bool,
    /// Where the service writes its metrics (Prometheus text), replaced
    /// every `metrics_interval_secs`; none when unset.
    #[serde(default)]
    pub metrics_file: Option<PathBuf>,
    #[serde(default = "default_metrics_interval")]
    pub metrics_interval_secs: std::num::NonZeroU64,
    /// Seal the active segment once it holds this many bytes.
    #[serde(default = "default_segment_bytes")]
    pub segment_max_bytes: std::num::NonZeroU64,
    /// And once its first entry is this old (0: by size only).
    #[serde(default = "default_segment_age")]
    pub segment_max_age_secs: u64,
    /// `log archive` moves a sealed segment only once its newest entry is
    /// this many days old: what stays live (0: every sealed segment moves).
    #[serde(default)]
    pub retention_days: u64,
}

/// Why `audit.toml` cannot be used: the same errors, and the same
/// messages, as deepseek-integrity's configuration.
pub use deepseek_integrity::config::ConfigError;

impl ServiceConfig {
    /// Reads and parses the file, and the verifier key it names.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Self = from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        config.verifier = configured_verifier(
            "",
            config.verifier_key.as_deref(),
            config.verifier_key_file.as_deref(),
            NoteVerifier::parse,
        )
        .map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            key: e.key().to_owned(),
            message: e.to_string(),
        })?;
        if config.segment_max_bytes.get() > crate::segment::MAX_SEGMENT_BYTES {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                key: "segment_max_bytes".to_owned(),
                message: format!(
                    "{} is over the largest segment, {} bytes (1 GiB)",
                    config.segment_max_bytes,
                    crate::segment::MAX_SEGMENT_BYTES
                ),
            });
        }
        if config.warn_free_bytes == 0 {
            config.warn_free_bytes = config.min_free_bytes.saturating_mul(4);
        } else if config.warn_free_bytes <= config.min_free_bytes {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                key: "warn_free_bytes".to_owned(),
                message: format!(
                    "{} is not above min_free_bytes ({}): the warning must come before the stop",
                    config.warn_free_bytes, config.min_free_bytes
                ),
            });
        }
        Ok(config)
    }

    /// The uids allowed to append: `allowed_uids` and the users of
    /// `allowed_users`. `path` (the file this was loaded from) is for
    /// messages only.
    pub fn allowed_peers(&self, path: &Path) -> Result<Vec<u32>, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: "allowed_users".to_owned(),
            message,
        };
        let mut uids = self.allowed_uids.clone();
        for name in &self.allowed_users {
            match nix::unistd::User::from_name(name) {
                Ok(Some(user)) => uids.push(user.uid.as_raw()),
                Ok(None) => {
                    return Err(invalid(format!(
                        "user {name:?} does not exist on this system"
                    )));
                }
                Err(e) => return Err(invalid(format!("cannot look up user {name:?}: {e}"))),
            }
        }
        if uids.is_empty() {
            return Err(invalid(
                "empty, and so is allowed_uids: no peer could append a record (list the daemon's \
                 user, e.g. allowed_users = [\"deepseek\"])"
                    .to_owned(),
            ));
        }
        Ok(uids)
    }
}

fn default_socket() -> PathBuf {
    PathBuf::from("/run/deepseek-audit/audit.sock")
}
fn default_log_dir() -> PathBuf {
    PathBuf::from("/var/lib/deepseek-audit")
}
fn default_key() -> PathBuf {
    PathBuf::from("/etc/deepseek/audit.key")
}
fn default_frame() -> usize {
    1 << 20
}
fn default_every() -> std::num::NonZeroU64 {
    std::num::NonZeroU64::new(1000).expect("non-zero")
}
fn default_interval() -> u64 {
    60
}
fn default_floor() -> u64 {
    64 << 20
}
fn default_metrics_interval() -> std::num::NonZeroU64 {
    std::num::NonZeroU64::new(15).expect("non-zero")
}
fn default_segment_bytes() -> std::num::NonZeroU64 {
    std::num::NonZeroU64::new(64 << 20).expect("non-zero")
}
fn default_segment_age() -> u64 {
    86_400
}
fn yes() -> bool {
    true
}

/// Why no checkpoint verifier key is at hand.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VerifierError {
    #[error(transparent)]
    Parse(#[from] NoteError),
    #[error("no verifier key: pass --key or set verifier_key or verifier_key_file")]
    Missing,
}

impl ServiceConfig {
    /// The checkpoint verifier key: `key` (a `--key` option) when given,
    /// else the configured one.
    pub(crate) fn verifier_or(&self, key: Option<&str>) -> Result<NoteVerifier, VerifierError> {
        match key {
            Some(key) => Ok(NoteVerifier::parse(key)?),
            None => self.verifier.clone().ok_or(VerifierError::Missing),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deepseek_integrity::note::NoteSigner;

    /// `audit.toml` holding `text`, and a verifier key file (mode 0644)
    /// holding `key`, both in `dir`.
    fn files(dir: &tempfile::TempDir, text: &str, key: &str) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let config = dir.path().join("audit.toml");
        let public = dir.path().join("audit.pub");
        std::fs::write(&public, key).expect("key file");
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::write(&config, text.replace("PUB", &public.display().to_string()))
            .expect("config");
        (config, public)
    }

    fn load(dir: &tempfile::TempDir, text: &str, key: &str) -> Result<ServiceConfig, String> {
        let (config, _) = files(dir, text, key);
        ServiceConfig::load(&config).map_err(|e| e.to_string())
    }

    fn verifier() -> String {
        NoteSigner::from_seed("deepseek-audit/test", [7; 32])
            .expect("signer")
            .verifier()
            .to_string()
    }

    #[test]
    fn the_verifier_key_may_be_inline_or_in_a_file_or_absent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = verifier();
        let inline = load(&dir, &format!("verifier_key = \"{key}\"\n"), "").expect("inline");
        let file = load(&dir, "verifier_key_file = \"PUB\"\n", &format!("{key}\n")).expect("file");
        assert_eq!(inline.verifier, file.verifier);
        assert_eq!(file.verifier.expect("set").to_string(), key);
        assert!(load(&dir, "", "").expect("neither").verifier.is_none());
    }

    #[test]
    fn verifier_key_errors_name_the_file_and_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.toml");
        let key = verifier();
        let err = load(
            &dir,
            &format!("verifier_key = \"{key}\"\nverifier_key_file = \"PUB\"\n"),
            &key,
        )
        .expect_err("both");
        assert_eq!(
            err,
            format!(
                "{}: verifier_key_file: conflicts with verifier_key: set only one of the two",
                path.display()
            )
        );
        let err = load(&dir, "verifier_key_file = \"audit.pub\"\n", &key).expect_err("relative");
        assert_eq!(
            err,
            format!(
                "{}: verifier_key_file: expected an absolute path, got \"audit.pub\"",
                path.display()
            )
        );
        let (config, public) = files(
            &dir,
            "verifier_key_file = \"PUB\"\n",
            "deepseek+0000000g+AA\n",
        );
        let err = ServiceConfig::load(&config)
            .expect_err("bad key")
            .to_string();
        assert_eq!(
            err,
            format!(
                "{}: verifier_key_file: {}: malformed key: the hash is not hex",
                path.display(),
                public.display()
            )
        );
        std::fs::remove_file(&public).expect("remove");
        let err = ServiceConfig::load(&config)
            .expect_err("missing")
            .to_string();
        assert_eq!(
            err,
            format!(
                "{}: verifier_key_file: cannot read {}: No such file or directory (os error 2)",
                path.display(),
                public.display()
            )
        );
    }

    #[test]
    fn parse_errors_name_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = load(&dir, "allowed_users = [1]\n", "").expect_err("bad type");
        assert!(
            err.starts_with(&format!(
                "{}: allowed_users[0]: TOML parse error at line 1",
                dir.path().join("audit.toml").display()
            )),
            "{err}"
        );
    }

    #[test]
    fn allowed_users_are_resolved_and_someone_must_be_allowed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.toml");
        let config = load(
            &dir,
            "allowed_uids = [4242]\nallowed_users = [\"root\"]\n",
            "",
        )
        .expect("config");
        assert_eq!(config.allowed_peers(&path).expect("resolved"), [4242, 0]);
        let config = load(&dir, "allowed_users = [\"no-such-user-42\"]\n", "").expect("config");
        assert_eq!(
            config
                .allowed_peers(&path)
                .expect_err("unknown")
                .to_string(),
            format!(
                "{}: allowed_users: user \"no-such-user-42\" does not exist on this system",
                path.display()
            )
        );
        let config = load(&dir, "", "").expect("config");
        let err = config.allowed_peers(&path).expect_err("nobody").to_string();
        assert!(
            err.starts_with(&format!(
                "{}: allowed_users: empty, and so is allowed_uids: no peer could append",
                path.display()
            )),
            "{err}"
        );
    }
}
