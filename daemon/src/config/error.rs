//! Why a configuration could not be used.

use std::path::PathBuf;

use deepseek_integrity::config::TomlError;

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
