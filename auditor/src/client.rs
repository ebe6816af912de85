//! A small synchronous client of the audit service, for tools that record
//! one entry and must know it is on disk (`deepseek-audit integrity-check`).
//! It speaks the service's own frames ([`crate::service::write_frame`],
//! [`Request`], [`Reply`]); the daemon's pipelined async client is
//! `daemon/src/audit.rs`. The service takes the peer's identity from
//! SO_PEERCRED, so the client sends none.

use std::io::ErrorKind;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::entry::Entry;
use crate::service::{Reply, Request, read_frame, write_frame};

/// Largest acknowledgement frame accepted from the service (as the daemon).
const MAX_REPLY: usize = 64 * 1024;

/// Why a record was not acknowledged. Every variant names the socket.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    #[error("cannot connect to the auditor at {}: {source}", socket.display())]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot send the record to the auditor at {}: {source}", socket.display())]
    Send {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the auditor at {} closed the connection without acknowledging the record \
         (is this user's uid in its allowed_uids or allowed_users?)",
        socket.display()
    )]
    Closed { socket: PathBuf },
    #[error("the auditor at {} did not acknowledge the record within {timeout:?}", socket.display())]
    Timeout { socket: PathBuf, timeout: Duration },
    #[error("cannot read the acknowledgement from the auditor at {}: {source}", socket.display())]
    Receive {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("the auditor at {} refused the record: {reason}", socket.display())]
    Refused { socket: PathBuf, reason: String },
    #[error("the auditor at {} sent a malformed acknowledgement: {reason}", socket.display())]
    Malformed { socket: PathBuf, reason: String },
}

/// One connection to the service.
#[derive(Debug)]
pub(crate) struct Client {
    stream: UnixStream,
    socket: PathBuf,
    timeout: Duration,
    next_tag: u64,
}

impl Client {
    /// Connects to the service listening at `socket`. Each record must then
    /// be acknowledged within `timeout`.
    pub(crate) fn connect(socket: &Path, timeout: Duration) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
            socket: socket.to_owned(),
            source,
        })?;
        Ok(Self {
            stream,
            socket: socket.to_owned(),
            timeout,
            next_tag: 1,
        })
    }

    /// Sends `entry` and waits until the service has written and synced it;
    /// returns its sequence number in the log. The service sets `seq`,
    /// `prev` and `time_ns` itself.
    pub(crate) fn append(&mut self, entry: &Entry) -> Result<u64, ClientError> {
        let tag = self.next_tag;
        self.next_tag += 1;
        let deadline = Instant::now() + self.timeout;
        let frame = serde_json::to_vec(&Request {
            tag,
            entry: entry.clone(),
        })
        .expect("requests serialize");
        self.stream
            .set_write_timeout(Some(self.timeout.max(Duration::from_millis(1))))
            .and_then(|()| write_frame(&mut self.stream, &frame))
            .map_err(|source| self.io_error(source, true))?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.timed_out());
            }
            // The service answers a record only once it is on disk; a
            // reply with another tag belongs to no record of ours.
            let bytes = self
                .stream
                .set_read_timeout(Some(left))
                .and_then(|()| read_frame(&mut self.stream, MAX_REPLY))
                .map_err(|source| self.io_error(source, false))?
                .ok_or_else(|| ClientError::Closed {
                    socket: self.socket.clone(),
                })?;
            let reply: Reply =
                serde_json::from_slice(&bytes).map_err(|e| ClientError::Malformed {
                    socket: self.socket.clone(),
                    reason: e.to_string(),
                })?;
            match reply {
                Reply {
                    error: Some(reason),
                    ..
                } => {
                    return Err(ClientError::Refused {
                        socket: self.socket.clone(),
                        reason,
                    });
                }
                Reply {
                    tag: answered,
                    seq: Some(seq),
                    ..
                } if answered == tag => return Ok(seq),
                Reply { tag: answered, .. } if answered == tag => {
                    return Err(ClientError::Malformed {
                        socket: self.socket.clone(),
                        reason: format!("tag {tag} answered with neither seq nor error"),
                    });
                }
                Reply { .. } => {}
            }
        }
    }

    fn timed_out(&self) -> ClientError {
        ClientError::Timeout {
            socket: self.socket.clone(),
            timeout: self.timeout,
        }
    }

    /// A failed read or write: a timeout, the service having closed the
    /// connection (a refused peer's is closed at once), or another error.
    fn io_error(&self, source: std::io::Error, sending: bool) -> ClientError {
        let socket = self.socket.clone();
        match source.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => self.timed_out(),
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof => {
                ClientError::Closed { socket }
            }
            _ if sending => ClientError::Send { socket, source },
            _ => ClientError::Receive { socket, source },
        }
    }
}

