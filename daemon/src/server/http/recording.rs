//! Recording a request before it is answered: an answer leaves only once
//! the auditor acknowledged its record (or, without `audit.required`,
//! loudly unaudited); one that then never reaches its client is corrected
//! with an `undelivered` record.

use std::time::Instant;

use axum::http::StatusCode;
use axum::response::Response;
use deepseek_audit::entry::{Entry, Peer as AuditPeer};
use tokio::sync::oneshot;

use super::error::ApiError;
use super::state::AppState;
use crate::audit::records;
use crate::metrics::{Refusal, Sample};
use crate::server::peer::Peer;

/// A request's record, written: what to add should its answer never reach
/// the client.
#[derive(Debug)]
pub(crate) struct Recorded {
    /// `undelivered` (499) naming the record, when it is in the log.
    correction: Option<Entry>,
}

impl Recorded {
    /// Hands `response` over to the client's connection. A client that left
    /// while its record was written gets an `undelivered` entry after it,
    /// so the log does not claim an answer that nobody received.
    pub(crate) async fn deliver(
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
pub(crate) async fn record_or_refuse(state: &AppState, entry: Entry) -> Result<Recorded, ApiError> {
    let model = entry.model.clone().unwrap_or_default();
    // 499, nginx's "client closed request", as for a client that leaves
    // before its answer is ready.
    let mut correction = records::undelivered(&entry, 499);
    let mut sample = Sample::of(&entry);
    let status = entry.status.unwrap_or(0);
    let sent = Instant::now();
    let recorded = state.audit.record(entry).await;
    match &recorded {
        Ok(_) if state.audit.is_enabled() => state.metrics.audit_acknowledged(sent.elapsed()),
        Ok(_) => {}
        Err(_) if state.audit_required => {
            state.metrics.refused(Refusal::AuditUnavailable);
        }
        Err(_) => {}
    }
    let answered = if recorded.is_err() && state.audit_required {
        // The client gets 503 audit_unavailable instead, counted above.
        sample.refused_instead();
        StatusCode::SERVICE_UNAVAILABLE.as_u16()
    } else {
        status
    };
    state.metrics.request(sample, answered);
    match recorded {
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

/// The peer as the audit log records it (the executable is unknown: the
/// locked-down daemon cannot read /proc).
pub(crate) fn audit_peer(peer: &Peer) -> AuditPeer {
    AuditPeer {
        uid: peer.uid,
        gid: peer.gid,
        pid: peer.pid,
        exe: None,
    }
}
