//! The HTTP API: KServe v2 health, metadata and inference endpoints, the
//! peer allow-list in front of them, and JSON errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, Limited};
use serde_json::json;
use tokio::sync::oneshot;

use super::kserve::{self, HEADER_LENGTH};
use super::openai::{self, OpenAiError};
use super::peer::Peer;
use crate::audit::AuditClient;
use crate::engine::{Engine, InferError, Model};
use crate::sandbox::Lockdown;
use deepseek_audit::entry::{Entry, Event, Peer as AuditPeer};

/// What every request handler shares.
#[derive(Debug)]
pub struct AppState {
    /// Every model, loaded: the daemon serves only once all are.
    pub engine: Engine,
    pub max_body_bytes: usize,
    /// Largest KServe response body (`server.max_response_bytes`).
    pub max_response_bytes: usize,
    /// Set on SIGTERM: readiness turns false while in-flight requests finish.
    pub draining: AtomicBool,
    /// What the lockdown did, and the kernel's view of the process.
    pub lockdown: Lockdown,
    /// Where every inference is recorded before it is answered.
    pub audit: AuditClient,
    /// Refuse (503) what the auditor did not acknowledge.
    pub audit_required: bool,
    /// Record request and response bodies too (`audit.record_content`).
    pub record_content: bool,
    /// When serving started (Unix seconds): `created` of `/v1/models`.
    pub started_unix: u64,
}

/// An error answered as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// What the status alone does not say, for the audit record
    /// (`details.error_code`): not sent to the client.
    code: Option<&'static str>,
}

impl ApiError {
    pub(super) fn into_parts(self) -> (StatusCode, String) {
        (self.status, self.message)
    }

    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            code: None,
        }
    }

    fn with_code(self, code: &'static str) -> Self {
        Self {
            code: Some(code),
            ..self
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "error": self.message }))).into_response()
    }
}

/// Builds the router with the allow-list and access log in front.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/health/hardening", get(hardening))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v1/models", get(openai::list_models))
        .route("/v1/models/{id}", get(openai::get_model))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(guard))
        .with_state(state)
}

/// Logs every request without its content: method, path, status, peer and
/// latency. Peers outside the allow-list never get here: they are refused
/// at `accept` (`server::refusal`).
async fn guard(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let Some(peer) = request.extensions().get::<Peer>().cloned() else {
        tracing::error!(%method, %path, "request without peer credentials refused");
        return shaped(
            &path,
            ApiError::new(StatusCode::FORBIDDEN, "peer credentials unavailable"),
        );
    };
    let response = next.run(request).await;
    tracing::info!(
        uid = peer.uid,
        pid = peer.pid,
        %method,
        %path,
        status = response.status().as_u16(),
        elapsed_us = started.elapsed().as_micros(),
        "request"
    );
    response
}

async fn live() -> Response {
    axum::Json(json!({ "live": true })).into_response()
}

impl AppState {
    /// Why the auditor cannot record right now, if so: systemd's watchdog
    /// pings stop on this, so a daemon that stays so is restarted (a drain
    /// is slow, not broken).
    pub fn broken(&self) -> Option<&'static str> {
        if !self.audit_required {
            None
        } else if !self.audit.is_connected() {
            Some(
                "the connection to the auditor is lost: every request is refused (503) until it is back (reconnecting every second)",
            )
        } else if self.audit.is_stalled() {
            Some(
                "the auditor does not acknowledge records within audit.timeout_ms: requests are refused (503) until it catches up",
            )
        } else {
            None
        }
    }

    /// Why the daemon cannot serve right now, if it cannot: readiness
    /// follows this.
    pub fn unhealthy(&self) -> Option<&'static str> {
        if self.draining.load(Ordering::Relaxed) {
            Some("draining: finishing in-flight requests before exiting")
        } else {
            self.broken()
        }
    }
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let ready = state.unhealthy().is_none();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(json!({ "ready": ready }))).into_response()
}

async fn server_metadata(State(state): State<Arc<AppState>>) -> Response {
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

/// `GET /v2/health/hardening`: what the lockdown did, and what the kernel
/// reports about the process right now.
async fn hardening(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let kernel = state.lockdown.status().read().map_err(|e| {
        tracing::error!(error = %e, "cannot read /proc/self/status");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot read the process status",
        )
    })?;
    Ok(axum::Json(json!({
        "lockdown": state.lockdown.report(),
        "kernel": kernel,
    }))
    .into_response())
}

