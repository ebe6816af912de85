//! Why the service stopped or would not start.

use std::path::PathBuf;

use crate::storage::StorageError;

/// Why the service stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(
        "free space on {path} is {free} bytes, under min_free_bytes = {floor}: stopped accepting records"
    )]
    DiskFull {
        path: PathBuf,
        free: u64,
        floor: u64,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refusing to append: {reason} (investigate with `deepseek-audit log verify`)")]
    Tampered { reason: String },
    #[error(
        "the log is signed with {log_key}, not with signing_key's {signing_key}: to hand it over to \
         the new key, set previous_signing_key to the file of the key the log is signed with \
         (docs/guide/operations.md, key rotation)"
    )]
    KeyChange {
        log_key: String,
        signing_key: String,
    },
}
