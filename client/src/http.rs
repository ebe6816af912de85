//! HTTP/1.1 to deepseekd over its Unix socket (hyper), one connection per
//! request: dropping a [`Stream`] closes its connection, which is how the
//! daemon learns that the user stopped an answer, and stops generating.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::api::{self, ChatRequest, Event};
use crate::error::Error;
use crate::sse;

/// The most bytes read of a whole answer: an error body, the model list.
const MAX_BODY_BYTES: usize = 1 << 20;

/// The daemon at a socket.
#[derive(Debug, Clone)]
pub(crate) struct Daemon {
    socket: PathBuf,
}

impl Daemon {
    pub(crate) fn new(socket: PathBuf) -> Self {
        Self { socket }
    }

    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    /// The chat models it serves (`GET /v1/models`).
    pub(crate) async fn models(&self) -> Result<Vec<String>, Error> {
        let request = hyper::Request::get("/v1/models");
        let (response, connection) = self.send(request, Bytes::new()).await?;
        let body = self.whole(response.into_body()).await?;
        drop(connection);
        api::model_ids(&body)
    }

    /// Asks a question; the answer streams from the [`Stream`].
    pub(crate) async fn chat(&self, request: &ChatRequest<'_>) -> Result<Stream, Error> {
        let body = serde_json::to_vec(request)
            .map_err(|e| Error::Protocol(format!("the request cannot be written: {e}")))?;
        let builder = hyper::Request::post("/v1/chat/completions")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::ACCEPT, "text/event-stream");
        let (response, connection) = self.send(builder, Bytes::from(body)).await?;
        let is_stream = response
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if !is_stream {
            return Err(Error::Protocol(
                "the answer to a streamed chat is not text/event-stream".to_owned(),
            ));
        }
        Ok(Stream {
            body: response.into_body(),
            decoder: sse::Decoder::default(),
            pending: VecDeque::new(),
            socket: self.socket.clone(),
            _connection: connection,
        })
    }

    /// Sends one request on a fresh connection: the answer's head (an error
    /// status read whole into [`Error::Api`]), and the connection's task.
    async fn send(
        &self,
        builder: hyper::http::request::Builder,
        body: Bytes,
    ) -> Result<(hyper::Response<Incoming>, ConnectionTask), Error> {
        let mut sender = self.connect().await?;
        // HTTP/1.1 needs a Host; over a Unix socket any will do.
        let request = builder
            .header(hyper::header::HOST, "localhost")
            .body(Full::new(body))
            .map_err(|e| Error::Protocol(format!("the request cannot be written: {e}")))?;
        let sent = sender.0.send_request(request).await;
        let response = sent.map_err(|source| self.transport(source))?;
        let status = response.status();
        if status.is_success() {
            return Ok((response, sender.1));
        }
        let body = self.whole(response.into_body()).await?;
        Err(Error::Api {
            socket: self.socket.clone(),
            error: api::error_body(status.as_u16(), &body),
        })
    }

    async fn connect(&self) -> Result<(SendRequest<Full<Bytes>>, ConnectionTask), Error> {
        let socket = self.socket.clone();
        let refused = |source: std::io::Error| match source.kind() {
            ErrorKind::NotFound => Error::NoSocket { socket },
            ErrorKind::PermissionDenied => Error::SocketPermission { socket },
            ErrorKind::ConnectionRefused => Error::NotListening { socket },
            _ => Error::Connect { socket, source },
        };
        // Connecting to a Unix socket does not wait for the server.
        let stream = std::os::unix::net::UnixStream::connect(&self.socket).map_err(refused)?;
        let io = |source| Error::Connect {
            socket: self.socket.clone(),
            source,
        };
        let closer = stream.try_clone().map_err(io)?;
        stream.set_nonblocking(true).map_err(io)?;
        let stream = tokio::net::UnixStream::from_std(stream).map_err(io)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| self.transport(source))?;
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok((
            sender,
            ConnectionTask {
                task: task.abort_handle(),
                closer,
            },
        ))
    }

    async fn whole(&self, body: Incoming) -> Result<Bytes, Error> {
        Limited::new(body, MAX_BODY_BYTES)
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(source) => self.transport(*source),
                Err(e) => Error::Protocol(format!("an answer over {MAX_BODY_BYTES} bytes: {e}")),
            })
    }

    fn transport(&self, source: hyper::Error) -> Error {
        Error::Transport {
            socket: self.socket.clone(),
            source,
        }
    }
}

/// The task driving a connection. Dropped, it shuts the socket down at
/// once, so the daemon sees the client leave even while the runtime is
/// not running (a session waits in the line editor, outside it), and is
/// aborted. An answer read halfway leaves nothing to reuse.
#[derive(Debug)]
struct ConnectionTask {
    task: tokio::task::AbortHandle,
    /// The same socket, for the shutdown.
    closer: std::os::unix::net::UnixStream,
}

impl Drop for ConnectionTask {
    fn drop(&mut self) {
        let _ = self.closer.shutdown(std::net::Shutdown::Both);
        self.task.abort();
    }
}

/// A streamed answer, event by event. Dropping it closes the connection.
#[derive(Debug)]
pub(crate) struct Stream {
    body: Incoming,
    decoder: sse::Decoder,
    pending: VecDeque<String>,
    socket: PathBuf,
    /// Held for its drop.
    _connection: ConnectionTask,
}

impl Stream {
    /// The next event; [`Error::Incomplete`] when the stream ends before
    /// `[DONE]`, as the daemon's streams then failed.
    pub(crate) async fn next(&mut self) -> Result<Event, Error> {
        loop {
            if let Some(data) = self.pending.pop_front() {
                return api::event(&data, &self.socket);
            }
            let Some(frame) = self.body.frame().await else {
                return Err(Error::Incomplete);
            };
            let frame = frame.map_err(|source| Error::Transport {
                socket: self.socket.clone(),
                source,
            })?;
            if let Ok(bytes) = frame.into_data() {
                self.pending.extend(self.decoder.push(&bytes)?);
            }
        }
    }
}
