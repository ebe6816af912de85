//! The router: every endpoint of both APIs, the health endpoints, the
//! access log in front, and errors for paths no API has.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::http::{ApiError, AppState};
use super::kserve;
use super::metrics;
use super::openai::{self, OpenAiError};
use super::peer::Peer;

/// Builds the router with the allow-list and access log in front.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v2", get(kserve::server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/health/hardening", get(hardening))
        .route("/v2/models/{name}", get(kserve::model_metadata))
        .route("/v2/models/{name}/ready", get(kserve::model_ready))
        .route("/v2/models/{name}/infer", post(kserve::infer))
        .route("/v1/models", get(openai::list_models))
        .route("/v1/models/{id}", get(openai::get_model))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/metrics", get(metrics::metrics))
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

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let ready = state.unhealthy().is_none();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(json!({ "ready": ready }))).into_response()
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
