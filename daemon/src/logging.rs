//! Structured logs on stderr, where journald collects them. Request content
//! is never logged: only who asked what endpoint, the status and the latency.
#![forbid(unsafe_code)]

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. The filter was validated with the config.
///
/// ONNX Runtime logs every graph transformation at `info`; unless the
/// configured filter has a directive for the `ort` target itself, its
/// messages start at `warn`.
pub(crate) fn init(config: &LogConfig) {
    let names_ort = config.level.split(',').any(|directive| {
        let target = directive.split(['=', '[']).next().unwrap_or("").trim();
        target == "ort" || target.starts_with("ort::")
    });
    let directives = if names_ort {
        config.level.clone()
    } else {
        format!("{},ort=warn", config.level)
    };
    let filter = EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false);
    match config.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
