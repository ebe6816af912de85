//! The tables other than `[[model]]`: `[server]`, `[runtime]`,
//! `[integrity]`, `[audit]`, `[sandbox]`, `[log]` and `[limits]`, with
//! their defaults.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use deepseek_integrity::keys::VerifierKey;
use serde::Deserialize;

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
/// before it is loaded (docs/guide/integrity.md).
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
/// answer leaves the daemon (docs/guide/audit.md).
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
    /// Record the `start` and `model_load` entries again this often, so
    /// that the evidence of what runs stays in the live log after the
    /// segments holding the originals are archived; 0: never.
    pub restate_interval_secs: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            required: true,
            socket: PathBuf::from("/run/deepseek-audit/audit.sock"),
            timeout_ms: std::num::NonZeroU64::new(2000).expect("non-zero"),
            start_timeout_secs: std::num::NonZeroU64::new(600).expect("non-zero"),
            record_content: false,
            restate_interval_secs: 86_400,
        }
    }
}

/// `[sandbox]`: how the daemon locks itself down (docs/guide/hardening.md).
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

/// `[limits]`: per-client request rates and concurrent requests, over the
/// inference endpoints (docs/guide/config.md). A client is a uid; the
/// group alert watches a primary group, for an account a team shares.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Record an `alert` (and warn, and count it) when a uid sends more
    /// requests than this in a minute; once per minute per uid. 0 = off.
    pub alert_requests_per_minute: u32,
    /// The same for all the uids of one primary group together. 0 = off.
    pub alert_group_requests_per_minute: u32,
    /// Refuse (429, `Retry-After`) a uid's requests beyond this many in a
    /// minute. 0 = no limit.
    pub requests_per_minute: u32,
    /// Refuse (429) a uid's request while it has this many running
    /// (streams included, until their last byte). 0 = no limit.
    pub concurrent_per_client: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            alert_requests_per_minute: 100,
            alert_group_requests_per_minute: 0,
            requests_per_minute: 0,
            concurrent_per_client: 0,
        }
    }
}
