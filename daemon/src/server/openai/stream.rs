//! A generation streamed as server-sent events: each delta as it comes,
//! then the finish chunk, the `completion` record, the usage chunk and
//! `[DONE]`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::http::StatusCode;
use bytes::Bytes;
use deepseek_audit::entry::Event;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::error::{OpenAiError, record_entry};
use super::logprobs::Logprobs;
use super::prepare::Prepared;
use super::record::Record;
use super::tools::calls_json;
use super::whole::{finish, start, usage};
use super::wire::Endpoint;
use crate::audit::records;
use crate::engine::llm::generate::{Delta, FinishReason};
use crate::entropy::unix_time_nanos;
use crate::server::http::AppState;

/// The server-sent events of one streamed request.
struct Chunks<'a> {
    record: &'a Record,
    prepared: &'a Prepared,
    created: u64,
    body: mpsc::Sender<Result<Bytes, Infallible>>,
    /// Every byte sent before `[DONE]`, for the `completion` record.
    digest: Sha256,
    /// A completion's `text_offset` so far, in characters.
    offset: usize,
}

impl Chunks<'_> {
    /// Sends one `data:` event; false once the client is gone.
    async fn send(&mut self, data: &Value) -> bool {
        let event = self.encode(data);
        self.push(event).await
    }

    /// One `data:` event, counted in the digest of what is streamed.
    fn encode(&mut self, data: &Value) -> Bytes {
        let event = format!("data: {data}\n\n");
        self.digest.update(event.as_bytes());
        Bytes::from(event)
    }

    async fn push(&self, event: Bytes) -> bool {
        self.body.send(Ok(event)).await.is_ok()
    }

    fn chunk(&self, choices: Value) -> Value {
        let mut chunk = json!({
            "id": self.record.id,
            "object": self.prepared.endpoint.object(true),
            "created": self.created,
            "model": self.prepared.model.info().name,
            "choices": choices,
        });
        if self.prepared.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    /// A chunk with one choice: `chat` as a chat completion's `delta`, or
    /// `text` as a completion's.
    fn choice(
        &self,
        chat: Value,
        text: &str,
        logprobs: Value,
        finish_reason: Option<&str>,
    ) -> Value {
        let mut choice = json!({"index": 0, "logprobs": logprobs, "finish_reason": finish_reason});
        match self.prepared.endpoint {
            Endpoint::Chat => choice["delta"] = chat,
            Endpoint::Completions => choice["text"] = Value::from(text),
        }
        self.chunk(json!([choice]))
    }

    /// The chunks carrying `delta`'s text, one per non-empty piece; the
    /// first carries the logprobs of the delta's tokens, when asked.
    fn pieces(&mut self, delta: &Delta) -> Vec<Value> {
        let mut logprobs = self.logprobs(delta);
        // (a chat delta, a completion's text)
        let mut pieces: Vec<(Value, String)> = match self.prepared.endpoint {
            Endpoint::Chat => [
                (!delta.reasoning.is_empty()).then(
                    || json!({"reasoning_content": delta.reasoning, "reasoning": delta.reasoning}),
                ),
                (!delta.content.is_empty()).then(|| json!({"content": delta.content})),
            ]
            .into_iter()
            .flatten()
            .map(|chat| (chat, String::new()))
            .collect(),
            Endpoint::Completions => {
                let text = format!("{}{}", delta.reasoning, delta.content);
                if text.is_empty() {
                    Vec::new()
                } else {
                    vec![(Value::Null, text)]
                }
            }
        };
        // The answer's calls, at its end: one chunk with all of them.
        if !delta.tool_calls.is_empty() {
            pieces.push((
                json!({"tool_calls": calls_json(&delta.tool_calls, true)}),
                String::new(),
            ));
        }
        // Tokens whose text was all held back or cut (a stop string) at
        // the end: their logprobs still go out, with empty text.
        if pieces.is_empty() && !logprobs.is_null() {
            pieces.push((json!({"content": ""}), String::new()));
        }
        pieces
            .into_iter()
            .map(|(chat, text)| self.choice(chat, &text, logprobs.take(), None))
            .collect()
    }

    /// The `logprobs` of `delta`'s tokens (there are some only when asked);
    /// null when none.
    fn logprobs(&mut self, delta: &Delta) -> Value {
        if delta.logprobs.is_empty() {
            return Value::Null;
        }
        let logprobs = Logprobs::new(
            self.prepared.endpoint,
            self.prepared.model.tokenizer(),
            &delta.logprobs,
            self.offset,
        );
        if self.prepared.endpoint == Endpoint::Completions {
            self.offset = logprobs.end_offset();
        }
        serde_json::to_value(logprobs).expect("logprobs serialize")
    }
}

