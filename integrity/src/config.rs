//! `integrity.toml`: where the database and keys are, and the rules that
//! select paths and the attributes to record for them (AIDE's selection
//! lines, as TOML). Every key is documented in docs/guide/integrity.md.

use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::keys::{VerifierKey, configured_verifier};

/// Where the configuration is read from without `--config`.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/deepseek/integrity.toml";

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The signed database.
    #[serde(default = "default_database")]
    pub database: PathBuf,
    /// The Ed25519 signing key `init` and `update` sign with (mode 0600).
    #[serde(default = "default_signing_key")]
    pub signing_key: PathBuf,
    /// The verifier key every database must be signed with, as
    /// `deepseek-integrity keygen` prints it (`ed25519:BASE64`).
    #[serde(default)]
    pub verifier_key: Option<String>,
    /// Or the file holding it (`keygen --verifier-out`), for a
    /// configuration that cannot hold a key made at install.
    #[serde(default)]
    pub verifier_key_file: Option<PathBuf>,
    /// The key of either, read and checked at load.
    #[serde(skip)]
    verifier: Option<VerifierKey>,
    /// Files at least this large get the chunked digest under `digest = "auto"`.
    #[serde(default = "default_threshold")]
    pub chunked_threshold: u64,
    #[serde(rename = "rule")]
    pub rules: Vec<Rule>,
}

fn default_database() -> PathBuf {
    PathBuf::from("/var/lib/deepseek-integrity/integrity.db")
}

fn default_signing_key() -> PathBuf {
    PathBuf::from("/etc/deepseek/integrity.key")
}

fn default_threshold() -> u64 {
    256 << 20
}

fn yes() -> bool {
    true
}

/// Which content digest a rule records.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DigestChoice {
    /// Chunked for files of at least `chunked_threshold` bytes, SHA-256 below.
    #[default]
    Auto,
    /// Plain SHA-256, identical to `sha256sum` and publishers' lists.
    Sha256,
    /// SHA-256 over chunk digests, hashed in parallel.
    Chunked,
    /// Both, for cross-checking a large file against a publisher's list.
    Both,
    /// No content digest (attributes only).
    None,
}

/// Attribute sets for common kinds of files.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Binaries, libraries and configuration: every attribute and the digest.
    #[default]
    Binary,
    /// Model files: type, permissions, owner, size and the digest. Times and
    /// inode numbers are left out so that copying a model between disks is
    /// not a change.
    Model,
    /// Append-only logs: permissions, owner and size, which may only grow.
    Log,
}

/// One attribute a rule may record.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Attr {
    Perm,
    Uid,
    Gid,
    Size,
    Mtime,
    Ctime,
    Inode,
    Nlink,
    Target,
    Xattrs,
    Digest,
    Fsverity,
    Growing,
}

impl Preset {
    pub fn attributes(self) -> &'static [Attr] {
        use Attr::*;
        match self {
            Preset::Binary => &[
                Perm, Uid, Gid, Size, Mtime, Ctime, Inode, Nlink, Target, Xattrs, Digest,
            ],
            Preset::Model => &[Perm, Uid, Gid, Size, Target, Digest],
            Preset::Log => &[Perm, Uid, Gid, Size, Target, Growing],
        }
    }
}

/// One `[[rule]]`: a path and what to record beneath it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// An absolute path: a file, or a directory to walk.
    pub path: PathBuf,
    /// Walk into subdirectories (when `path` is a directory).
    #[serde(default = "yes")]
    pub recursive: bool,
    /// Globs matched against the full path; matches are not recorded (and
    /// excluded directories are not walked).
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub preset: Preset,
    /// Overrides the preset's attribute list.
    #[serde(default)]
    pub attributes: Option<Vec<Attr>>,
    #[serde(default)]
    pub digest: DigestChoice,
    /// Record directory mtime, ctime and link count too. Off by default:
    /// adding or removing an entry changes its directory's, which is noise
    /// when the entry itself is reported.
    #[serde(default)]
    pub dir_times: bool,
}

