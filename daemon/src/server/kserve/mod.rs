//! KServe v2 (the Open Inference Protocol) for tensor models: server and
//! model metadata, readiness and inference, with the binary tensor data
//! extension. [`wire`] is the request and response bodies, [`codec`] the
//! tensor elements in them.
//!
//! Each inference runs in a task of its own, recorded in the audit log
//! before its answer leaves; a client that leaves stops the run and is
//! recorded as 499.

mod codec;
#[doc(hidden)]
pub(crate) mod fuzz;
pub(crate) mod wire;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use deepseek_audit::entry::Event;
use serde_json::json;
use tokio::sync::oneshot;

use super::http::{
    ApiError, AppState, audit_peer, cancelled, read_body, record_or_refuse, sha256_hex,
};
use super::peer::Peer;
use crate::audit::records;
use crate::engine::{InferError, Model};
use wire::HEADER_LENGTH;

pub(super) async fn server_metadata(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(json!({
        "name": "deepseekd",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
        "onnxruntime_version": state.engine.runtime_version(),
    }))
    .into_response()
}

/// Finds a model, or answers 404 naming the ones there are.
fn find_model<'a>(state: &'a AppState, name: &str) -> Result<&'a Arc<Model>, ApiError> {
    if state.engine.causal_lm(name).is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "model {name:?} is a causal LM, served by the OpenAI API: use /v1/chat/completions or /v1/completions"
            ),
        ));
    }
    state.engine.model(name).ok_or_else(|| {
        let names: Vec<&str> = state.engine.names().collect();
        let served = if names.is_empty() {
            "no tensor models (its causal LMs are under /v1)".to_owned()
        } else {
            names.join(", ")
        };
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("unknown model {name:?}; this daemon serves: {served}"),
        )
    })
}

/// The most bytes of a requested version echoed in a 404 (a version is at
/// most 128 bytes).
const MAX_ECHOED_VERSION: usize = 128;

/// Finds a model for a versioned route (`/v2/models/{name}/versions/{version}`):
/// only the version it serves, a store model's, is there; any other is 404,
/// answered before a body is read and without a record (nothing ran).
fn find_version<'a>(
    state: &'a AppState,
    name: &str,
    version: &str,
) -> Result<&'a Arc<Model>, ApiError> {
    let model = find_model(state, name)?;
    match &model.info().version {
        Some(served) if served == version => Ok(model),
        Some(served) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "model {name:?} has no version {:?} here: this daemon serves version {served:?}",
                // A client's path segment: echoed, but not at any length.
                deepseek_audit::entry::cut(version, MAX_ECHOED_VERSION),
            ),
        )),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "model {name:?} has no versions (it is not served from the model store): use /v2/models/{name}"
            ),
        )),
    }
}

pub(super) async fn model_metadata(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let info = find_model(&state, &name)?.info();
    Ok(axum::Json(json!({
        "name": info.name,
        "versions": info.version.as_slice(),
        "platform": "onnxruntime_onnx",
        "inputs": info.inputs,
        "outputs": info.outputs,
        "parameters": {
            "path": info.path,
            "device": info.device.to_string(),
            "requested_device": info.requested_device.to_string(),
            "cpu_fallback": info.cpu_fallback_reason.is_some(),
            "cpu_fallback_reason": info.cpu_fallback_reason,
            "sessions": info.sessions,
            "queue_depth": info.queue_depth,
            "infer_timeout_ms": u64::try_from(info.infer_timeout.as_millis()).unwrap_or(u64::MAX),
        },
    }))
    .into_response())
}

pub(super) async fn model_ready(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    find_model(&state, &name)?;
    Ok(axum::Json(json!({ "name": name, "ready": true })).into_response())
}

/// `GET /v2/models/{name}/versions/{version}`: [`model_metadata`], for the
/// version served only.
pub(super) async fn version_metadata(
    state: State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    find_version(&state, &name, &version)?;
    model_metadata(state, Path(name)).await
}

/// `GET /v2/models/{name}/versions/{version}/ready`: [`model_ready`], for
/// the version served only.
pub(super) async fn version_ready(
    state: State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    find_version(&state, &name, &version)?;
    model_ready(state, Path(name)).await
}

/// `POST /v2/models/{name}/versions/{version}/infer`: [`infer`], with its
/// limits and its record, for the version served only.
pub(super) async fn version_infer(
    state: State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
    peer: axum::Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match find_version(&state, &name, &version) {
        Ok(_) => infer(state, Path(name), peer, headers, body).await,
        Err(error) => error.into_response(),
    }
}

pub(super) async fn infer(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (answer_tx, answer_rx) = oneshot::channel();
    // The inference runs in a task of its own: a client that disconnects
    // drops this handler, not the task, which stops the run and records the
    // request (499) all the same.
    tokio::spawn(drive_inference(state, name, peer, headers, body, answer_tx));
    answer_rx.await.unwrap_or_else(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the inference task ended without an answer",
        )
        .into_response()
    })
}

