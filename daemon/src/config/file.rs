//! The whole file: read, parsed into its tables, and checked across them.

use std::collections::BTreeSet;
use std::path::Path;

use deepseek_integrity::config::from_toml;
use deepseek_integrity::keys::{VerifierKey, configured_verifier};
use deepseek_integrity::store::layout::check_name;
use serde::Deserialize;

use super::error::ConfigError;
use super::model::{MAX_QUEUE_DEPTH, MAX_SESSIONS, ModelConfig};
use super::sections::{
    AuditConfig, IntegrityConfig, LimitsConfig, LogConfig, RuntimeConfig, SandboxConfig,
    ServerConfig,
};

/// Where the daemon looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/deepseek/deepseekd.toml";

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub sandbox: SandboxConfig,
    #[serde(default)]
    pub integrity: IntegrityConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(rename = "model", default)]
    pub models: Vec<ModelConfig>,
    /// SHA-256 of the file as read: the audit log's start event carries it.
    #[serde(skip)]
    pub source_sha256: String,
}

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|source| ConfigError::NotUtf8 {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates `text`; `path` is used in error messages only.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut config: Config = from_toml(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        config.validate(path, text)?;
        config.source_sha256 = deepseek_integrity::digest::sha256_hex(text.as_bytes());
        Ok(config)
    }

    /// Checks what serde cannot: relations between keys. Also reads the
    /// integrity verifier key, so that `check-config` checks it.
    fn validate(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let semantic = |key: &str, message: String| ConfigError::Semantic {
            path: path.to_owned(),
            key: key.to_owned(),
            message,
        };
        let mut paths = vec![
            ("server.socket".to_owned(), &self.server.socket),
            ("runtime.library".to_owned(), &self.runtime.library),
            ("integrity.database".to_owned(), &self.integrity.database),
            ("audit.socket".to_owned(), &self.audit.socket),
        ];
        paths.extend(
            [
                ("runtime.cuda_library_dir", &self.runtime.cuda_library_dir),
                ("runtime.cudnn_library_dir", &self.runtime.cudnn_library_dir),
                ("sandbox.cuda_cache_dir", &self.sandbox.cuda_cache_dir),
                (
                    "integrity.verifier_key_file",
                    &self.integrity.verifier_key_file,
                ),
            ]
            .into_iter()
            .filter_map(|(key, dir)| Some((key.to_owned(), dir.as_ref()?))),
        );
        for (index, model) in self.models.iter().enumerate() {
            let key = |name: &str| format!("model[{index}].{name}");
            match (&model.path, &model.store) {
                (Some(_), Some(_)) => {
                    return Err(semantic(
                        &key("store"),
                        format!("conflicts with {}: set only one of the two", key("path")),
                    ));
                }
                (None, None) => {
                    return Err(semantic(
                        &key("path"),
                        "missing: set path (the model's own files) or store (the model store's \
                         root, to serve the model's active version)"
                            .to_owned(),
                    ));
                }
                (Some(path), None) => paths.push((key("path"), path)),
                (None, Some(store)) => paths.push((key("store"), store)),
            }
        }
        // Relative paths would depend on the working directory systemd happens
        // to give the daemon; refuse them rather than guess.
        if let Some((key, relative)) = paths.iter().find(|(_, path)| !path.is_absolute()) {
            return Err(semantic(
                key,
                format!("expected an absolute path, got {:?}", relative.display()),
            ));
        }
        if self.integrity.enforce {
            let pinned = configured_verifier(
                "integrity.",
                self.integrity.verifier_key.as_deref(),
                self.integrity.verifier_key_file.as_deref(),
                VerifierKey::parse,
            )
            .map_err(|e| semantic(&format!("integrity.{}", e.key()), e.to_string()))?
            .ok_or_else(|| {
                semantic(
                    "integrity.verifier_key",
                    "required while integrity.enforce is true (the default): set it to the key \
                     `deepseek-integrity keygen` printed, or set integrity.verifier_key_file to the \
                     file `keygen --verifier-out` wrote, or set integrity.enforce = false (debugging only)"
                        .to_owned(),
                )
            })?;
            self.integrity.pinned = Some(pinned);
        }
        // Every local user could connect, hold connections and be refused
        // into the audit log: only on purpose.
        if self.server.socket_mode.bits() & 0o002 != 0 && !self.server.allow_world_connect {
            return Err(semantic(
                "server.socket_mode",
                format!(
                    "{:#o} lets every local user connect to the socket (others may write); \
                     use 0o660 with server.socket_group, or set server.allow_world_connect = true \
                     to leave only the allow-list in the way",
                    self.server.socket_mode.bits()
                ),
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(semantic(
                "log.level",
                format!(
                    "invalid filter {:?}: {e}; expected e.g. \"info\" or \"info,ort=warn\"",
                    self.log.level
                ),
            ));
        }
        if self.models.is_empty() {
            return Err(semantic(
                "model",
                "expected at least one [[model]] table".to_owned(),
            ));
        }
        for (index, model) in self.models.iter().enumerate() {
            let key = |name: &str| format!("model[{index}].{name}");
            for (name, value, max) in [
                ("sessions", model.sessions.get(), MAX_SESSIONS),
                ("queue_depth", model.queue_depth, MAX_QUEUE_DEPTH),
            ] {
                if value > max {
                    return Err(semantic(
                        &key(name),
                        format!("{value} is over the limit of {max}"),
                    ));
                }
            }
            if model.store.is_some() {
                // The active version is the one the signed database records:
                // without the database there is nothing to resolve it against.
                if !self.integrity.enforce {
                    return Err(semantic(
                        &key("store"),
                        "requires integrity.enforce = true: the active version served is the \
                         one the signed integrity database records"
                            .to_owned(),
                    ));
                }
                check_name(model.name.get_ref().as_str())
                    .map_err(|e| semantic(&key("name"), e.to_string()))?;
            } else if !model.is_causal_lm() && model.model_file.is_some() {
                return Err(semantic(
                    &key("model_file"),
                    "only for kind = \"causal-lm\" models and models in a store: a tensor \
                     model's path names its graph"
                        .to_owned(),
                ));
            }
            if !model.is_causal_lm() {
                for (name, set) in [
                    ("context_length", model.context_length.is_some()),
                    ("max_prompt_bytes", model.max_prompt_bytes.is_some()),
                    ("kv_cache_tokens", model.kv_cache_tokens.is_some()),
                    ("batching", model.batching.is_some()),
                ] {
                    if set {
                        return Err(semantic(
                            &key(name),
                            "only for kind = \"causal-lm\" models".to_owned(),
                        ));
                    }
                }
            }
            if !model.batching() && model.kv_cache_tokens.is_some() {
                return Err(semantic(
                    &key("kv_cache_tokens"),
                    "only with batching: with batching = false each slot holds its own cache \
                     of up to context_length positions"
                        .to_owned(),
                ));
            }
            if model.is_causal_lm() && model.infer_timeout_ms.is_some() {
                return Err(semantic(
                    &key("infer_timeout_ms"),
                    "only for kind = \"tensor\" models; a generation is bounded by its max_tokens"
                        .to_owned(),
                ));
            }
            if let Some(file) = &model.model_file
                && (file.is_empty() || file.contains('/') || file == "." || file == "..")
            {
                return Err(semantic(
                    &key("model_file"),
                    format!("expected a file name inside the model's directory, got {file:?}"),
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for (index, model) in self.models.iter().enumerate() {
            if !seen.insert(model.name.get_ref().as_str()) {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    line: line_of(text, model.name.span().start),
                    key: format!("model[{index}].name"),
                    message: format!(
                        "duplicate model name {:?}: each [[model]] needs its own name",
                        model.name.get_ref().as_str()
                    ),
                });
            }
        }
        Ok(())
    }
}

/// 1-based line number of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}
