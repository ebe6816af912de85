//! A generation answered whole: the text collected, recorded, then sent.

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use deepseek_audit::entry::Event;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use super::error::{OpenAiError, record_entry};
use super::logprobs::Logprobs;
use super::prepare::Prepared;
use super::record::Record;
use super::tools::calls_json;
use super::wire::Endpoint;
use crate::audit::records;
use crate::engine::InferError;
use crate::engine::llm::generate::{Delta, FinishReason, Finished};
use crate::entropy::unix_time_nanos;
use crate::server::http::{AppState, Bounded, sha256_hex};

/// Starts the generation; its deltas arrive on the returned receiver.
pub(super) fn start(
    prepared: &mut Prepared,
    admitted: OwnedSemaphorePermit,
) -> (
    mpsc::UnboundedReceiver<Delta>,
    tokio::task::JoinHandle<Result<Finished, InferError>>,
) {
    // Unbounded, so that a client slow to read never holds up the batch
    // its request decodes in: it holds at most `max_tokens` small deltas.
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(Arc::clone(&prepared.model).generate(
        admitted,
        prepared.generate.for_run(),
        tx,
    ));
    (rx, task)
}

pub(super) async fn finish(
    task: tokio::task::JoinHandle<Result<Finished, InferError>>,
) -> Result<Finished, InferError> {
    task.await
        .map_err(|e| InferError::Runtime(format!("generation task failed: {e}")))?
}

/// A non-streamed request: collects the text, records it, then answers;
/// a client that leaves (`answer` closed) cancels the generation.
pub(super) async fn drive_whole(
    state: Arc<AppState>,
    record: Record,
    mut prepared: Prepared,
    admitted: OwnedSemaphorePermit,
    mut answer: oneshot::Sender<Response>,
) {
    let (mut deltas, task) = start(&mut prepared, admitted);
    let mut text = Delta::default();
    loop {
        tokio::select! {
            delta = deltas.recv() => match delta {
                Some(delta) => {
                    text.reasoning.push_str(&delta.reasoning);
                    text.content.push_str(&delta.content);
                    text.logprobs.extend(delta.logprobs);
                    text.tool_calls.extend(delta.tool_calls);
                }
                None => break,
            },
            () = answer.closed() => {
                drop(deltas);
                break;
            }
        }
    }
    let finished = finish(task).await;
    let refused = |error: OpenAiError| {
        let body = serde_json::to_vec(&error.body()).expect("JSON values serialize");
        (error.status, body)
    };
    let (status, body, finished) = match finished {
        // An answer over the limit still records what was generated.
        Ok(finished) => match whole_body(
            &record,
            &prepared,
            &text,
            &finished,
            state.max_response_bytes,
        ) {
            Ok(body) => (StatusCode::OK, body, Some(finished)),
            Err(error) => {
                let (status, body) = refused(error);
                (status, body, Some(finished))
            }
        },
        Err(e) => {
            let (status, body) = refused(OpenAiError::from(e));
            (status, body, None)
        }
    };
    let status = if finished
        .as_ref()
        .is_some_and(|f| f.reason == FinishReason::Cancelled)
    {
        // nginx's "client closed request": nothing was answered.
        StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
    } else {
        status
    };
    let mut entry = record.entry(&state, Event::Request, status);
    Record::add_prepared(&mut entry, &prepared);
    if let Some(finished) = &finished {
        records::finished(&mut entry, finished, record.started);
    }
    if status == StatusCode::OK {
        entry.response_sha256 = Some(sha256_hex(&body));
    }
    match record_entry(&state, entry).await {
        Ok(recorded) => {
            let mut response = (status, body).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            recorded.deliver(&state, answer, response).await;
        }
        Err(error) => {
            let _ = answer.send(error.into_response());
        }
    }
}

/// A whole answer, keys in alphabetical order as in every other body
/// (`serde_json::Value` sorts them).
#[derive(Serialize)]
struct WholeBody<'a> {
    choices: [WholeChoice<'a>; 1],
    created: u64,
    id: &'a str,
    model: &'a str,
    object: &'static str,
    usage: Value,
}

/// The logprobs are written straight from the engine's, not built as a
/// `Value` first ([`logprobs`]).
#[derive(Serialize)]
struct WholeChoice<'a> {
    finish_reason: &'static str,
    index: u32,
    logprobs: Option<Logprobs<'a>>,
    /// `{"message": ...}` (chat) or `{"text": ...}` (completions).
    #[serde(flatten)]
    answer: Value,
}

/// The answer's body, written into at most `limit` bytes
/// (`server.max_response_bytes`): logprobs make an answer far larger than
/// its text (over 1 KB a token with `top_logprobs: 20`), so a whole answer
/// is bounded like a KServe one. Over the limit it is 413, and the client
/// is told to stream instead (a stream holds no whole answer).
fn whole_body(
    record: &Record,
    prepared: &Prepared,
    text: &Delta,
    finished: &Finished,
    limit: usize,
) -> Result<Vec<u8>, OpenAiError> {
    let answer = match prepared.endpoint {
        Endpoint::Chat => {
            let split = prepared.generate.split_reasoning;
            let reasoning = split.then(|| text.reasoning.clone());
            // No content beside calls is null, as OpenAI sends it.
            let only_calls = text.content.is_empty() && !text.tool_calls.is_empty();
            let content = if (!split || finished.reasoning_closed) && !only_calls {
                Some(text.content.clone())
            } else {
                None
            };
            let mut message = json!({"role": "assistant", "content": content, "reasoning_content": reasoning, "reasoning": reasoning});
            if !text.tool_calls.is_empty() {
                message["tool_calls"] = calls_json(&text.tool_calls, false);
            }
            json!({"message": message})
        }
        Endpoint::Completions => json!({"text": format!("{}{}", text.reasoning, text.content)}),
    };
    let logprobs = prepared.generate.logprobs.map(|_| {
        Logprobs::new(
            prepared.endpoint,
            prepared.model.tokenizer(),
            &text.logprobs,
            0,
        )
    });
    let body = WholeBody {
        choices: [WholeChoice {
            finish_reason: finished.reason.as_str(),
            index: 0,
            logprobs,
            answer,
        }],
        created: unix_time_nanos() / 1_000_000_000,
        id: &record.id,
        model: &prepared.model.info().name,
        object: prepared.endpoint.object(false),
        usage: usage(prepared, finished),
    };
    let mut out = Vec::new();
    match serde_json::to_writer(Bounded::new(&mut out, limit), &body) {
        Ok(()) => Ok(out),
        Err(e) if e.is_io() => Err(OpenAiError::coded(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the answer would exceed the limit of {limit} bytes (server.max_response_bytes): \
                 ask for it with \"stream\": true, or for fewer tokens or logprobs"
            ),
            "response_too_large",
        )),
        Err(e) => unreachable!("an answer serializes (all keys are strings): {e}"),
    }
}

/// The `usage` object of a response or of the last chunk.
pub(super) fn usage(prepared: &Prepared, finished: &Finished) -> Value {
    let prompt = prepared.generate.prompt_ids.len();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": prompt + finished.completion_tokens,
    })
}