async fn model_metadata(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let info = find_model(&state, &name)?.info();
    Ok(axum::Json(json!({
        "name": info.name,
        "versions": [],
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

async fn model_ready(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    find_model(&state, &name)?;
    Ok(axum::Json(json!({ "name": name, "ready": true })).into_response())
}

async fn infer(
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

/// A client that left before its answer: nginx's 499 "client closed
/// request", recorded, never sent.
fn cancelled() -> ApiError {
    ApiError::new(
        StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        "the client closed the connection",
    )
    .with_code("cancelled")
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
            let digest = hex_sha256(&encoded.body);
            let content = state.record_content.then(|| content_of(&encoded.body));
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
    let mut entry = Entry::event(Event::Request);
    entry.peer = Some(audit_peer(&peer));
    entry.model = Some(name.clone());
    entry.model_sha256 = state.engine.digests().get(&name).cloned();
    entry.request_id = captured.id;
    entry.request_sha256 = captured.sha256;
    entry.response_sha256 = response_sha256;
    entry.status = Some(status.as_u16());
    entry.latency_us = Some(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
    if let Some(code) = error_code {
        entry
            .details
            .insert("error_code".to_owned(), code.to_owned());
    }
    if state.record_content {
        let mut content = std::collections::BTreeMap::new();
        if let Some(request) = captured.content {
            content.insert("request".to_owned(), request);
        }
        if let Some(response) = response_content {
            content.insert("response".to_owned(), response);
        }
        entry.content = Some(content);
    }
    match record_or_refuse(&state, entry).await {
        Ok(recorded) => recorded.deliver(&state, answer, response).await,
        Err(refused) => {
            let _ = answer.send(refused.into_response());
        }
    }
}

/// A request's record, written: what to add should its answer never reach
/// the client.
#[derive(Debug)]
pub(super) struct Recorded {
    /// `undelivered` (499) naming the record, when it is in the log.
    correction: Option<Entry>,
}

impl Recorded {
    /// Hands `response` over to the client's connection. A client that left
    /// while its record was written gets an `undelivered` entry after it,
    /// so the log does not claim an answer that nobody received.
    pub(super) async fn deliver(
        self,
        state: &AppState,
        answer: oneshot::Sender<Response>,
        response: Response,
    ) {
        if answer.send(response).is_err()
            && let Some(correction) = self.correction
            && let Err(e) = state.audit.record(correction).await
        {
            tracing::error!(error = %e, "an undelivered answer could not be recorded as such");
        }
    }
}

/// Records a request's entry. When the auditor did not acknowledge it and
/// `audit.required` holds, the answer must not leave: `Err` is the 503 to
/// send instead. Without `audit.required` the request is answered
/// unaudited, loudly.
pub(super) async fn record_or_refuse(state: &AppState, entry: Entry) -> Result<Recorded, ApiError> {
    let model = entry.model.clone().unwrap_or_default();
    // 499, nginx's "client closed request", as for a client that leaves
    // before its answer is ready.
    let mut correction = crate::audit::undelivered(&entry, 499);
    match state.audit.record(entry).await {
        Ok(seq) => {
            correction
                .details
                .insert("refers_to_seq".to_owned(), seq.to_string());
            Ok(Recorded {
                correction: state.audit.is_enabled().then_some(correction),
            })
        }
        Err(e) if state.audit_required => {
            tracing::error!(model = %model, error = %e, "request refused: the audit log did not record it");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the audit log did not record this request ({e}); no result is returned"),
            ))
        }
        Err(e) => {
            tracing::error!(model = %model, error = %e, "request answered unaudited (audit.required = false)");
            Ok(Recorded { correction: None })
        }
    }
}

/// A body as recorded content: text, cut at
/// [`deepseek_audit::entry::CONTENT_LIMIT`] bytes with a note (the digests
/// always cover the whole body). JSON escaping makes a byte at most 6 bytes
/// (`\u0001`), so a request and a response stay under the auditor's 1 MiB
/// default frame.
fn content_of(bytes: &[u8]) -> String {
    deepseek_audit::entry::cut_bytes(bytes, deepseek_audit::entry::CONTENT_LIMIT)
}

/// The peer as the audit log records it (the executable is unknown: the
/// locked-down daemon cannot read /proc).
pub(super) fn audit_peer(peer: &Peer) -> AuditPeer {
    AuditPeer {
        uid: peer.uid,
        gid: peer.gid,
        pid: peer.pid,
        exe: None,
    }
}

pub(super) fn hex_sha256(bytes: &[u8]) -> String {
    deepseek_integrity::digest::hex(&<sha2::Sha256 as sha2::Digest>::digest(bytes))
}

fn encoded_response(encoded: kserve::EncodedResponse) -> Response {
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
) -> Result<kserve::EncodedResponse, ApiError> {
    let model = find_model(state, name)?;
    let bytes = read_body(body, headers, state.max_body_bytes).await?;
    captured.sha256 = Some(hex_sha256(&bytes));
    if state.record_content {
        captured.content = Some(content_of(&bytes));
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
    let request = kserve::decode_request(&bytes, json_length)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
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
        .map_err(|e| match e {
            InferError::BadRequest(message) => ApiError::new(StatusCode::BAD_REQUEST, message),
            InferError::QueueFull(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            InferError::Runtime(detail) => {
                tracing::error!(model = %name, error = %detail, "inference failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "inference failed; the daemon's log has the details",
                )
            }
        })?;
    kserve::encode_response(
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

/// How long a client may take to send its request body (408 after that), so
/// a stalled client cannot hold a connection slot for ever.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads the whole body, refusing (413) anything over `limit` bytes, early
/// when `Content-Length` already says so.
pub(super) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds the limit of {limit} bytes (server.max_body_bytes)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    let read = tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, limit).collect());
    let Ok(read) = read.await else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received within {} s",
                BODY_READ_TIMEOUT.as_secs()
            ),
        ));
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body: {e}"),
        )),
    }
}

/// An error in the shape its API uses: OpenAI's under `/v1/`, KServe's
/// elsewhere.
fn shaped(path: &str, error: ApiError) -> Response {
    if path.starts_with("/v1/") {
        OpenAiError::from(error).into_response()
    } else {
        error.into_response()
    }
}

async fn not_found(method: Method, uri: Uri) -> Response {
    shaped(
        uri.path(),
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no endpoint {method} {}", uri.path()),
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    shaped(
        uri.path(),
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} does not accept {method}", uri.path()),
        ),
    )
}
