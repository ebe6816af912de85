//! `GET /metrics`: Prometheus' text exposition of the daemon's counters
//! ([`crate::metrics`]) and, read now, the state of the engine and of the
//! connection to the auditor. It is on the API socket and admitted like
//! any request (the allow-list at `accept`): it carries no request content
//! and no uid. docs/guide/metrics.md lists every family.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use deepseek_audit::metrics::{CONTENT_TYPE, Exposition, Kind};

use super::http::AppState;
use crate::engine::llm::batch::BatchSnapshot;

/// A gauge of the batch scheduler: name, help, and its value in a snapshot.
type BatchGauge = (&'static str, &'static str, fn(&BatchSnapshot) -> usize);

/// One gauge family with a sample per model.
fn per_model(out: &mut Exposition, name: &str, help: &str, samples: &[(&str, usize)]) {
    out.family(name, Kind::Gauge, help);
    for (model, value) in samples {
        out.sample(name, &[("model", model)], *value as f64);
    }
}

pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut out = Exposition::new();
    out.family(
        "deepseekd_build_info",
        Kind::Gauge,
        "The daemon's version and ONNX Runtime's, as labels; always 1.",
    )
    .sample(
        "deepseekd_build_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("onnxruntime", state.engine.runtime_version()),
        ],
        1.0,
    );
    out.single(
        "deepseekd_start_time_seconds",
        Kind::Gauge,
        "When the daemon started serving, in Unix seconds.",
        state.started_unix as f64,
    );
    out.single(
        "deepseekd_ready",
        Kind::Gauge,
        "1 while the daemon serves (as /v2/health/ready), 0 while it drains or cannot record.",
        f64::from(u8::from(state.unhealthy().is_none())),
    );
    out.single(
        "deepseekd_audit_connected",
        Kind::Gauge,
        "1 while the connection to the auditor is up (0 also when auditing is off).",
        f64::from(u8::from(state.audit.is_connected())),
    );
    state.metrics.write(&mut out);

    let models: Vec<_> = state.engine.models().collect();
    let lms: Vec<_> = state.engine.causal_lms().collect();
    let admitted: Vec<(&str, usize)> = models
        .iter()
        .map(|m| (m.info().name.as_str(), m.admitted()))
        .chain(
            lms.iter()
                .map(|lm| (lm.info().name.as_str(), lm.admitted())),
        )
        .collect();
    per_model(
        &mut out,
        "deepseekd_admitted_requests",
        "Requests admitted to a model now: running, queued, or being prepared and recorded.",
        &admitted,
    );
    let limit: Vec<(&str, usize)> = models
        .iter()
        .map(|m| {
            (
                m.info().name.as_str(),
                m.info().sessions + m.info().queue_depth,
            )
        })
        .chain(lms.iter().map(|lm| {
            let info = lm.info();
            (info.name.as_str(), info.slots + info.queue_depth)
        }))
        .collect();
    per_model(
        &mut out,
        "deepseekd_admission_limit",
        "Requests a model admits at once (sessions + queue_depth); more are refused with 503.",
        &limit,
    );
    let batched: Vec<_> = lms
        .iter()
        .filter_map(|lm| Some((lm.info(), lm.batch_stats()?)))
        .collect();
    let gauges: [BatchGauge; 5] = [
        (
            "deepseekd_sequences_running",
            "Generations in the batch or having their prompt prefilled (continuous batching).",
            |s| s.running,
        ),
        (
            "deepseekd_sequences_queued",
            "Admitted generations waiting for a row or for room in the KV cache.",
            |s| s.queued,
        ),
        (
            "deepseekd_batch_size",
            "Rows of the last decode step (0 once the batch is empty).",
            |s| s.last_batch,
        ),
        (
            "deepseekd_kv_cache_used_tokens",
            "KV cache positions held now, padding included.",
            |s| s.cache_positions,
        ),
        (
            "deepseekd_kv_cache_reserved_tokens",
            "KV cache positions the running generations may grow to.",
            |s| s.cache_reserved,
        ),
    ];
    for (name, help, value) in gauges {
        let samples: Vec<(&str, usize)> = batched
            .iter()
            .map(|(info, stats)| (info.name.as_str(), value(stats)))
            .collect();
        per_model(&mut out, name, help, &samples);
    }
    let capacity: Vec<(&str, usize)> = lms
        .iter()
        .filter_map(|lm| Some((lm.info().name.as_str(), lm.info().kv_cache_tokens?)))
        .collect();
    per_model(
        &mut out,
        "deepseekd_kv_cache_capacity_tokens",
        "The KV cache pool (kv_cache_tokens).",
        &capacity,
    );
    out.family(
        "deepseekd_decode_steps_total",
        Kind::Counter,
        "Batched decode steps run since the start.",
    );
    for (info, stats) in &batched {
        out.sample(
            "deepseekd_decode_steps_total",
            &[("model", &info.name)],
            stats.steps as f64,
        );
    }
    let mut response = out.finish().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}
