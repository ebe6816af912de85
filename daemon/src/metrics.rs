//! The daemon's counters and histograms for `GET /metrics`: requests by
//! model, protocol and status, their durations, time to first token,
//! tokens, refusals by reason and the auditor's
//! acknowledgement latency. Requests are counted from the records the
//! daemon writes, at the one place every request record passes
//! (`server::http::record_or_refuse`), so what is counted is what the
//! audit log holds. The engine's state (queues, sequences, cache) is read
//! when scraped (`server::metrics`).
//!
//! Labels are bounded: a model is one of the configured names (anything
//! else is counted under `""`), a protocol one of two, a status one of the
//! codes the daemon answers, a reason one of [`Refusal`]. No uid and no
//! request content is ever a label.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use deepseek_audit::entry::{Entry, Event};
use deepseek_audit::metrics::{Exposition, Histogram, Kind};

/// Why a request or a client was refused, as `deepseekd_refusals_total`'s
/// `reason` label says it. A model that fails its integrity check stops
/// the daemon instead: the auditor counts those
/// (`deepseek_audit_entries_total{event="model_refused"}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A peer outside the allow-list, refused at `accept`.
    Peer,
    /// The model's queue was full (503).
    QueueFull,
    /// The auditor did not acknowledge the record (503).
    AuditUnavailable,
    /// The client went over `limits.requests_per_minute` (429).
    RateLimited,
    /// The client had `limits.concurrent_per_client` requests running (429).
    TooManyConcurrent,
}

impl Refusal {
    /// Every reason, in [`Refusal::index`] order.
    const ALL: [Refusal; 5] = [
        Refusal::Peer,
        Refusal::QueueFull,
        Refusal::AuditUnavailable,
        Refusal::RateLimited,
        Refusal::TooManyConcurrent,
    ];

    /// Its counter's place: a match, so that a new reason cannot compile
    /// without one (and a test keeps [`Refusal::ALL`] in step).
    fn index(self) -> usize {
        match self {
            Refusal::Peer => 0,
            Refusal::QueueFull => 1,
            Refusal::AuditUnavailable => 2,
            Refusal::RateLimited => 3,
            Refusal::TooManyConcurrent => 4,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::Peer => "peer",
            Refusal::QueueFull => "queue_full",
            Refusal::AuditUnavailable => "audit_unavailable",
            Refusal::RateLimited => "rate_limited",
            Refusal::TooManyConcurrent => "too_many_concurrent",
        }
    }

    /// The refusal a request record's `details.error_code` names, if any.
    fn of_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == code)
    }
}

/// What a request record says, taken before the record is sent.
#[derive(Debug)]
pub(crate) struct Sample {
    event: Event,
    model: String,
    protocol: &'static str,
    /// Whether this record ends the request (a whole answer, or a stream's
    /// `completion`): its latency is then the request's duration.
    ends: bool,
    latency: Option<Duration>,
    ttft: Option<Duration>,
    tokens_in: Option<u64>,
    tokens_out: Option<u64>,
    refusal: Option<Refusal>,
}

impl Sample {
    /// The request was refused for another reason than its record says
    /// (the auditor did not take the record): not counted under the
    /// record's.
    pub(crate) fn refused_instead(&mut self) {
        self.refusal = None;
    }

    pub(crate) fn of(entry: &Entry) -> Self {
        let detail = |key: &str| entry.details.get(key).map(String::as_str);
        let streamed = detail("stream") == Some("true");
        Self {
            event: entry.event,
            model: entry.model.clone().unwrap_or_default(),
            protocol: if detail("endpoint").is_some_and(|e| e.starts_with("/v1/")) {
                "openai"
            } else {
                "kserve"
            },
            ends: entry.event == Event::Completion || !streamed,
            latency: entry.latency_us.map(Duration::from_micros),
            ttft: detail("ttft_us")
                .and_then(|t| t.parse().ok())
                .map(Duration::from_micros),
            tokens_in: entry.tokens_in,
            tokens_out: entry.tokens_out,
            refusal: detail("error_code").and_then(Refusal::of_code),
        }
    }
}

