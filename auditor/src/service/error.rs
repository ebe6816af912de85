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
}
