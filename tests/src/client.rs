//! HTTP/1.1 over the daemon's Unix socket (hyper), as a client would speak it.

use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// The `data:` events of a streamed (server-sent events) answer before
/// its `[DONE]`, which must end it, each parsed.
pub fn stream_events(body: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(body).expect("utf8");
    let text = text
        .strip_suffix("data: [DONE]\n\n")
        .unwrap_or_else(|| panic!("no [DONE]: {text}"));
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").expect("data:")).expect("JSON"))
        .collect()
}

/// The chat chunks' `delta.field` joined.
pub fn delta_text(events: &[Value], field: &str) -> String {
    events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"][field].as_str())
        .collect()
}

/// An HTTP response read from the socket.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// The body as JSON (the whole body, or the JSON part of a binary response).
    pub fn json(&self) -> Value {
        let end = self.json_length().unwrap_or(self.body.len());
        serde_json::from_slice(&self.body[..end]).unwrap_or_else(|e| {
            panic!(
                "response is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// `Inference-Header-Content-Length`, when the response carries binary data.
    pub fn json_length(&self) -> Option<usize> {
        self.headers
            .get("inference-header-content-length")
            .map(|v| v.to_str().expect("ascii").parse().expect("number"))
    }

    /// The binary data after the JSON part.
    pub fn binary(&self) -> &[u8] {
        &self.body[self.json_length().expect("binary response")..]
    }

    /// The `error` message of an error response.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .expect("error is a string")
            .to_owned()
    }
}

/// A keep-alive HTTP/1.1 connection to the daemon's socket.
#[derive(Debug)]
pub struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Connection {
    pub async fn open(socket: &Path) -> std::io::Result<Self> {
        let stream = tokio::net::UnixStream::connect(socket).await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(connection);
        Ok(Self { sender })
    }

    /// Sends one request and reads the whole response.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> std::io::Result<Response> {
        let mut builder = Request::builder().method(method).uri(path);
        // HTTP/1.1 requires a Host header; over a Unix socket any will do.
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("host"))
        {
            builder = builder.header("host", "localhost");
        }
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        let request = builder.body(Full::new(body)).expect("request");
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(std::io::Error::other)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

/// Sends one request over a fresh connection to the Unix socket.
pub async fn request(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> std::io::Result<Response> {
    Connection::open(socket)
        .await?
        .send(method, path, headers, Bytes::from(body))
        .await
}

pub async fn get(socket: &Path, path: &str) -> std::io::Result<Response> {
    request(socket, "GET", path, &[], Vec::new()).await
}

/// POSTs a JSON document.
pub async fn post_json(socket: &Path, path: &str, body: &Value) -> Response {
    request(
        socket,
        "POST",
        path,
        &[("content-type", "application/json".to_owned())],
        serde_json::to_vec(body).expect("json"),
    )
    .await
    .expect("request")
}

/// The headers and body of a KServe binary request: `json` then `binary`.
pub fn binary_request(json: &Value, binary: &[u8]) -> (Vec<(&'static str, String)>, Vec<u8>) {
    let mut body = serde_json::to_vec(json).expect("json");
    let headers = vec![
        ("content-type", "application/octet-stream".to_owned()),
        ("inference-header-content-length", body.len().to_string()),
    ];
    body.extend_from_slice(binary);
    (headers, body)
}

/// POSTs a KServe binary request: `json` followed by `binary`.
pub async fn post_binary(socket: &Path, path: &str, json: &Value, binary: &[u8]) -> Response {
    let (headers, body) = binary_request(json, binary);
    request(socket, "POST", path, &headers, body)
        .await
        .expect("request")
}

/// The value of one series (`name{labels}`, as written) in a Prometheus
/// text exposition.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