/// A streamed request: forwards each delta as an event, then the finish
/// chunk, the `completion` record, the usage chunk and `[DONE]`. A client
/// that leaves cancels the generation, which is still recorded.
pub(super) async fn drive_stream(
    state: Arc<AppState>,
    record: Record,
    mut prepared: Prepared,
    admitted: OwnedSemaphorePermit,
    body: mpsc::Sender<Result<Bytes, Infallible>>,
) {
    let (mut deltas, task) = start(&mut prepared, admitted);
    let mut chunks = Chunks {
        record: &record,
        prepared: &prepared,
        created: unix_time_nanos() / 1_000_000_000,
        body,
        digest: Sha256::new(),
        offset: 0,
    };
    let first = chunks.choice(
        json!({"role": "assistant", "content": ""}),
        "",
        Value::Null,
        None,
    );
    let mut connected = chunks.send(&first).await;
    while connected {
        // A client that leaves is noticed at once, also while the request
        // still waits for a slot.
        let delta = tokio::select! {
            delta = deltas.recv() => delta,
            () = chunks.body.closed() => {
                connected = false;
                break;
            }
        };
        let Some(delta) = delta else {
            break;
        };
        for piece in chunks.pieces(&delta) {
            if !chunks.send(&piece).await {
                connected = false;
                break;
            }
        }
    }
    // Dropping the receiver cancels a generation still running.
    drop(deltas);
    let finished = finish(task).await;
    let mut entry = record.entry(&state, Event::Completion, StatusCode::OK);
    let finished = match finished {
        Ok(finished) => finished,
        Err(e) => {
            let error = OpenAiError::from(e);
            entry.status = Some(error.status.as_u16());
            let _ = chunks.send(&error.body()).await;
            let _ = record_entry(&state, entry).await;
            return;
        }
    };
    if connected && finished.reason != FinishReason::Cancelled {
        let done = chunks.choice(json!({}), "", Value::Null, Some(finished.reason.as_str()));
        connected = chunks.send(&done).await;
    }
    records::finished(&mut entry, &finished, record.started);
    // The usage chunk is known now: it goes out after the record, which
    // covers it, so the digest is of every byte before `[DONE]`.
    let usage_chunk = (connected && prepared.include_usage).then(|| {
        let mut chunk = chunks.chunk(json!([]));
        chunk["usage"] = usage(&prepared, &finished);
        chunks.encode(&chunk)
    });
    entry.response_sha256 = Some(deepseek_integrity::digest::hex(
        &chunks.digest.clone().finalize(),
    ));
    if !connected {
        entry.details.insert(
            "finish_reason".to_owned(),
            FinishReason::Cancelled.as_str().to_owned(),
        );
    }
    if let Err(error) = record_entry(&state, entry).await {
        // Unrecorded: the stream ends with the error, never with [DONE].
        let _ = chunks.send(&error.body()).await;
        return;
    }
    if !connected {
        return;
    }
    if let Some(chunk) = usage_chunk
        && !chunks.push(chunk).await
    {
        return;
    }
    let _ = chunks.push(Bytes::from_static(b"data: [DONE]\n\n")).await;
}