impl Rule {
    pub fn records(&self, attr: Attr) -> bool {
        match &self.attributes {
            Some(list) => list.contains(&attr),
            None => self.preset.attributes().contains(&attr),
        }
    }
}

/// A rule whose globs are compiled.
#[derive(Debug)]
pub(crate) struct CompiledRule<'a> {
    pub rule: &'a Rule,
    pub exclude: GlobSet,
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<TomlError>,
    },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut config: Config = from_toml(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        config.verifier = Some(
            configured_verifier(
                "",
                config.verifier_key.as_deref(),
                config.verifier_key_file.as_deref(),
                VerifierKey::parse,
            )
            .map_err(|e| invalid(e.key().into(), e.to_string()))?
            .ok_or_else(|| {
                invalid(
                    "verifier_key".into(),
                    "required: set it to the key `deepseek-integrity keygen` printed, or set \
                     verifier_key_file to the file `keygen --verifier-out` wrote"
                        .into(),
                )
            })?,
        );
        for (key, file) in [
            ("database", &config.database),
            ("signing_key", &config.signing_key),
        ] {
            if !file.is_absolute() {
                return Err(invalid(
                    key.into(),
                    format!("expected an absolute path, got {:?}", file.display()),
                ));
            }
        }
        if config.rules.is_empty() {
            return Err(invalid(
                "rule".into(),
                "expected at least one [[rule]] table".into(),
            ));
        }
        for (i, rule) in config.rules.iter().enumerate() {
            if !rule.path.is_absolute() {
                return Err(invalid(
                    format!("rule[{i}].path"),
                    format!("expected an absolute path, got {:?}", rule.path.display()),
                ));
            }
            compile_globs(&rule.exclude)
                .map_err(|e| invalid(format!("rule[{i}].exclude"), e.to_string()))?;
        }
        Ok(config)
    }

    /// The pinned verifier key, from `verifier_key` or `verifier_key_file`.
    pub fn verifier(&self) -> &VerifierKey {
        self.verifier.as_ref().expect("set by Config::parse")
    }

    /// The same database, keys and threshold with `rules` in place of
    /// this configuration's: to record part of what it covers.
    pub(crate) fn with_rules(&self, rules: Vec<Rule>) -> Self {
        Self {
            rules,
            ..self.clone()
        }
    }

    /// The rules with their globs compiled, most specific path first, so a
    /// path covered by several rules follows the deepest one.
    pub(crate) fn compiled_rules(&self) -> Vec<CompiledRule<'_>> {
        let mut rules: Vec<CompiledRule<'_>> = self
            .rules
            .iter()
            .map(|rule| CompiledRule {
                rule,
                exclude: compile_globs(&rule.exclude).expect("validated at load"),
            })
            .collect();
        rules.sort_by_key(|r| std::cmp::Reverse(r.rule.path.components().count()));
        rules
    }
}

/// A TOML file that does not fit its configuration type, with the dotted
/// key being read (`rule[2].digest`; empty for syntax errors), which toml's
/// own message shows only as a source excerpt.
#[derive(Debug, thiserror::Error)]
#[error("{}{source}", if key.is_empty() { String::new() } else { format!("{key}: ") })]
pub struct TomlError {
    pub key: String,
    pub source: toml::de::Error,
}

/// Deserializes a configuration file, naming the key at fault. Shared by
/// the appliance's three configuration files, so their errors read alike.
pub fn from_toml<T: DeserializeOwned>(text: &str) -> Result<T, TomlError> {
    let deserializer = toml::Deserializer::parse(text).map_err(|source| TomlError {
        key: String::new(),
        source,
    })?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        // Wrappers such as `toml::Spanned` add private segments (`$__...`).
        let key = e
            .path()
            .to_string()
            .split('.')
            .filter(|segment| !segment.is_empty() && !segment.starts_with("$__"))
            .collect::<Vec<_>>()
            .join(".");
        TomlError {
            key,
            source: e.into_inner(),
        }
    })
}

/// Why a rule's `exclude` patterns do not compile.
#[derive(Debug, thiserror::Error)]
enum GlobError {
    #[error("invalid glob {pattern:?}: {source}")]
    Pattern {
        pattern: String,
        source: globset::Error,
    },
    #[error("{0}")]
    Set(globset::Error),
}

