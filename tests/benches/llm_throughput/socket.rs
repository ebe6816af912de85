//! Streamed `POST /v1/completions` through the daemon's socket, timed per
//! event.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::timing::{Batch, Timing};

/// Streams one completion over `sender`'s connection.
async fn stream_completion(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    body: Bytes,
) -> Timing {
    let request = Request::builder()
        .method("POST")
        .uri("/v1/completions")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(body))
        .expect("request");
    let start = Instant::now();
    let response = sender.send_request(request).await.expect("send");
    assert_eq!(response.status(), 200, "POST /v1/completions");
    let mut body = response.into_body();
    let mut buffer = String::new();
    let mut first = None;
    let mut last = None;
    let mut text = String::new();
    let mut usage = None;
    let mut end = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("body frame");
        let arrived = Instant::now();
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buffer.push_str(std::str::from_utf8(&data).expect("UTF-8 events"));
        while let Some(at) = buffer.find("\n\n") {
            let event: String = buffer.drain(..at + 2).collect();
            let data = event
                .trim_end()
                .strip_prefix("data: ")
                .expect("a data: event");
            if data == "[DONE]" {
                end = Some(arrived);
                continue;
            }
            let chunk: Value = serde_json::from_str(data).expect("JSON event");
            if let Some(piece) = chunk["choices"][0]["text"].as_str()
                && !piece.is_empty()
            {
                first.get_or_insert(arrived);
                text.push_str(piece);
            }
            if chunk["choices"][0]["finish_reason"].is_string() {
                last = Some(arrived);
            }
            if chunk["usage"].is_object() {
                usage = Some(chunk["usage"].clone());
            }
        }
    }
    let usage = usage.expect("the usage chunk (stream_options.include_usage)");
    let count = |key: &str| {
        usize::try_from(usage[key].as_u64().expect("a token count")).expect("count fits")
    };
    Timing {
        start,
        first: first.expect("an event with text"),
        last: last.expect("the finish chunk"),
        end: end.expect("data: [DONE]"),
        prompt_tokens: count("prompt_tokens"),
        completion_tokens: count("completion_tokens"),
        text,
    }
}

/// `clients` concurrent streamed completions of `body`, each on its own
/// connection, opened before they start together.
pub(crate) async fn socket_batch(socket: PathBuf, body: Bytes, clients: usize) -> Batch {
    let barrier = Arc::new(tokio::sync::Barrier::new(clients));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let socket = socket.clone();
            let body = body.clone();
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                let stream = tokio::net::UnixStream::connect(&socket)
                    .await
                    .expect("connect");
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .expect("handshake");
                tokio::spawn(connection);
                barrier.wait().await;
                stream_completion(&mut sender, body).await
            })
        })
        .collect();
    let mut timings = Vec::new();
    for task in tasks {
        timings.push(task.await.expect("client task"));
    }
    Batch(timings)
}
