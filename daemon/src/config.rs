//! The daemon's TOML configuration: parsing, defaults and validation.
//!
//! Every key is documented in `docs/config.md`. Unknown keys are errors, and
//! every error names the file, the line and the key at fault, because an
//! operator on an air-gapped box has nothing else to go on.

use std::collections::BTreeSet;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use deepseek_integrity::config::{TomlError, from_toml};
use deepseek_integrity::keys::{VerifierKey, configured_verifier};
use serde::Deserialize;
use toml::Spanned;

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
    #[serde(rename = "model", default)]
    pub models: Vec<ModelConfig>,
    /// SHA-256 of the file as read: the audit log's start event carries it.
    #[serde(skip)]
    pub source_sha256: String,
}

/// `[server]`: the Unix socket and who may use it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Path of the listening socket when systemd does not pass one.
    pub socket: PathBuf,
    /// Permission bits of a socket the daemon creates itself.
    pub socket_mode: SocketMode,
    /// Group owning a socket the daemon creates itself; `None` keeps the daemon's group.
    pub socket_group: Option<String>,
    /// Peers whose uid is listed here may use the API.
    /// `None` means "the daemon's own uid".
    pub allowed_uids: Option<Vec<u32>>,
    /// Peers in one of these groups, as primary or supplementary group, may use the API.
    pub allowed_groups: Vec<String>,
    /// Largest request body accepted, in bytes (413 above it).
    pub max_body_bytes: NonZeroUsize,
    /// Largest KServe response body, in bytes: a small request can ask for
    /// a huge answer (a broadcasting model, a big batch), so the answer is
    /// bounded on its own (413 above it).
    pub max_response_bytes: NonZeroUsize,
    /// How long SIGTERM waits for in-flight requests before giving up.
    pub shutdown_grace_secs: u64,
    /// Connections served at once; further clients wait in the kernel's
    /// listen backlog until one closes.
    pub max_connections: NonZeroUsize,
    /// Let `socket_mode` give others write access (o+w), so that every
    /// local user can connect and only the allow-list stands in the way.
    pub allow_world_connect: bool,
    /// A refused peer's uid gets at most one `denied_peer` record per this
    /// many seconds; the refusals in between are counted, not recorded.
    pub denied_peer_interval_secs: std::num::NonZeroU64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/deepseek/deepseekd.sock"),
            socket_mode: SocketMode(0o660),
            socket_group: None,
            allowed_uids: None,
            allowed_groups: vec!["deepseek".to_owned()],
            max_body_bytes: NonZeroUsize::new(64 * 1024 * 1024).expect("non-zero constant"),
            max_response_bytes: NonZeroUsize::new(64 * 1024 * 1024).expect("non-zero constant"),
            shutdown_grace_secs: 30,
            max_connections: NonZeroUsize::new(256).expect("non-zero constant"),
            allow_world_connect: false,
            denied_peer_interval_secs: std::num::NonZeroU64::new(10).expect("non-zero constant"),
        }
    }
}

/// `[runtime]`: where ONNX Runtime and the CUDA libraries are.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Absolute path of `libonnxruntime.so.1.31.x`.
    pub library: PathBuf,
    /// Directory holding the CUDA runtime, cuBLAS and friends, preloaded by path
    /// so that the dynamic loader's search path does not matter.
    #[serde(default)]
    pub cuda_library_dir: Option<PathBuf>,
    /// Directory holding the cuDNN 9 libraries, preloaded by path.
    #[serde(default)]
    pub cudnn_library_dir: Option<PathBuf>,
}

/// `[integrity]`: the signed database every model is verified against
/// before it is loaded (docs/integrity.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntegrityConfig {
    /// Refuse models that do not match the database. `false` loads
    /// unverified models, for debugging only, and is logged loudly.
    pub enforce: bool,
    /// The database `deepseek-integrity init` writes.
    pub database: PathBuf,
    /// The key the database must be signed with (`ed25519:BASE64`, as
    /// `deepseek-integrity keygen` prints it).
    pub verifier_key: Option<String>,
    /// Or the file holding it (`keygen --verifier-out`), for a
    /// configuration that cannot hold a key made at install.
    pub verifier_key_file: Option<PathBuf>,
    /// The key of either, read and checked at load; `None` while
    /// `enforce = false`.
    #[serde(skip)]
    pub pinned: Option<VerifierKey>,
}

