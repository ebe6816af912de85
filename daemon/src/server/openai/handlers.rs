//! The endpoints: the model list, and the two generation endpoints, each
//! request recorded before its answer (or first event) leaves.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use deepseek_audit::entry::Event;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::error::{OpenAiError, record_entry};
use super::prepare::{find, prepare};
use super::record::Record;
use super::stream::drive_stream;
use super::whole::drive_whole;
use super::wire::Endpoint;
use crate::audit::records;
use crate::engine::{CausalLm, InferError};
use crate::server::http::{AppState, audit_peer, read_body, sha256_hex};
use crate::server::peer::Peer;

/// `GET /v1/models`: the causal LMs.
pub(crate) async fn list_models(State(state): State<Arc<AppState>>) -> Response {
    let data: Vec<Value> = state
        .engine
        .causal_lms()
        .map(|lm| model_object(&state, lm))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// `GET /v1/models/{id}`.
pub(crate) async fn get_model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, OpenAiError> {
    let lm = find(&state, &id)?;
    Ok(axum::Json(model_object(&state, lm)).into_response())
}

/// A model as `/v1/models` lists it; a model from the store also names the
/// version served.
fn model_object(state: &AppState, lm: &CausalLm) -> Value {
    let info = lm.info();
    let mut object = json!({
        "id": info.name,
        "object": "model",
        "created": state.started_unix,
        "owned_by": "deepseekd",
        "context_length": info.context_length,
        "max_prompt_bytes": info.max_prompt_bytes,
        "device": info.device.to_string(),
        "cpu_fallback_reason": info.cpu_fallback_reason,
        "kv_cache": info.kv_cache,
        "slots": info.slots,
        "queue_depth": info.queue_depth,
        "batching": info.batching_off.is_none(),
        "batching_off_reason": info.batching_off,
        "kv_cache_tokens": info.kv_cache_tokens,
        "admitted": lm.admitted(),
        "batch": lm.batch_stats(),
        "graph": info.graph,
        "layers": info.layers,
        "kv_heads": info.kv_heads,
        "head_dim": info.head_dim,
    });
    if let Some(version) = &info.version {
        object["version"] = json!(version);
    }
    object
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    state: State<Arc<AppState>>,
    peer: axum::Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(state, peer, headers, body, Endpoint::Chat).await
}

/// `POST /v1/completions`.
pub(crate) async fn completions(
    state: State<Arc<AppState>>,
    peer: axum::Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(state, peer, headers, body, Endpoint::Completions).await
}

async fn handle(
    State(state): State<Arc<AppState>>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    body: Body,
    endpoint: Endpoint,
) -> Response {
    let mut record = Record::new(audit_peer(&peer), endpoint);
    let bytes = match read_body(body, &headers, state.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(e) => return refuse(&state, &record, e.into()).await,
    };
    record.request_sha256 = Some(sha256_hex(&bytes));
    let prepared = prepare(&state, endpoint, &bytes, &mut record.model).await;
    drop(bytes);
    let (prepared, admitted) = match prepared {
        Ok(prepared) => prepared,
        Err(error) if error.code == Some("model_not_found") => return error.into_response(),
        Err(error) => return refuse(&state, &record, error).await,
    };
    if prepared.stream {
        let mut entry = record.entry(&state, Event::Request, StatusCode::OK);
        Record::add_prepared(&mut entry, &prepared);
        if let Err(error) = record_entry(&state, entry).await {
            return error.into_response();
        }
        let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, Infallible>>(16);
        tokio::spawn(drive_stream(
            Arc::clone(&state),
            record,
            prepared,
            admitted,
            body_tx,
        ));
        let stream = futures_util::stream::unfold(body_rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let mut response = Response::new(Body::from_stream(stream));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return response;
    }
    let (answer_tx, answer_rx) = oneshot::channel();
    tokio::spawn(drive_whole(
        Arc::clone(&state),
        record,
        prepared,
        admitted,
        answer_tx,
    ));
    answer_rx.await.unwrap_or_else(|_| {
        OpenAiError::from(InferError::Runtime(
            "the generation task ended without an answer".to_owned(),
        ))
        .into_response()
    })
}

/// Records a refused request (its status, no text) and answers the error.
async fn refuse(state: &AppState, record: &Record, error: OpenAiError) -> Response {
    let mut entry = record.entry(state, Event::Request, error.status);
    records::refusal(&mut entry, error.code, error.param.as_deref());
    match record_entry(state, entry).await {
        Ok(_) => error.into_response(),
        Err(unrecorded) => unrecorded.into_response(),
    }
}
