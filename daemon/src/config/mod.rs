//! The daemon's TOML configuration: parsing, defaults and validation.
//!
//! Every key is documented in `docs/guide/config.md`. Unknown keys are
//! errors, and every error names the file, the line and the key at fault,
//! because an operator on an air-gapped box has nothing else to go on.
//! [`file`] reads and checks the whole file; [`sections`] are its tables,
//! [`model`] the `[[model]]` tables; [`error`] says what is wrong.
#![forbid(unsafe_code)]

mod error;
mod file;
mod model;
mod sections;
#[cfg(test)]
mod tests;

pub use error::ConfigError;
pub use file::{Config, DEFAULT_CONFIG_PATH};
pub use model::{
    DEFAULT_INFER_TIMEOUT_MS, DEFAULT_MAX_PROMPT_BYTES, DEFAULT_MODEL_FILE, Device,
    MAX_QUEUE_DEPTH, MAX_SESSIONS, ModelConfig, ModelKind, ModelName,
};
pub use sections::{
    AuditConfig, IntegrityConfig, LimitsConfig, LogConfig, LogFormat, RuntimeConfig, SandboxConfig,
    SeccompMode, ServerConfig, SocketMode,
};
