//! What a generation request's audit records share, kept from the moment
//! its body arrives; what each record says is `audit::records`'.

use std::time::Instant;

use axum::http::StatusCode;
use deepseek_audit::entry::{Entry, Event, Peer};

use super::prepare::Prepared;
use super::wire::Endpoint;
use crate::audit::records;
use crate::entropy::random_bytes;
use crate::server::http::AppState;

/// What a request's audit records share.
#[derive(Debug)]
pub(super) struct Record {
    pub(super) peer: Peer,
    pub(super) started: Instant,
    pub(super) endpoint: Endpoint,
    pub(super) model: Option<String>,
    pub(super) id: String,
    /// None when the body could not be read.
    pub(super) request_sha256: Option<String>,
}

impl Record {
    pub(super) fn new(peer: Peer, endpoint: Endpoint) -> Self {
        Self {
            peer,
            started: Instant::now(),
            endpoint,
            model: None,
            id: format!(
                "{}{}",
                endpoint.id_prefix(),
                deepseek_integrity::digest::hex(&random_bytes::<12>())
            ),
            request_sha256: None,
        }
    }

    pub(super) fn entry(&self, state: &AppState, event: Event, status: StatusCode) -> Entry {
        let request = records::Request {
            peer: self.peer.clone(),
            model: self.model.clone(),
            model_sha256: self
                .model
                .as_ref()
                .and_then(|m| state.engine.digests().get(m).cloned()),
            request_id: Some(self.id.clone()),
            request_sha256: self.request_sha256.clone(),
            started: self.started,
        };
        let mut entry = request.entry(event, status.as_u16());
        records::endpoint(&mut entry, self.endpoint.path());
        entry
    }

    pub(super) fn add_prepared(entry: &mut Entry, prepared: &Prepared) {
        records::Generation {
            prompt_tokens: prepared.generate.prompt_ids.len(),
            prompt_sha256: &prepared.prompt_sha256,
            stream: prepared.stream,
            seed: prepared.seed,
            logprobs: prepared.generate.logprobs.map(|asked| asked.top),
            constraint: prepared
                .constraint
                .as_ref()
                .map(|(kind, digest)| (kind.as_str(), digest.as_str())),
            tools: prepared.tools,
        }
        .add_to(entry);
    }
}
