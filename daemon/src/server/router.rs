//! The router: every endpoint of both APIs, the health endpoints, the
//! access log in front, and errors for paths no API has.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use serde_json::json;

use super::http::{ApiError, AppState, audit_peer, record_or_refuse};
use super::kserve;
use super::limits::{self, Refused};
use super::metrics;
use super::openai::{self, OpenAiError};
use super::peer::Peer;
use crate::audit::records;
use crate::metrics::Refusal;

/// Builds the router with the allow-list and access log in front.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let limited = middleware::from_fn_with_state(Arc::clone(&state), limit);
    Router::new()
        .route("/v2", get(kserve::server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/health/hardening", get(hardening))
        .route("/v2/models/{name}", get(kserve::model_metadata))
        .route("/v2/models/{name}/ready", get(kserve::model_ready))
        .route(
            "/v2/models/{name}/infer",
            post(kserve::infer).layer(limited.clone()),
        )
        .route(
            "/v2/models/{name}/versions/{version}",
            get(kserve::version_metadata),
        )
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(kserve::version_ready),
        )
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(kserve::version_infer).layer(limited.clone()),
        )
        .route("/v1/models", get(openai::list_models))
        .route("/v1/models/{id}", get(openai::get_model))
        .route(
            "/v1/chat/completions",
            post(openai::chat_completions).layer(limited.clone()),
        )
        .route("/v1/completions", post(openai::completions).layer(limited))
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

/// Applies `[limits]`: alerts are recorded in the background (an alert
/// never holds a request up); a refusal is answered 429 with `Retry-After`
/// and recorded (at most once a second per client, the rest counted); an
/// admitted request holds its place until its body ends, a stream's last
/// byte included.
async fn limit(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let Some(peer) = request.extensions().get::<Peer>().cloned() else {
        return next.run(request).await;
    };
    if !state.limits.active() {
        return next.run(request).await;
    }
    let started = Instant::now();
    let (verdict, alerts) = state.limits.admit(&peer, started);
    for alert in alerts {
        tracing::warn!(
            client = %alert.client,
            requests = alert.requests,
            threshold = alert.threshold,
            "request rate over the [limits] alert threshold"
        );
        state.metrics.rate_alert(alert.client.kind());
        let entry = records::rate_alert(
            audit_peer(&peer),
            alert.client.to_string(),
            alert.requests,
            alert.threshold,
            limits::WINDOW.as_secs(),
        );
        let audit = state.audit.clone();
        tokio::spawn(async move {
            if let Err(e) = audit.record(entry).await {
                tracing::error!(error = %e, "a rate alert could not be recorded");
            }
        });
    }
    let path = request.uri().path().to_owned();
    match verdict {
        Ok(lease) => next.run(request).await.map(|body| {
            Body::new(body.map_frame(move |frame| {
                let _held = &lease;
                frame
            }))
        }),
        Err(refused) => too_many(&state, &peer, &path, started, refused).await,
    }
}

/// A request `[limits]` refused: recorded when due, answered 429.
async fn too_many(
    state: &AppState,
    peer: &Peer,
    path: &str,
    started: Instant,
    refused: Refused,
) -> Response {
    let code = refused.reason.as_str();
    let config = state.limits.config();
    let message = match refused.reason {
        Refusal::TooManyConcurrent => format!(
            "this client already has limits.concurrent_per_client = {} requests running; retry when one ends",
            config.concurrent_per_client
        ),
        _ => format!(
            "this client sent limits.requests_per_minute = {} requests in the last minute; retry after {} s",
            config.requests_per_minute, refused.retry_after_secs
        ),
    };
    match refused.record {
        Some(suppressed) => {
            let model = path
                .strip_prefix("/v2/models/")
                .and_then(|rest| rest.strip_suffix("/infer"))
                .and_then(|rest| rest.split("/versions/").next())
                .filter(|name| state.engine.digests().contains_key(*name));
            let entry = records::limited(
                records::Request {
                    peer: audit_peer(peer),
                    model: model.map(str::to_owned),
                    model_sha256: model.and_then(|m| state.engine.digests().get(m).cloned()),
                    request_id: None,
                    request_sha256: None,
                    started,
                },
                code,
                path.starts_with("/v1/").then_some(path),
                suppressed,
            );
            if let Err(unrecorded) = record_or_refuse(state, entry).await {
                return shaped(path, unrecorded);
            }
        }
        None => state.metrics.refused(refused.reason),
    }
    let mut response = if path.starts_with("/v1/") {
        OpenAiError::coded(StatusCode::TOO_MANY_REQUESTS, message, code).into_response()
    } else {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, message).into_response()
    };
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(refused.retry_after_secs),
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