#[derive(Debug, Default)]
struct Series {
    /// (model, protocol, status) -> requests.
    requests: BTreeMap<(String, &'static str, u16), u64>,
    /// (model, protocol) -> request durations.
    durations: BTreeMap<(String, &'static str), Histogram>,
    /// model -> time to first token.
    ttft: BTreeMap<String, Histogram>,
    /// model -> (prompt tokens, completion tokens).
    tokens: BTreeMap<String, (u64, u64)>,
}

/// The daemon's counters; one per daemon, shared by every handler.
#[derive(Debug)]
pub(crate) struct Metrics {
    models: BTreeSet<String>,
    series: Mutex<Series>,
    refusals: [AtomicU64; Refusal::ALL.len()],
    audit_append: Histogram,
    /// Rate alerts by client kind: uid, group.
    rate_alerts: [AtomicU64; 2],
}

impl Metrics {
    /// Counters for a daemon serving `models` (the only model labels).
    pub(crate) fn new(models: impl IntoIterator<Item = String>) -> Self {
        Self {
            models: models.into_iter().collect(),
            series: Mutex::default(),
            refusals: Default::default(),
            audit_append: Histogram::latency(),
            rate_alerts: Default::default(),
        }
    }

    fn series(&self) -> MutexGuard<'_, Series> {
        self.series.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a request record once its fate is known: `answered` is the
    /// status the client got (the record's own, or 503 when the auditor
    /// did not take it).
    pub(crate) fn request(&self, mut sample: Sample, answered: u16) {
        if !matches!(sample.event, Event::Request | Event::Completion) {
            return;
        }
        if !self.models.contains(&sample.model) {
            sample.model.clear();
        }
        if let Some(refusal) = sample.refusal {
            self.refused(refusal);
        }
        let mut series = self.series();
        if sample.event == Event::Request {
            *series
                .requests
                .entry((sample.model.clone(), sample.protocol, answered))
                .or_default() += 1;
        }
        if sample.ends
            && let Some(latency) = sample.latency
        {
            series
                .durations
                .entry((sample.model.clone(), sample.protocol))
                .or_insert_with(Histogram::latency)
                .observe_duration(latency);
        }
        if let Some(ttft) = sample.ttft {
            series
                .ttft
                .entry(sample.model.clone())
                .or_insert_with(Histogram::latency)
                .observe_duration(ttft);
        }
        let tokens = series.tokens.entry(sample.model).or_default();
        if sample.event == Event::Request {
            tokens.0 += sample.tokens_in.unwrap_or(0);
        }
        if sample.ends {
            tokens.1 += sample.tokens_out.unwrap_or(0);
        }
    }

    pub(crate) fn refused(&self, reason: Refusal) {
        self.refusals[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// How long the auditor took to acknowledge a request's record.
    pub(crate) fn audit_acknowledged(&self, took: Duration) {
        self.audit_append.observe_duration(took);
    }

    /// A client went over a `limits` alert threshold (`uid` or `group`).
    pub(crate) fn rate_alert(&self, client_kind: &str) {
        self.rate_alerts[usize::from(client_kind == "group")].fetch_add(1, Ordering::Relaxed);
    }

    /// Writes every counter and histogram.
    pub(crate) fn write(&self, out: &mut Exposition) {
        let series = self.series();
        out.family(
            "deepseekd_requests_total",
            Kind::Counter,
            "Inference requests recorded, by model, protocol and the status answered.",
        );
        for ((model, protocol, status), count) in &series.requests {
            let status = status.to_string();
            out.sample(
                "deepseekd_requests_total",
                &[
                    ("model", model),
                    ("protocol", protocol),
                    ("status", &status),
                ],
                *count as f64,
            );
        }
        out.family(
            "deepseekd_request_duration_seconds",
            Kind::Histogram,
            "Time from a request's arrival to its last byte's record (a stream's completion).",
        );
        for ((model, protocol), histogram) in &series.durations {
            out.histogram(
                "deepseekd_request_duration_seconds",
                &[("model", model), ("protocol", protocol)],
                histogram,
            );
        }
        out.family(
            "deepseekd_time_to_first_token_seconds",
            Kind::Histogram,
            "Time from a generation request's arrival to its first completion token.",
        );
        for (model, histogram) in &series.ttft {
            out.histogram(
                "deepseekd_time_to_first_token_seconds",
                &[("model", model)],
                histogram,
            );
        }
        for (name, help, pick) in [
            (
                "deepseekd_prompt_tokens_total",
                "Prompt tokens of recorded generation requests.",
                0,
            ),
            (
                "deepseekd_completion_tokens_total",
                "Completion tokens generated for recorded requests.",
                1,
            ),
        ] {
            out.family(name, Kind::Counter, help);
            for (model, tokens) in &series.tokens {
                let count = if pick == 0 { tokens.0 } else { tokens.1 };
                out.sample(name, &[("model", model)], count as f64);
            }
        }
        drop(series);
        out.family(
            "deepseekd_refusals_total",
            Kind::Counter,
            "Requests or clients refused, by reason.",
        );
        for (reason, count) in Refusal::ALL.iter().zip(&self.refusals) {
            out.sample(
                "deepseekd_refusals_total",
                &[("reason", reason.as_str())],
                count.load(Ordering::Relaxed) as f64,
            );
        }
        out.family(
            "deepseekd_audit_append_seconds",
            Kind::Histogram,
            "Time the auditor took to acknowledge a request's record (durable on disk).",
        )
        .histogram("deepseekd_audit_append_seconds", &[], &self.audit_append);
        out.family(
            "deepseekd_rate_alerts_total",
            Kind::Counter,
            "Times a client went over a limits alert threshold (once a minute per client), by client kind.",
        );
        for (kind, count) in ["uid", "group"].iter().zip(&self.rate_alerts) {
            out.sample(
                "deepseekd_rate_alerts_total",
                &[("client", kind)],
                count.load(Ordering::Relaxed) as f64,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deepseek_audit::entry::Entry;

    fn request(model: &str, status: u16, stream: bool) -> Entry {
        let mut entry = Entry::event(Event::Request);
        entry.model = Some(model.to_owned());
        entry.status = Some(status);
        entry.latency_us = Some(2_000);
        entry.tokens_in = Some(7);
        entry.tokens_out = Some(3);
        entry
            .details
            .insert("endpoint".to_owned(), "/v1/chat/completions".to_owned());
        entry
            .details
            .insert("stream".to_owned(), stream.to_string());
        entry
    }

    #[test]
    fn every_reason_has_its_own_counter() {
        for (i, reason) in Refusal::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i, "{reason:?}");
        }
    }

    #[test]
    fn counts_requests_and_tokens_once_and_bounds_the_model_label() {
        let metrics = Metrics::new(["lm".to_owned()]);
        metrics.request(Sample::of(&request("lm", 200, false)), 200);
        metrics.request(Sample::of(&request("lm", 200, true)), 200);
        let mut completion = request("lm", 200, true);
        completion.event = Event::Completion;
        completion
            .details
            .insert("ttft_us".to_owned(), "1500".to_owned());
        metrics.request(Sample::of(&completion), 200);
        let mut refused = request("not-configured", 503, false);
        refused
            .details
            .insert("error_code".to_owned(), "queue_full".to_owned());
        metrics.request(Sample::of(&refused), 503);
        let mut out = Exposition::new();
        metrics.write(&mut out);
        let text = out.finish();
        for line in [
            "deepseekd_requests_total{model=\"lm\",protocol=\"openai\",status=\"200\"} 2",
            "deepseekd_requests_total{model=\"\",protocol=\"openai\",status=\"503\"} 1",
            "deepseekd_prompt_tokens_total{model=\"lm\"} 14",
            "deepseekd_completion_tokens_total{model=\"lm\"} 6",
            "deepseekd_request_duration_seconds_count{model=\"lm\",protocol=\"openai\"} 2",
            "deepseekd_time_to_first_token_seconds_count{model=\"lm\"} 1",
            "deepseekd_refusals_total{reason=\"queue_full\"} 1",
            "deepseekd_refusals_total{reason=\"peer\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        }
        assert!(!text.contains("not-configured"));
    }
}