/// Runs, records and answers one inference; stops early, and records 499,
/// when `answer` is closed (the client left).
async fn drive_inference(
    state: Arc<AppState>,
    name: String,
    peer: Peer,
    headers: HeaderMap,
    body: Body,
    mut answer: oneshot::Sender<Response>,
) {
    let started = Instant::now();
    let mut captured = Captured::default();
    let outcome = tokio::select! {
        outcome = run_inference(&state, &name, &headers, body, &mut captured) => outcome,
        // Dropping the inference asks ONNX Runtime to stop its run.
        () = answer.closed() => Err(cancelled()),
    };
    // A client that left as the run ended gets nothing either.
    let outcome = if answer.is_closed() {
        Err(cancelled())
    } else {
        outcome
    };
    // One buffer: the digest (and the recorded content, cut) are taken from
    // the body the response then owns.
    let (status, error_code, response_sha256, response_content, response) = match outcome {
        Ok(encoded) => {
            let digest = sha256_hex(&encoded.body);
            let content = state
                .record_content
                .then(|| records::content(&encoded.body));
            (
                StatusCode::OK,
                None,
                Some(digest),
                content,
                encoded_response(encoded),
            )
        }
        Err(error) => (error.status, error.code, None, None, error.into_response()),
    };
    if state.engine.model(&name).is_none() && state.engine.causal_lm(&name).is_none() {
        // Unknown models are answered without a record: nothing ran.
        let _ = answer.send(response);
        return;
    }
    let record = records::Request {
        peer: audit_peer(&peer),
        model: Some(name.clone()),
        model_sha256: state.engine.digests().get(&name).cloned(),
        request_id: captured.id,
        request_sha256: captured.sha256,
        started,
    };
    let mut entry = record.entry(Event::Request, status.as_u16());
    entry.response_sha256 = response_sha256;
    records::refusal(&mut entry, error_code, None);
    if state.record_content {
        records::add_content(&mut entry, captured.content, response_content);
    }
    match record_or_refuse(&state, entry).await {
        Ok(recorded) => recorded.deliver(&state, answer, response).await,
        Err(refused) => {
            let _ = answer.send(refused.into_response());
        }
    }
}

fn encoded_response(encoded: wire::EncodedResponse) -> Response {
    let mut response = Response::new(Body::from(encoded.body));
    let response_headers = response.headers_mut();
    match encoded.json_length {
        Some(length) => {
            response_headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            response_headers.insert(HEADER_LENGTH, HeaderValue::from(length));
        }
        None => {
            response_headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    response
}

/// What an inference request's audit record needs from its body.
#[derive(Debug, Default)]
struct Captured {
    sha256: Option<String>,
    id: Option<String>,
    /// The body, with `audit.record_content` only.
    content: Option<String>,
}

/// Decodes, runs and encodes one inference, noting the request's digest
/// and id for its audit record.
async fn run_inference(
    state: &AppState,
    name: &str,
    headers: &HeaderMap,
    body: Body,
    captured: &mut Captured,
) -> Result<wire::EncodedResponse, ApiError> {
    let model = find_model(state, name)?;
    let bytes = read_body(body, headers, state.max_body_bytes).await?;
    captured.sha256 = Some(sha256_hex(&bytes));
    if state.record_content {
        captured.content = Some(records::content(&bytes));
    }
    let json_length = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("{HEADER_LENGTH} must be a non-negative integer, got {value:?}"),
                    )
                })?,
        ),
    };
    let request = wire::decode_request(&bytes, json_length)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    drop(bytes);
    captured.id.clone_from(&request.id);
    let (names, binary): (Vec<String>, Vec<bool>) = if request.outputs.is_empty() {
        let info = model.info();
        (
            info.outputs.iter().map(|o| o.name.clone()).collect(),
            vec![request.binary_by_default; info.outputs.len()],
        )
    } else {
        request.outputs.into_iter().unzip()
    };
    let limit = model.info().infer_timeout;
    // Dropping the inference at the deadline asks ONNX Runtime to stop it.
    let outputs = tokio::time::timeout(limit, model.infer(request.inputs, names))
        .await
        .map_err(|_| {
            tracing::warn!(model = %name, limit_ms = limit.as_millis(), "inference stopped at its deadline");
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "inference did not finish within {} ms (infer_timeout_ms of model {name:?}); it was stopped",
                    limit.as_millis()
                ),
            )
            .with_code("timed_out")
        })?
        .map_err(|e| infer_error(name, e))?;
    wire::encode_response(
        name,
        request.id.as_deref(),
        &outputs,
        &binary,
        state.max_response_bytes,
    )
    .map_err(|e| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()).with_code("response_too_large")
    })
}

/// KServe's status for each way an inference fails: the protocol's one
/// mapping of engine errors.
fn infer_error(model: &str, error: InferError) -> ApiError {
    match error {
        InferError::BadRequest(message) => ApiError::new(StatusCode::BAD_REQUEST, message),
        InferError::QueueFull(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
                .with_code("queue_full")
        }
        InferError::Runtime(detail) => {
            tracing::error!(model = %model, error = %detail, "inference failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "inference failed; the daemon's log has the details",
            )
        }
    }
}