impl Default for IntegrityConfig {
    fn default() -> Self {
        Self {
            enforce: true,
            database: PathBuf::from("/var/lib/deepseek-integrity/integrity.db"),
            verifier_key: None,
            verifier_key_file: None,
            pinned: None,
        }
    }
}

/// `[audit]`: the audit service every request is recorded with before its
/// answer leaves the daemon (docs/audit.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Refuse (503) every inference whose record the auditor did not
    /// acknowledge. `false` serves unaudited, is for debugging only, and is
    /// logged loudly at every start.
    pub required: bool,
    /// The auditor's socket, connected once before the lockdown.
    pub socket: PathBuf,
    /// How long to wait for an acknowledgement before answering 503.
    pub timeout_ms: std::num::NonZeroU64,
    /// How long the start-up records wait for theirs: the auditor answers
    /// only once it has verified its whole log.
    pub start_timeout_secs: std::num::NonZeroU64,
    /// Also record request and response bodies (default: digests only).
    pub record_content: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            required: true,
            socket: PathBuf::from("/run/deepseek-audit/audit.sock"),
            timeout_ms: std::num::NonZeroU64::new(2000).expect("non-zero"),
            start_timeout_secs: std::num::NonZeroU64::new(600).expect("non-zero"),
            record_content: false,
        }
    }
}

/// `[sandbox]`: how the daemon locks itself down (docs/hardening.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Apply the lockdown. `false` is for debugging only and is logged
    /// loudly at every start.
    pub enforce: bool,
    /// The user to switch to when started as root.
    pub user: String,
    /// What a syscall outside the seccomp allow-list does.
    pub seccomp: SeccompMode,
    /// A writable directory for CUDA's JIT cache (`CUDA_CACHE_PATH`), needed
    /// by models on `device = "cuda"`.
    pub cuda_cache_dir: Option<PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            enforce: true,
            user: "deepseek".to_owned(),
            seccomp: SeccompMode::Enforce,
            cuda_cache_dir: None,
        }
    }
}

/// The seccomp filter's answer to a syscall outside the allow-list.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SeccompMode {
    /// Kill the process (and refuse non-Unix sockets with EAFNOSUPPORT).
    Enforce,
    /// Allow and log to the kernel log: for porting to a new libc or driver.
    Log,
}

/// `[log]`: the daemon's own logs on stderr (journald collects them).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter directive such as `info` or `info,ort=warn`.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `key=value` lines for people reading `journalctl`.
    Text,
    /// One JSON object per line for log shippers.
    Json,
}

/// One `[[model]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name clients use in `/v2/models/{name}` (tensor models) or in
    /// the `model` field of `/v1` requests (causal LMs).
    pub name: Spanned<ModelName>,
    /// What the model is and which API serves it.
    #[serde(default)]
    pub kind: ModelKind,
    /// The `.onnx` file of a tensor model; the directory of a causal LM
    /// (Hugging Face Optimum's layout, docs/config.md).
    pub path: PathBuf,
    /// Causal LMs: the graph's file name inside `path`, such as
    /// onnx-community's `model_fp16.onnx`.
    #[serde(default)]
    pub model_file: Option<String>,
    /// Causal LMs: the longest prompt plus completion, in tokens; default
    /// `max_position_embeddings` from `config.json` (or a smaller
    /// `model_max_length` from `tokenizer_config.json`).
    #[serde(default)]
    pub context_length: Option<NonZeroUsize>,
    /// Causal LMs: the most bytes of prompt text tokenized for one request
    /// (tokenizing costs some 200 bytes of memory per byte); unset is
    /// [`DEFAULT_MAX_PROMPT_BYTES`]. Text the context cannot hold is refused
    /// below this too.
    #[serde(default)]
    pub max_prompt_bytes: Option<NonZeroUsize>,
    #[serde(default)]
    pub device: Device,
    /// CUDA device ordinal when `device = "cuda"`.
    #[serde(default)]
    pub device_id: u32,
    /// Run on the CPU when the CUDA provider cannot be registered, instead of failing.
    #[serde(default)]
    pub allow_cpu_fallback: bool,
    /// Threads ONNX Runtime uses inside one operator; unset means its default
    /// (one per physical core).
    #[serde(default)]
    pub intra_op_threads: Option<NonZeroUsize>,
    /// Sessions in the pool, i.e. how many requests run at once.
    #[serde(default = "one")]
    pub sessions: NonZeroUsize,
    /// Requests that may wait for a free session; more get 503.
    #[serde(default = "default_queue_depth")]
    pub queue_depth: usize,
    /// Run each session once on zero-valued inputs at load, and refuse the
    /// model if that fails. Turn off for models whose inputs cannot be zeros
    /// (shape or index tensors).
    #[serde(default = "yes")]
    pub warm_up: bool,
    /// Tensor models: how long one inference may take, from admission to
    /// its outputs (the wait for a session included), before it is stopped
    /// and answered 504; unset is [`DEFAULT_INFER_TIMEOUT_MS`].
    #[serde(default)]
    pub infer_timeout_ms: Option<std::num::NonZeroU64>,
}

