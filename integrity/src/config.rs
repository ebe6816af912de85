//! `integrity.toml`: where the database and keys are, and the rules that
//! select paths and the attributes to record for them (AIDE's selection
//! lines, as TOML). Every key is documented in docs/integrity.md.

use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;

/// Where the configuration is read from without `--config`.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/deepseek/integrity.toml";

/// The whole file.
#[derive(Debug, Deserialize)]
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
    pub verifier_key: String,
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
#[derive(Debug, Deserialize)]
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
pub struct CompiledRule<'a> {
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
    #[error("{path}: {key}{source}")]
    Parse {
        path: PathBuf,
        key: String,
        source: Box<toml::de::Error>,
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
        let parse_error = |key: String, source| ConfigError::Parse {
            path: path.to_owned(),
            key,
            source: Box::new(source),
        };
        let deserializer =
            toml::Deserializer::parse(text).map_err(|e| parse_error(String::new(), e))?;
        // The key being read (`rule[2].digest`), which toml's own message
        // shows only as a source excerpt.
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." {
                String::new()
            } else {
                format!("{key}: ")
            };
            parse_error(key, e.into_inner())
        })?;
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        crate::keys::VerifierKey::parse(&config.verifier_key)
            .map_err(|e| invalid("verifier_key".into(), e))?;
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
            compile_globs(&rule.exclude).map_err(|e| invalid(format!("rule[{i}].exclude"), e))?;
        }
        Ok(config)
    }

    /// The rules with their globs compiled, most specific path first, so a
    /// path covered by several rules follows the deepest one.
    pub fn compiled_rules(&self) -> Vec<CompiledRule<'_>> {
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

fn compile_globs(patterns: &[String]) -> Result<GlobSet, String> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        builder.add(Glob::new(pattern).map_err(|e| format!("invalid glob {pattern:?}: {e}"))?);
    }
    builder.build().map_err(|e| e.to_string())
}