/// Connects, records `entry`, and waits for its acknowledgement (at most
/// `timeout` for each step): the sequence number it got in the log.
pub(crate) fn append(socket: &Path, entry: &Entry, timeout: Duration) -> Result<u64, ClientError> {
    Client::connect(socket, timeout)?.append(entry)
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;
    use crate::entry::Event;

    /// A service stand-in that reads one record and answers with `reply`
    /// (`None`: closes without answering), returning the record it read.
    fn fake(
        reply: Option<&'static str>,
    ) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<Request>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("audit.sock");
        let listener = UnixListener::bind(&socket).expect("bind");
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let frame = read_frame(&mut stream, 1 << 20)
                .expect("read")
                .expect("a frame");
            let request: Request = serde_json::from_slice(&frame).expect("a request");
            if let Some(reply) = reply {
                let reply = reply.replace("TAG", &request.tag.to_string());
                write_frame(&mut stream, reply.as_bytes()).expect("reply");
            }
            request
        });
        (dir, socket, handle)
    }

    #[test]
    fn an_acknowledged_record_returns_its_seq() {
        let (_dir, socket, service) = fake(Some(r#"{"tag":TAG,"seq":41}"#));
        let entry = Entry::event(Event::IntegrityCheck);
        assert_eq!(
            append(&socket, &entry, Duration::from_secs(5)).expect("acked"),
            41
        );
        assert_eq!(service.join().expect("service").entry, entry);
    }

    #[test]
    fn a_refusal_a_close_and_silence_are_errors_naming_the_socket() {
        let (_dir, socket, _service) = fake(Some(
            r#"{"tag":TAG,"error":"the audit log is out of space"}"#,
        ));
        let err = append(
            &socket,
            &Entry::event(Event::IntegrityCheck),
            Duration::from_secs(5),
        )
        .expect_err("refused");
        assert_eq!(
            err.to_string(),
            format!(
                "the auditor at {} refused the record: the audit log is out of space",
                socket.display()
            )
        );
        let (_dir, socket, _service) = fake(None);
        let err = append(
            &socket,
            &Entry::event(Event::IntegrityCheck),
            Duration::from_secs(5),
        )
        .expect_err("closed");
        assert!(matches!(err, ClientError::Closed { .. }), "{err}");
        // A service that reads the record but never answers.
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("audit.sock");
        let _listener = UnixListener::bind(&socket).expect("bind");
        let err = append(
            &socket,
            &Entry::event(Event::IntegrityCheck),
            Duration::from_millis(200),
        )
        .expect_err("silent");
        assert_eq!(
            err.to_string(),
            format!(
                "the auditor at {} did not acknowledge the record within 200ms",
                socket.display()
            )
        );
        let err = append(
            &dir.path().join("missing.sock"),
            &Entry::event(Event::IntegrityCheck),
            Duration::from_secs(1),
        )
        .expect_err("nobody listens");
        assert!(
            err.to_string().starts_with(&format!(
                "cannot connect to the auditor at {}: ",
                dir.path().join("missing.sock").display()
            )),
            "{err}"
        );
    }
}