/// A causal LM's `max_prompt_bytes` when unset: 32 bytes for each token of
/// a 128k context (natural text averages about 4), some 800 MB of
/// tokenizer memory at most.
pub const DEFAULT_MAX_PROMPT_BYTES: usize = 4 << 20;

/// A tensor model's inference deadline when `infer_timeout_ms` is not set:
/// long enough for any sensible model, short enough that a runaway request
/// frees its session.
pub const DEFAULT_INFER_TIMEOUT_MS: u64 = 60_000;

/// What a `[[model]]` table serves.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// Any ONNX graph, over KServe v2 (`/v2/models/{name}/infer`).
    #[default]
    Tensor,
    /// A decoder-only language model with a KV cache, over the OpenAI API
    /// (`/v1/chat/completions`, `/v1/completions`).
    CausalLm,
}

/// The graph file of a causal LM when `model_file` is not set.
pub const DEFAULT_MODEL_FILE: &str = "model.onnx";

impl ModelConfig {
    pub fn is_causal_lm(&self) -> bool {
        self.kind == ModelKind::CausalLm
    }

    /// The inference deadline of a tensor model (`infer_timeout_ms`).
    pub fn infer_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.infer_timeout_ms
                .map_or(DEFAULT_INFER_TIMEOUT_MS, std::num::NonZeroU64::get),
        )
    }

    /// The directory holding the model's files: verified as a whole against
    /// the integrity database and granted (read-only) by Landlock.
    pub fn dir(&self) -> &Path {
        if self.is_causal_lm() {
            &self.path
        } else {
            self.path.parent().unwrap_or(Path::new("/"))
        }
    }

    /// The ONNX graph file.
    pub fn onnx(&self) -> PathBuf {
        if self.is_causal_lm() {
            self.path
                .join(self.model_file.as_deref().unwrap_or(DEFAULT_MODEL_FILE))
        } else {
            self.path.clone()
        }
    }
}

fn yes() -> bool {
    true
}

fn one() -> NonZeroUsize {
    NonZeroUsize::MIN
}

fn default_queue_depth() -> usize {
    64
}

/// The most `sessions` a model may have: each is a copy of the weights (and
/// for a causal LM a KV cache), loaded and warmed up at start, so a typo
/// such as 100000 would exhaust memory or stall the start instead of
/// failing `check-config`.
pub const MAX_SESSIONS: usize = 256;

/// The most `queue_depth` a model may have: far beyond any useful queue,
/// and well within what a semaphore can count.
pub const MAX_QUEUE_DEPTH: usize = 65_536;

/// Where a model runs.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        })
    }
}

/// A model name that is safe in a URL path segment and a log line.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq, PartialOrd, Ord)]
#[serde(try_from = "String")]
pub struct ModelName(String);

impl ModelName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ModelName {
    type Error = String;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && !name.starts_with('.');
        if valid {
            Ok(Self(name))
        } else {
            Err(format!(
                "invalid model name {name:?}: expected 1 to 64 characters from [A-Za-z0-9._-], not starting with '.'"
            ))
        }
    }
}

/// Socket permission bits, written in TOML as an octal integer (`0o660`).
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(try_from = "u32")]
pub struct SocketMode(u32);

