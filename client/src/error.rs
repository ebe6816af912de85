//! What can go wrong, each said so that the user knows what to do, with the
//! daemon's own message where it gave one, and its exit code.

use std::fmt;
use std::path::PathBuf;

use crate::exit;

/// An error answer of the daemon: OpenAI's `{"error": {"message", "code"}}`
/// under `/v1`, or the peer refusal's `{"error": "message"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    /// The HTTP status; an error event inside a stream has none (200 was
    /// sent before it), and gets 500 or 400 from its `type`.
    pub(crate) status: u16,
    pub(crate) code: Option<String>,
    pub(crate) message: String,
}

/// Every failure of the client.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error(
        "permission denied on {socket}: are you in the deepseek group? \
         Check with `id -nG`; after an administrator adds you, log in again"
    )]
    SocketPermission { socket: PathBuf },
    #[error(
        "deepseekd is not running: {socket} does not exist. \
         Check `systemctl status deepseekd.socket deepseekd`, or name another socket with --socket"
    )]
    NoSocket { socket: PathBuf },
    #[error(
        "deepseekd is not running: nothing listens on {socket}. \
         Check `systemctl status deepseekd.socket deepseekd`"
    )]
    NotListening { socket: PathBuf },
    #[error("cannot connect to {socket}: {source}")]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("the connection to deepseekd on {socket} failed: {source}")]
    Transport {
        socket: PathBuf,
        source: hyper::Error,
    },
    #[error("{}", describe(.socket, .error))]
    Api { socket: PathBuf, error: ApiError },
    #[error("deepseekd's answer could not be read: {0}")]
    Protocol(String),
    #[error(
        "the answer broke off: the stream ended before it was complete \
         (deepseekd stopped or restarted?)"
    )]
    Incomplete,
    #[error("no model to ask: {0}")]
    NoModel(String),
    #[error("the question is {0}")]
    Question(String),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    /// The documented exit code (exit.rs) of a command that fails with this.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Self::SocketPermission { .. } => exit::PERMISSION,
            Self::NoSocket { .. } | Self::NotListening { .. } | Self::Connect { .. } => {
                exit::UNAVAILABLE
            }
            Self::Transport { .. } | Self::Incomplete => exit::UNAVAILABLE,
            Self::Api { error, .. } => api_exit_code(error),
            Self::Protocol(_) => exit::PROTOCOL,
            Self::NoModel(_) => exit::USAGE,
            Self::Question(_) => exit::DATA,
            Self::Io { .. } => exit::IO,
            Self::Interrupted => exit::INTERRUPTED,
        }
    }

    /// Prints the error as every mode does, and returns its exit code.
    pub(crate) fn report(&self) -> std::process::ExitCode {
        eprintln!("deepseek: error: {self}");
        std::process::ExitCode::from(self.exit_code())
    }

    /// Whether clearing the conversation would help: the daemon said the
    /// context is too long.
    pub(crate) fn is_context_too_long(&self) -> bool {
        matches!(self, Self::Api { error, .. } if error.code.as_deref() == Some("context_length_exceeded"))
    }
}

fn api_exit_code(error: &ApiError) -> u8 {
    match (error.status, error.code.as_deref()) {
        (_, Some("audit_unavailable")) => exit::UNAVAILABLE,
        (_, Some("queue_full")) | (429, _) => exit::TEMPORARY,
        (403, _) => exit::PERMISSION,
        (404, Some("model_not_found")) => exit::USAGE,
        (503, _) => exit::UNAVAILABLE,
        (status, _) if status >= 500 => exit::SOFTWARE,
        _ => exit::DATA,
    }
}

/// Our explanation of a daemon's refusal, then the daemon's own words.
fn describe(socket: &std::path::Path, error: &ApiError) -> String {
    let ours: String = match (error.status, error.code.as_deref()) {
        (_, Some("audit_unavailable")) => "deepseekd refuses requests while the audit log cannot \
            record them (the auditor, deepseek-audit, is down or not answering); requests are \
            refused until it records again. An administrator can check \
            `systemctl status deepseek-audit`"
            .into(),
        (_, Some("context_length_exceeded")) => "the conversation is too long for the model's \
            context: shorten the question, lower --max-tokens, or start again (/clear)"
            .into(),
        (_, Some("queue_full")) => "the model is busy (its request queue is full); try again \
            in a moment"
            .into(),
        (429, _) => "you have reached your request limit on this appliance; try again later".into(),
        (403, _) => format!(
            "permission denied by deepseekd on {}: are you in the deepseek group? \
             Check with `id -nG`; after an administrator adds you, log in again",
            socket.display()
        ),
        (404, Some("model_not_found")) => "no such model on this daemon (in a session, /model \
            lists them)"
            .into(),
        (status, _) if status >= 500 => format!(
            "deepseekd failed ({status}); its log has the details \
             (journalctl -u deepseekd)"
        ),
        (status, _) => format!("deepseekd refused the request ({status})"),
    };
    format!("{ours}\n  deepseekd said: {}", Quoted(&error.message))
}

/// The daemon's message as one line, its control characters made visible
/// (the message may quote the request).
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::sanitize::for_terminal(&self.0.replace('\n', " ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: Option<&str>) -> Error {
        Error::Api {
            socket: "/run/deepseek/deepseekd.sock".into(),
            error: ApiError {
                status,
                code: code.map(str::to_owned),
                message: "the daemon's words\x1b[2J".into(),
            },
        }
    }

    #[test]
    fn refusals_map_to_their_codes_and_quote_the_daemon() {
        let cases = [
            (
                api(503, Some("audit_unavailable")),
                exit::UNAVAILABLE,
                "until it records again",
            ),
            (api(503, Some("queue_full")), exit::TEMPORARY, "busy"),
            (
                api(429, Some("rate_limited")),
                exit::TEMPORARY,
                "request limit",
            ),
            (api(403, None), exit::PERMISSION, "deepseek group"),
            (
                api(404, Some("model_not_found")),
                exit::USAGE,
                "no such model",
            ),
            (
                api(400, Some("context_length_exceeded")),
                exit::DATA,
                "too long",
            ),
            (api(400, None), exit::DATA, "refused the request (400)"),
            (api(500, None), exit::SOFTWARE, "journalctl"),
        ];
        for (error, code, text) in cases {
            assert_eq!(error.exit_code(), code, "{error}");
            let shown = error.to_string();
            assert!(shown.contains(text), "{shown}");
            assert!(
                shown.ends_with("deepseekd said: the daemon's words^[[2J"),
                "{shown}"
            );
        }
        assert!(api(400, Some("context_length_exceeded")).is_context_too_long());
    }
}