fn compile_globs(patterns: &[String]) -> Result<GlobSet, GlobError> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        builder.add(Glob::new(pattern).map_err(|source| GlobError::Pattern {
            pattern: pattern.clone(),
            source,
        })?);
    }
    builder.build().map_err(GlobError::Set)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const KEY: &str = "ed25519:GL0Uc1Liy+LFw6V2AxvuGjFBcQajKQTxz90KtLXo+ys=";

    fn parse(verifier: &str) -> Result<Config, String> {
        Config::parse(
            Path::new("/etc/deepseek/integrity.toml"),
            &format!("{verifier}\n[[rule]]\npath = \"/etc/deepseek\"\n"),
        )
        .map_err(|e| e.to_string())
    }

    /// A verifier key file holding `text`, with mode 0644.
    fn key_file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("integrity.pub");
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        path
    }

    #[test]
    fn the_verifier_key_may_be_inline_or_in_a_file() {
        let inline = parse(&format!("verifier_key = \"{KEY}\"")).expect("inline");
        assert_eq!(inline.verifier().to_string(), KEY);
        let dir = tempfile::tempdir().expect("tempdir");
        // As `keygen --verifier-out` writes it, and as an editor may leave it.
        for text in [format!("{KEY}\n"), format!("  {KEY}\n\n")] {
            let path = key_file(&dir, &text);
            let config = parse(&format!("verifier_key_file = \"{}\"", path.display()))
                .expect("from the file");
            assert_eq!(config.verifier(), inline.verifier());
        }
    }

    #[test]
    fn one_verifier_key_is_required_and_only_one() {
        let err = parse("").expect_err("neither");
        assert!(
            err.starts_with("/etc/deepseek/integrity.toml: verifier_key: required: ")
                && err.contains("verifier_key_file"),
            "{err}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = key_file(&dir, KEY);
        let err = parse(&format!(
            "verifier_key = \"{KEY}\"\nverifier_key_file = \"{}\"",
            path.display()
        ))
        .expect_err("both");
        assert_eq!(
            err,
            "/etc/deepseek/integrity.toml: verifier_key_file: conflicts with verifier_key: set only one of the two"
        );
    }

    #[test]
    fn a_verifier_key_file_must_be_absolute_readable_and_valid() {
        let err = parse("verifier_key_file = \"integrity.pub\"").expect_err("relative");
        assert_eq!(
            err,
            "/etc/deepseek/integrity.toml: verifier_key_file: expected an absolute path, got \"integrity.pub\""
        );
        let err = parse("verifier_key_file = \"/nonexistent/integrity.pub\"").expect_err("missing");
        assert_eq!(
            err,
            "/etc/deepseek/integrity.toml: verifier_key_file: cannot read /nonexistent/integrity.pub: \
             No such file or directory (os error 2)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = key_file(&dir, &format!("verifier_key = \"{KEY}\"\n"));
        let err = parse(&format!("verifier_key_file = \"{}\"", path.display()))
            .expect_err("the config line, not the key");
        assert!(
            err.starts_with(&format!(
                "/etc/deepseek/integrity.toml: verifier_key_file: {}: expected \"ed25519:\"",
                path.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn a_verifier_key_file_others_may_write_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = key_file(&dir, KEY);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).expect("chmod");
        let err = parse(&format!("verifier_key_file = \"{}\"", path.display()))
            .expect_err("group-writable");
        assert!(
            err.contains(&format!(
                "verifier_key_file: {} has mode 664",
                path.display()
            )) && err.ends_with("(chmod 644)"),
            "{err}"
        );
    }

    #[test]
    fn type_errors_name_the_key() {
        let err = parse(&format!(
            "verifier_key = \"{KEY}\"\nchunked_threshold = \"big\""
        ))
        .expect_err("bad type");
        assert!(
            err.starts_with(
                "/etc/deepseek/integrity.toml: chunked_threshold: TOML parse error at line 2"
            ),
            "{err}"
        );
    }
}