impl SocketMode {
    pub fn bits(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for SocketMode {
    type Error = String;

    fn try_from(mode: u32) -> Result<Self, Self::Error> {
        if mode & !0o777 != 0 {
            return Err(format!(
                "invalid socket mode {mode:#o}: expected permission bits only, at most 0o777"
            ));
        }
        if mode & 0o600 != 0o600 {
            return Err(format!(
                "invalid socket mode {mode:#o}: the owner needs read and write (0o600)"
            ));
        }
        Ok(Self(mode))
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Read, but not text: a configuration error (78), not a missing file.
    #[error("{path}: not UTF-8 text: {source}")]
    NotUtf8 {
        path: PathBuf,
        source: std::string::FromUtf8Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<TomlError>,
    },
    #[error("{path}:{line}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
    #[error("{path}: {key}: {message}")]
    Semantic {
        path: PathBuf,
        key: String,
        message: String,
    },
}

impl ConfigError {
    /// True when the file itself is missing or unreadable (as opposed to
    /// wrong, which bytes that are not UTF-8 are).
    pub fn is_unreadable(&self) -> bool {
        matches!(self, ConfigError::Read { .. })
    }
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
        config.source_sha256 = deepseek_integrity::digest::hex(
            &<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()),
        );
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
        paths.extend(
            self.models
                .iter()
                .enumerate()
                .map(|(index, model)| (format!("model[{index}].path"), &model.path)),
        );
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
            if !model.is_causal_lm() {
                for (name, set) in [
                    ("model_file", model.model_file.is_some()),
                    ("context_length", model.context_length.is_some()),
                    ("max_prompt_bytes", model.max_prompt_bytes.is_some()),
                ] {
                    if set {
                        return Err(semantic(
                            &key(name),
                            "only for kind = \"causal-lm\" models".to_owned(),
                        ));
                    }
                }
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
                    format!("expected a file name inside model[{index}].path, got {file:?}"),
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

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[integrity]
verifier_key = "ed25519:GL0Uc1Liy+LFw6V2AxvuGjFBcQajKQTxz90KtLXo+ys="
[runtime]
library = "/opt/ort/libonnxruntime.so.1.31.1"

[[model]]
name = "demo"
path = "/models/demo.onnx"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/deepseek/deepseekd.toml"), text)
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let config = parse(MINIMAL).expect("minimal config parses");
        assert_eq!(
            config.server.socket,
            PathBuf::from("/run/deepseek/deepseekd.sock")
        );
        assert_eq!(config.server.socket_mode.bits(), 0o660);
        assert_eq!(config.server.allowed_groups, vec!["deepseek".to_owned()]);
        assert_eq!(config.server.allowed_uids, None);
        assert_eq!(config.server.max_body_bytes.get(), 64 * 1024 * 1024);
        assert_eq!(config.server.max_response_bytes.get(), 64 * 1024 * 1024);
        assert_eq!(config.server.max_connections.get(), 256);
        assert_eq!(config.server.shutdown_grace_secs, 30);
        let model = &config.models[0];
        assert_eq!(model.device, Device::Cpu);
        assert_eq!(model.sessions.get(), 1);
        assert_eq!(model.queue_depth, 64);
        assert!(!model.allow_cpu_fallback);
        assert!(model.warm_up);
        assert_eq!(model.infer_timeout(), std::time::Duration::from_secs(60));
        assert_eq!(config.log.format, LogFormat::Text);
        assert!(config.sandbox.enforce);
        assert_eq!(config.sandbox.user, "deepseek");
        assert_eq!(config.sandbox.seccomp, SeccompMode::Enforce);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = format!("{MINIMAL}threads = 4\n");
        let err = parse(&text).expect_err("unknown key rejected").to_string();
        assert!(err.starts_with("/etc/deepseek/deepseekd.toml: "), "{err}");
        assert!(err.contains("line 10"), "{err}");
        assert!(err.contains("unknown field `threads`"), "{err}");
        assert!(err.contains("expected one of"), "{err}");
    }

    #[test]
    fn sessions_and_queue_depth_have_a_ceiling() {
        for (key, max) in [("sessions", MAX_SESSIONS), ("queue_depth", MAX_QUEUE_DEPTH)] {
            let at = MINIMAL.replace(
                "name = \"demo\"",
                &format!("name = \"demo\"\n{key} = {max}"),
            );
            parse(&at).expect("the limit itself is accepted");
            let over = MINIMAL.replace(
                "name = \"demo\"",
                &format!("name = \"demo\"\n{key} = 100000"),
            );
            let err = parse(&over).expect_err("over the limit").to_string();
            assert_eq!(
                err,
                format!(
                    "/etc/deepseek/deepseekd.toml: model[0].{key}: 100000 is over the limit of {max}"
                )
            );
        }
    }

    #[test]
    fn a_file_that_is_not_utf8_is_invalid_not_unreadable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("deepseekd.toml");
        std::fs::write(&path, b"[server]\nsocket = \"/run/\xff\"\n").expect("write");
        let err = Config::load(&path).expect_err("not UTF-8");
        assert!(!err.is_unreadable(), "{err}");
        assert!(
            err.to_string()
                .starts_with(&format!("{}: not UTF-8 text: ", path.display())),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_names_the_expected_type() {
        let text = MINIMAL.replace("name = \"demo\"", "name = \"demo\"\nsessions = \"two\"");
        let err = parse(&text).expect_err("bad type rejected").to_string();
        assert!(
            err.starts_with(
                "/etc/deepseek/deepseekd.toml: model[0].sessions: TOML parse error at line 9"
            ),
            "{err}"
        );
        assert!(err.contains("invalid type: string \"two\""), "{err}");
    }

    #[test]
    fn infer_timeout_is_positive_and_for_tensor_models_only() {
        let text = MINIMAL.replace("name = \"demo\"", "name = \"demo\"\ninfer_timeout_ms = 250");
        let config = parse(&text).expect("timeout parses");
        assert_eq!(
            config.models[0].infer_timeout(),
            std::time::Duration::from_millis(250)
        );
        let text = MINIMAL.replace("name = \"demo\"", "name = \"demo\"\ninfer_timeout_ms = 0");
        let err = parse(&text).expect_err("zero rejected").to_string();
        assert!(err.contains("model[0].infer_timeout_ms"), "{err}");
        let text = MINIMAL.replace(
            "name = \"demo\"",
            "name = \"demo\"\nkind = \"causal-lm\"\ninfer_timeout_ms = 250",
        );
        let err = parse(&text).expect_err("causal LM rejected").to_string();
        assert!(
            err.ends_with("model[0].infer_timeout_ms: only for kind = \"tensor\" models; a generation is bounded by its max_tokens"),
            "{err}"
        );
    }

    #[test]
    fn zero_sessions_rejected() {
        let text = MINIMAL.replace("name = \"demo\"", "name = \"demo\"\nsessions = 0");
        let err = parse(&text)
            .expect_err("zero sessions rejected")
            .to_string();
        assert!(err.contains("expected a nonzero usize"), "{err}");
        assert!(
            err.contains("model[0].sessions: TOML parse error at line 9"),
            "{err}"
        );
    }

    #[test]
    fn bad_device_lists_the_choices() {
        let text = MINIMAL.replace("name = \"demo\"", "name = \"demo\"\ndevice = \"gpu\"");
        let err = parse(&text).expect_err("bad device rejected").to_string();
        assert!(
            err.contains("unknown variant `gpu`, expected `cpu` or `cuda`"),
            "{err}"
        );
    }

    #[test]
    fn socket_mode_must_be_permission_bits_with_owner_rw() {
        for (mode, expected) in [("0o4660", "at most 0o777"), ("0o060", "owner needs")] {
            let text = format!("[server]\nsocket_mode = {mode}\n{MINIMAL}");
            let err = parse(&text).expect_err("bad mode rejected").to_string();
            assert!(err.contains(expected), "{mode}: {err}");
            assert!(err.contains("line 2"), "{err}");
        }
    }

    #[test]
    fn a_world_connectable_socket_needs_allow_world_connect() {
        for mode in ["0o777", "0o662"] {
            let text = format!("[server]\nsocket_mode = {mode}\n{MINIMAL}");
            let err = parse(&text).expect_err("o+w refused").to_string();
            assert!(
                err.starts_with("/etc/deepseek/deepseekd.toml: server.socket_mode: ")
                    && err.contains("server.allow_world_connect = true"),
                "{err}"
            );
            let allowed =
                format!("[server]\nsocket_mode = {mode}\nallow_world_connect = true\n{MINIMAL}");
            parse(&allowed).expect("allowed on purpose");
        }
        parse(&format!("[server]\nsocket_mode = 0o664\n{MINIMAL}")).expect("o+r cannot connect");
    }

    #[test]
    fn duplicate_model_names_point_at_the_second() {
        let text = format!("{MINIMAL}\n[[model]]\nname = \"demo\"\npath = \"/m.onnx\"\n");
        let err = parse(&text).expect_err("duplicate rejected").to_string();
        assert_eq!(
            err,
            "/etc/deepseek/deepseekd.toml:12: model[1].name: duplicate model name \"demo\": each [[model]] needs its own name"
        );
    }

    #[test]
    fn model_names_are_url_safe() {
        let text = MINIMAL.replace("\"demo\"", "\"../etc\"");
        let err = parse(&text).expect_err("bad name rejected").to_string();
        assert!(err.contains("invalid model name \"../etc\""), "{err}");
    }

    #[test]
    fn invalid_value_inside_a_spanned_key_names_the_plain_key() {
        let text = MINIMAL.replace("\"demo\"", "\"\"");
        let err = parse(&text).expect_err("empty name rejected").to_string();
        assert!(
            err.starts_with(
                "/etc/deepseek/deepseekd.toml: model[0].name: TOML parse error at line 8"
            ),
            "{err}"
        );
    }

    #[test]
    fn integrity_needs_a_verifier_key_unless_switched_off() {
        let text = MINIMAL.replace(
            "verifier_key = \"ed25519:GL0Uc1Liy+LFw6V2AxvuGjFBcQajKQTxz90KtLXo+ys=\"",
            "",
        );
        let err = parse(&text).expect_err("no key").to_string();
        assert!(
            err.contains("integrity.verifier_key: required while integrity.enforce is true")
                && err.contains("integrity.verifier_key_file"),
            "{err}"
        );
        let off = text.replace("[integrity]", "[integrity]\nenforce = false");
        parse(&off).expect("enforce = false needs no key");
        let bad = MINIMAL.replace("ed25519:GL0U", "ed25519:XX0U");
        assert!(
            parse(&bad)
                .expect_err("bad key")
                .to_string()
                .contains("integrity.verifier_key")
        );
    }

    /// MINIMAL with `integrity.verifier_key_file` naming a file holding
    /// `contents` (mode 0644) instead of the inline key.
    fn with_key_file(dir: &tempfile::TempDir, contents: &str) -> (PathBuf, String) {
        use std::os::unix::fs::PermissionsExt;
        let file = dir.path().join("integrity.pub");
        std::fs::write(&file, contents).expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let text = MINIMAL.replace(
            "verifier_key = \"ed25519:GL0Uc1Liy+LFw6V2AxvuGjFBcQajKQTxz90KtLXo+ys=\"",
            &format!("verifier_key_file = \"{}\"", file.display()),
        );
        (file, text)
    }

    #[test]
    fn the_verifier_key_may_be_in_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, text) = with_key_file(
            &dir,
            "ed25519:GL0Uc1Liy+LFw6V2AxvuGjFBcQajKQTxz90KtLXo+ys=\n",
        );
        let config = parse(&text).expect("key from the file");
        assert_eq!(
            config.integrity.pinned,
            parse(MINIMAL).expect("inline").integrity.pinned
        );
        assert!(config.integrity.pinned.is_some());
    }

    #[test]
    fn verifier_key_file_errors_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (file, text) = with_key_file(&dir, "ed25519:XX0U\n");
        let err = parse(&text).expect_err("bad key").to_string();
        assert!(
            err.starts_with(&format!(
                "/etc/deepseek/deepseekd.toml: integrity.verifier_key_file: {}: ",
                file.display()
            )),
            "{err}"
        );
        std::fs::remove_file(&file).expect("remove");
        let err = parse(&text).expect_err("missing file").to_string();
        assert_eq!(
            err,
            format!(
                "/etc/deepseek/deepseekd.toml: integrity.verifier_key_file: cannot read {}: \
                 No such file or directory (os error 2)",
                file.display()
            )
        );
        let relative = MINIMAL.replace(
            "verifier_key = \"ed25519:GL0Uc1Liy+LFw6V2AxvuGjFBcQajKQTxz90KtLXo+ys=\"",
            "verifier_key_file = \"integrity.pub\"",
        );
        let err = parse(&relative).expect_err("relative").to_string();
        assert!(
            err.ends_with(
                "integrity.verifier_key_file: expected an absolute path, got \"integrity.pub\""
            ),
            "{err}"
        );
        let both = MINIMAL.replace(
            "[integrity]",
            &format!("[integrity]\nverifier_key_file = \"{}\"", file.display()),
        );
        let err = parse(&both).expect_err("both").to_string();
        assert_eq!(
            err,
            "/etc/deepseek/deepseekd.toml: integrity.verifier_key_file: conflicts with \
             integrity.verifier_key: set only one of the two"
        );
        // With enforce = false both are ignored, as the inline key is.
        let off = text.replace("[integrity]", "[integrity]\nenforce = false");
        assert!(parse(&off).expect("not read").integrity.pinned.is_none());
    }

