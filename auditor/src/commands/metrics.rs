//! `deepseek-audit metrics`: the appliance's two sources as Prometheus text
//! files for node_exporter's textfile collector (the daemon has no TCP port
//! for Prometheus to scrape). It reads deepseekd's `GET /metrics` over its
//! Unix socket and the audit service's `metrics_file`, keeps from each only
//! the families that source owns (`deepseekd_*` from the daemon,
//! `deepseek_audit_*` from the auditor), and replaces one file per source
//! atomically, `deepseek_scrape_up{source}` in the auditor's, so that the
//! daemon cannot mask the auditor's alerts. docs/guide/metrics.md.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use crate::exit::{self, fail};
use crate::metrics::{Exposition, Kind, replace_file};
use crate::service::ServiceConfig;

/// The most bytes read from either source.
const MAX_SOURCE_BYTES: u64 = 4 << 20;
/// How long the daemon may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) const EXIT_CODES: &str = "\
Exit codes:
  0   both sources read and the file written
  69  a source could not be read (the file is still written, with
      deepseek_scrape_up{source=...} 0 for it)
  74  the output file cannot be written
  78  audit.toml is unusable";

/// Why a source gave nothing.
#[derive(Debug, thiserror::Error)]
enum SourceError {
    #[error("cannot reach {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} answered {status:?} to GET /metrics (is this user in one of server.allowed_groups?)", path.display())]
    Status { path: PathBuf, status: String },
    #[error("{} sent more than {MAX_SOURCE_BYTES} bytes", path.display())]
    TooLarge { path: PathBuf },
    #[error("{} sent a malformed answer: {reason}", path.display())]
    Malformed { path: PathBuf, reason: &'static str },
    #[error(
        "metrics_file is not set in the audit configuration: the audit service writes no metrics"
    )]
    NotConfigured,
    #[error("{} was last written {age} s ago (metrics_interval_secs = {interval}): the audit service is stuck or stopped", path.display())]
    Stale {
        path: PathBuf,
        age: u64,
        interval: u64,
    },
}

