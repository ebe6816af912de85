//! Why a model does not load, and why a request to one fails: the engine's
//! errors, which each protocol maps to its own status codes.

use std::path::PathBuf;

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("model {model:?} (model[{index}].{key}): cannot read {path}: {source}")]
    Unreadable {
        model: String,
        index: usize,
        /// `path` or `store` ([`crate::config::ModelConfig::location_key`]).
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "model {model:?}: the CUDA execution provider could not be registered on device {device_id}: {reason}; \
         set allow_cpu_fallback = true in its [[model]] table to run it on the CPU instead"
    )]
    Cuda {
        model: String,
        device_id: u32,
        reason: String,
    },
    #[error("model {model:?} failed integrity verification, not loaded: {source}")]
    Integrity {
        model: String,
        source: deepseek_integrity::verify::VerifyError,
    },
    /// A store model whose active version the signed database does not
    /// confirm: refused like a model that fails verification.
    #[error("model {model:?} (model store) refused, not loaded: {source}")]
    Store {
        model: String,
        source: deepseek_integrity::store::StoreError,
    },
    #[error("model {model:?} (causal-lm): {reason}")]
    CausalLm { model: String, reason: String },
    #[error("model {model:?}: ONNX Runtime cannot load {path}: {reason}")]
    Session {
        model: String,
        path: PathBuf,
        reason: String,
    },
    #[error("model {model:?}: {kind} {tensor:?} has type {found}, which the API cannot carry")]
    UnsupportedType {
        model: String,
        kind: &'static str,
        tensor: String,
        found: String,
    },
    #[error(
        "model {model:?}: the warm-up run on zero-valued inputs failed: {reason}; \
         if the model cannot take zeros (shape or index inputs), set warm_up = false in its [[model]] table"
    )]
    WarmUp { model: String, reason: String },
}

/// Why one inference request failed.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The request does not fit the model (the client's fault).
    #[error("{0}")]
    BadRequest(String),
    /// Every session is busy and the queue is full.
    #[error("model {0:?} is busy: its request queue is full, retry later")]
    QueueFull(String),
    /// ONNX Runtime failed; the detail is logged, not sent to the client.
    #[error("inference failed")]
    Runtime(String),
}
