//! The state every handler shares, and the health it reports.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::audit::AuditClient;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::sandbox::Lockdown;
use crate::server::limits::Limits;

/// What every request handler shares.
#[derive(Debug)]
pub(crate) struct AppState {
    /// Every model, loaded: the daemon serves only once all are.
    pub(crate) engine: Engine,
    pub(crate) max_body_bytes: usize,
    /// Largest KServe response body (`server.max_response_bytes`).
    pub(crate) max_response_bytes: usize,
    /// Set on SIGTERM: readiness turns false while in-flight requests finish.
    pub(crate) draining: AtomicBool,
    /// What the lockdown did, and the kernel's view of the process.
    pub(crate) lockdown: Lockdown,
    /// Where every inference is recorded before it is answered.
    pub(crate) audit: AuditClient,
    /// Refuse (503) what the auditor did not acknowledge.
    pub(crate) audit_required: bool,
    /// Record request and response bodies too (`audit.record_content`).
    pub(crate) record_content: bool,
    /// When serving started (Unix seconds): `created` of `/v1/models`.
    pub(crate) started_unix: u64,
    /// What `GET /metrics` counts.
    pub(crate) metrics: Arc<Metrics>,
    /// `[limits]`: per-client rates and concurrent requests.
    pub(crate) limits: Arc<Limits>,
}

impl AppState {
    /// Why the auditor cannot record right now, if so: systemd's watchdog
    /// pings stop on this, so a daemon that stays so is restarted (a drain
    /// is slow, not broken).
    pub(crate) fn broken(&self) -> Option<&'static str> {
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
    pub(crate) fn unhealthy(&self) -> Option<&'static str> {
        if self.draining.load(Ordering::Relaxed) {
            Some("draining: finishing in-flight requests before exiting")
        } else {
            self.broken()
        }
    }
}