/// Reads at most [`MAX_SOURCE_BYTES`] from `reader`.
fn read_bounded(reader: impl Read, path: &Path) -> Result<Vec<u8>, SourceError> {
    let mut bytes = Vec::new();
    reader
        .take(MAX_SOURCE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| SourceError::Io {
            path: path.to_owned(),
            source,
        })?;
    if bytes.len() as u64 > MAX_SOURCE_BYTES {
        return Err(SourceError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// `GET /metrics` over HTTP/1.1 on the daemon's socket.
fn daemon(socket: &Path) -> Result<String, SourceError> {
    let io = |source| SourceError::Io {
        path: socket.to_owned(),
        source,
    };
    let malformed = |reason| SourceError::Malformed {
        path: socket.to_owned(),
        reason,
    };
    let mut stream = UnixStream::connect(socket).map_err(io)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(io)?;
    let answer = read_bounded(stream, socket)?;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| malformed("no end of headers"))?;
    let head = std::str::from_utf8(&answer[..split]).map_err(|_| malformed("headers not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if status.split(' ').nth(1) != Some("200") {
        return Err(SourceError::Status {
            path: socket.to_owned(),
            status: status.to_owned(),
        });
    }
    let chunked = lines.any(|line| {
        line.to_ascii_lowercase()
            .replace(' ', "")
            .starts_with("transfer-encoding:chunked")
    });
    let mut body = &answer[split + 4..];
    let body = if chunked {
        let mut decoded = Vec::new();
        loop {
            let end = body
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| malformed("a chunk without its size line"))?;
            let size = std::str::from_utf8(&body[..end])
                .ok()
                .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
                .ok_or_else(|| malformed("a chunk size that is not hexadecimal"))?;
            if size == 0 {
                break decoded;
            }
            let start = end + 2;
            let stop = start
                .checked_add(size)
                .filter(|&stop| stop <= body.len() && body[stop..].starts_with(b"\r\n"))
                .ok_or_else(|| malformed("a chunk cut short"))?;
            decoded.extend_from_slice(&body[start..stop]);
            body = &body[stop + 2..];
        }
    } else {
        body.to_vec()
    };
    String::from_utf8(body).map_err(|_| malformed("a body that is not UTF-8"))
}

/// The audit service's `metrics_file`, refused when not rewritten within
/// three intervals (and ten seconds).
fn auditor(config: &ServiceConfig) -> Result<String, SourceError> {
    let path = config
        .metrics_file
        .as_ref()
        .ok_or(SourceError::NotConfigured)?;
    let io = |source| SourceError::Io {
        path: path.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let modified = file.metadata().and_then(|m| m.modified()).map_err(io)?;
    let age = SystemTime::now()
        .duration_since(modified)
        .unwrap_or_default()
        .as_secs();
    let interval = config.metrics_interval_secs.get();
    if age > (3 * interval).max(10) {
        return Err(SourceError::Stale {
            path: path.clone(),
            age,
            interval,
        });
    }
    let bytes = read_bounded(file, path)?;
    String::from_utf8(bytes).map_err(|_| SourceError::Malformed {
        path: path.clone(),
        reason: "not UTF-8",
    })
}

/// The lines of `text` that belong to families named `prefix*`: samples
/// and their `# HELP`/`# TYPE`; any other line is dropped.
fn owned_by(text: &str, prefix: &str) -> String {
    let mut kept = String::new();
    for line in text.lines() {
        let name = match line.strip_prefix("# ") {
            Some(comment) => comment.split(' ').nth(1).unwrap_or_default(),
            None => line.split(['{', ' ']).next().unwrap_or_default(),
        };
        if name.starts_with(prefix) {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    kept
}

pub(crate) fn run(config_path: &Path, daemon_socket: &Path, dir: Option<&Path>) -> ExitCode {
    let config = match ServiceConfig::load(config_path) {
        Ok(config) => config,
        Err(e) => return fail(exit::CONFIG, &e),
    };
    let sources = [
        (
            "deepseekd",
            daemon(daemon_socket).map(|t| owned_by(&t, "deepseekd_")),
        ),
        (
            "deepseek-audit",
            auditor(&config).map(|t| owned_by(&t, "deepseek_audit_")),
        ),
    ];
    let mut scrape = Exposition::new();
    scrape.family(
        "deepseek_scrape_up",
        Kind::Gauge,
        "1 when deepseek-audit metrics read the source, 0 when it could not (its error is in the collector's journal).",
    );
    let mut down = false;
    for (source, result) in &sources {
        if let Err(e) = result {
            down = true;
            eprintln!("deepseek-audit: warning: {source}: {e}");
        }
        scrape.sample(
            "deepseek_scrape_up",
            &[("source", source)],
            f64::from(u8::from(result.is_ok())),
        );
    }
    // One file per source: node_exporter parses each on its own, so a
    // daemon that sends something malformed loses its own file only, never
    // the auditor's metrics or deepseek_scrape_up. A source that could not
    // be read gets an empty file, not its stale figures.
    let [(_, daemon), (_, audit)] = sources;
    let files = [
        ("deepseekd.prom", daemon.unwrap_or_default()),
        (
            "deepseek-audit.prom",
            audit.unwrap_or_default() + &scrape.finish(),
        ),
    ];
    for (name, text) in &files {
        let written = match dir {
            Some(dir) => replace_file(&dir.join(name), text),
            None => {
                print!("{text}");
                Ok(())
            }
        };
        if let Err(e) = written {
            let path = dir.unwrap_or(Path::new("")).join(name);
            return fail(
                exit::IO,
                &format_args!("cannot write {}: {e}", path.display()),
            );
        }
    }
    if down {
        ExitCode::from(exit::UNAVAILABLE)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_families_a_source_owns() {
        let text = "# HELP deepseekd_x X.\n# TYPE deepseekd_x gauge\ndeepseekd_x{a=\"b\"} 1\n\
                    # HELP deepseek_audit_low_space Forged.\n# TYPE deepseek_audit_low_space gauge\n\
                    deepseek_audit_low_space 0\nnode_x 1\n";
        assert_eq!(
            owned_by(text, "deepseekd_"),
            "# HELP deepseekd_x X.\n# TYPE deepseekd_x gauge\ndeepseekd_x{a=\"b\"} 1\n"
        );
    }
}