    #[test]
    fn causal_lm_models_are_directories() {
        let text = MINIMAL.replace(
            "path = \"/models/demo.onnx\"",
            "kind = \"causal-lm\"\npath = \"/models/r1\"\ncontext_length = 128",
        );
        let config = parse(&text).expect("causal-lm parses");
        let model = &config.models[0];
        assert!(model.is_causal_lm());
        assert_eq!(model.dir(), Path::new("/models/r1"));
        assert_eq!(model.onnx(), PathBuf::from("/models/r1/model.onnx"));
        assert_eq!(model.context_length.map(NonZeroUsize::get), Some(128));
        let fp16 = text.replace("context_length = 128", "model_file = \"model_fp16.onnx\"");
        assert_eq!(
            parse(&fp16).expect("model_file").models[0].onnx(),
            PathBuf::from("/models/r1/model_fp16.onnx")
        );
        let tensor = &parse(MINIMAL).expect("tensor").models[0];
        assert_eq!(tensor.dir(), Path::new("/models"));
        assert_eq!(tensor.onnx(), PathBuf::from("/models/demo.onnx"));
    }

    #[test]
    fn causal_lm_keys_are_checked() {
        let tensor = MINIMAL.replace("name = \"demo\"", "name = \"demo\"\ncontext_length = 64");
        assert_eq!(
            parse(&tensor).expect_err("tensor").to_string(),
            "/etc/deepseek/deepseekd.toml: model[0].context_length: only for kind = \"causal-lm\" models"
        );
        let tensor = MINIMAL.replace("name = \"demo\"", "name = \"demo\"\nmax_prompt_bytes = 64");
        assert_eq!(
            parse(&tensor).expect_err("tensor").to_string(),
            "/etc/deepseek/deepseekd.toml: model[0].max_prompt_bytes: only for kind = \"causal-lm\" models"
        );
        let escape = MINIMAL.replace(
            "name = \"demo\"",
            "name = \"demo\"\nkind = \"causal-lm\"\nmodel_file = \"../x.onnx\"",
        );
        assert!(
            parse(&escape)
                .expect_err("escape")
                .to_string()
                .contains("model[0].model_file: expected a file name inside model[0].path")
        );
        let kind = MINIMAL.replace("name = \"demo\"", "name = \"demo\"\nkind = \"llm\"");
        assert!(
            parse(&kind)
                .expect_err("kind")
                .to_string()
                .contains("unknown variant `llm`, expected `tensor` or `causal-lm`")
        );
    }

    #[test]
    fn relative_library_path_rejected() {
        let text = MINIMAL.replace("/opt/ort/", "");
        let err = parse(&text)
            .expect_err("relative path rejected")
            .to_string();
        assert!(
            err.contains("runtime.library: expected an absolute path"),
            "{err}"
        );
    }

    #[test]
    fn no_models_rejected() {
        let err = parse("[integrity]\nenforce = false\n[runtime]\nlibrary = \"/x.so\"\n")
            .expect_err("no models rejected")
            .to_string();
        assert!(err.contains("at least one [[model]]"), "{err}");
    }

    #[test]
    fn missing_runtime_section_rejected() {
        let err = parse("[[model]]\nname = \"a\"\npath = \"/a.onnx\"\n")
            .expect_err("missing runtime rejected")
            .to_string();
        assert!(err.contains("missing field `runtime`"), "{err}");
    }
}
