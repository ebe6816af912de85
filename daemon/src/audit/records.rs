//! Every record the daemon writes to the audit log, and what each one
//! carries: the start and shutdown, each model loaded or refused, each
//! request of either API, and the corrections (`undelivered`,
//! `audit_reconnected`). One home for the rule, so that what an assessor
//! reads (docs/guide/audit.md) is decided here and nowhere else.
//!
//! Requests are recorded with digests, token counts and status, never their
//! text, unless `audit.record_content` asks for bodies ([`content`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use deepseek_audit::entry::{CONTENT_LIMIT, Entry, Event, Peer, cut_bytes};

use crate::engine::llm::generate::Finished;

/// `start`: the configuration's digest, the version, and what the lockdown
/// achieved (`lockdown`), signed into the log: `deepseek-audit verify`
/// reads Landlock's state here (the kernel does not show it in /proc) for
/// the daemon with this pid.
pub(crate) fn start(config_sha256: String, lockdown: Vec<(String, String)>) -> Entry {
    let mut start = Entry::event(Event::Start);
    start
        .details
        .insert("config_sha256".to_owned(), config_sha256);
    start
        .details
        .insert("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned());
    start
        .details
        .insert("pid".to_owned(), std::process::id().to_string());
    start.details.extend(lockdown);
    start
}

/// What a `model_load` record names: the model, its graph file and, for a
/// model in the store, the version served.
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    pub name: String,
    pub path: PathBuf,
    pub version: Option<String>,
}

/// The `model_load` records: name, file (and `version` for a store model)
/// and the digest of the bytes loaded from it, which `deepseek-audit
/// verify` compares with the database (INTEG-MODELS).
pub(crate) fn model_loads(models: &[Loaded], digests: &BTreeMap<String, String>) -> Vec<Entry> {
    models
        .iter()
        .map(|model| {
            let mut load = Entry::event(Event::ModelLoad);
            load.model = Some(model.name.clone());
            load.model_sha256 = digests.get(&model.name).cloned();
            load.details
                .insert("path".to_owned(), model.path.display().to_string());
            if let Some(version) = &model.version {
                load.details.insert("version".to_owned(), version.clone());
            }
            load
        })
        .collect()
}

/// The start-up records said again (`audit.restate_interval_secs`): the
/// same entries, marked `restated` with the sequence number of the `start`
/// they repeat, so that `deepseek-audit verify` finds the evidence of what
/// runs in the live log after the originals were archived.
pub(crate) fn restated(originals: &[Entry], start_seq: u64) -> Vec<Entry> {
    originals
        .iter()
        .map(|entry| {
            let mut again = entry.clone();
            again
                .details
                .insert("restates_seq".to_owned(), start_seq.to_string());
            again
        })
        .collect()
}

/// `model_refused`: a model the integrity check refused, and why.
pub(crate) fn model_refused(model: &str, path: Option<&Path>, reason: String) -> Entry {
    let mut refused = Entry::event(Event::ModelRefused);
    refused.model = Some(model.to_owned());
    if let Some(path) = path {
        refused
            .details
            .insert("path".to_owned(), path.display().to_string());
    }
    refused.details.insert("reason".to_owned(), reason);
    refused
}

/// `denied_peer`: a client refused at `accept`, with why (`reason`:
/// `not_allowed`, outside the allow-list; `unmapped_id`, an id the daemon's
/// user namespace shows as the overflow id), and how many refusals of it (`suppressed`) and of other uids
/// (`suppressed_other_uids`) the rate limit left unrecorded before it.
pub(crate) fn denied_peer(
    peer: Peer,
    reason: &str,
    suppressed: u64,
    suppressed_other_uids: u64,
) -> Entry {
    let mut denied = Entry::event(Event::DeniedPeer);
    denied.peer = Some(peer);
    denied
        .details
        .insert("suppressed".to_owned(), suppressed.to_string());
    denied
        .details
        .insert("reason".to_owned(), reason.to_owned());
    if suppressed_other_uids > 0 {
        denied.details.insert(
            "suppressed_other_uids".to_owned(),
            suppressed_other_uids.to_string(),
        );
    }
    denied
}

/// `alert`: a client went over a `[limits]` alert threshold; `peer` sent
/// the request that crossed it.
pub(crate) fn rate_alert(
    peer: Peer,
    client: String,
    requests: usize,
    threshold: u32,
    window_secs: u64,
) -> Entry {
    let mut alert = Entry::event(Event::Alert);
    alert.peer = Some(peer);
    for (key, value) in [
        ("kind", "request_rate".to_owned()),
        ("client", client),
        ("requests", requests.to_string()),
        ("threshold", threshold.to_string()),
        ("window_secs", window_secs.to_string()),
    ] {
        alert.details.insert(key.to_owned(), value);
    }
    alert
}

/// `shutdown`, the last record of a daemon that stops.
pub(crate) fn shutdown() -> Entry {
    Entry::event(Event::Shutdown)
}

/// The `undelivered` entry for `entry`, should its client not get the
/// answer it describes but `status` instead (503 refused, 499 left).
pub(crate) fn undelivered(entry: &Entry, status: u16) -> Entry {
    let mut correction = Entry::event(Event::Undelivered);
    correction.peer.clone_from(&entry.peer);
    correction.model.clone_from(&entry.model);
    correction.request_id.clone_from(&entry.request_id);
    correction.request_sha256.clone_from(&entry.request_sha256);
    correction.status = Some(status);
    correction.details.insert(
        "corrects".to_owned(),
        match entry.event {
            Event::Completion => "completion",
            _ => "request",
        }
        .to_owned(),
    );
    correction
}

/// `audit_reconnected`, the first record on a new connection to the
/// auditor: when the last one was lost, how many requests were refused
/// meanwhile, and how many `undelivered` corrections could not be kept.
pub(crate) fn reconnected(lost_at_ns: Option<u128>, refused: u64, dropped: u64) -> Entry {
    let mut event = Entry::event(Event::AuditReconnected);
    if let Some(at) = lost_at_ns {
        event
            .details
            .insert("lost_at_ns".to_owned(), at.to_string());
    }
    event
        .details
        .insert("refused".to_owned(), refused.to_string());
    event
        .details
        .insert("undelivered_dropped".to_owned(), dropped.to_string());
    event
}

/// What every request's record says, whichever API it came to.
#[derive(Debug)]
pub(crate) struct Request {
    pub peer: Peer,
    pub model: Option<String>,
    /// The digest of the bytes the model was loaded from.
    pub model_sha256: Option<String>,
    pub request_id: Option<String>,
    /// `None` when the body could not be read.
    pub request_sha256: Option<String>,
    pub started: Instant,
}

impl Request {
    /// The record of `event` (`request`, or a stream's `completion`) with
    /// the status answered and the latency so far.
    pub(crate) fn entry(&self, event: Event, status: u16) -> Entry {
        let mut entry = Entry::event(event);
        entry.peer = Some(self.peer.clone());
        entry.model.clone_from(&self.model);
        entry.model_sha256.clone_from(&self.model_sha256);
        entry.request_id.clone_from(&self.request_id);
        entry.request_sha256.clone_from(&self.request_sha256);
        entry.status = Some(status);
        entry.latency_us =
            Some(u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX));
        entry
    }
}

/// A request `[limits]` refused (429) before its body was read: its
/// `code`, its endpoint for `/v1`, and the refusals of this client left
/// unrecorded since the last one recorded (`details.suppressed`).
pub(crate) fn limited(
    request: Request,
    code: &str,
    endpoint_path: Option<&str>,
    suppressed: u64,
) -> Entry {
    let mut entry = request.entry(Event::Request, 429);
    refusal(&mut entry, Some(code), None);
    if let Some(path) = endpoint_path {
        endpoint(&mut entry, path);
    }
    entry
        .details
        .insert("suppressed".to_owned(), suppressed.to_string());
    entry
}

/// Notes why a request was refused: what the status alone does not say
/// (`error_code`) and the parameter at fault (`error_param`).
pub(crate) fn refusal(entry: &mut Entry, code: Option<&str>, param: Option<&str>) {
    if let Some(code) = code {
        entry
            .details
            .insert("error_code".to_owned(), code.to_owned());
    }
    if let Some(param) = param {
        entry
            .details
            .insert("error_param".to_owned(), param.to_owned());
    }
}

/// A body as recorded content: text, cut at [`CONTENT_LIMIT`] bytes with a
/// note (the digests always cover the whole body). JSON escaping makes a
/// byte at most 6 bytes (`\u0001`), so a request and a response stay under
/// the auditor's 1 MiB default frame.
pub(crate) fn content(bytes: &[u8]) -> String {
    cut_bytes(bytes, CONTENT_LIMIT)
}

/// Adds the recorded bodies (`audit.record_content`) to `entry`.
pub(crate) fn add_content(entry: &mut Entry, request: Option<String>, response: Option<String>) {
    let mut content = BTreeMap::new();
    if let Some(request) = request {
        content.insert("request".to_owned(), request);
    }
    if let Some(response) = response {
        content.insert("response".to_owned(), response);
    }
    entry.content = Some(content);
}

/// What a generation request's records say about it once it is prepared:
/// its prompt tokens and the prompt text's digest, whether it streams, the
/// seed the client chose, how many alternatives per token it asked
/// logprobs with (that it asked; the values, which tell the text, never),
/// and how many tools it offered (not their names: they tell the task).
#[derive(Debug)]
pub(crate) struct Generation<'a> {
    pub prompt_tokens: usize,
    pub prompt_sha256: &'a str,
    pub stream: bool,
    pub seed: Option<i64>,
    pub logprobs: Option<usize>,
    /// The structured-output constraint's kind and its schema's digest.
    pub constraint: Option<(&'a str, &'a str)>,
    pub tools: usize,
}

/// Notes the endpoint of a generation request (also on refusals).
pub(crate) fn endpoint(entry: &mut Entry, endpoint: &str) {
    entry
        .details
        .insert("endpoint".to_owned(), endpoint.to_owned());
}

impl Generation<'_> {
    pub(crate) fn add_to(&self, entry: &mut Entry) {
        entry.tokens_in = Some(self.prompt_tokens as u64);
        entry
            .details
            .insert("prompt_sha256".to_owned(), self.prompt_sha256.to_owned());
        entry
            .details
            .insert("stream".to_owned(), self.stream.to_string());
        if let Some(seed) = self.seed {
            entry.details.insert("seed".to_owned(), seed.to_string());
        }
        if let Some(top) = self.logprobs {
            entry.details.insert("logprobs".to_owned(), top.to_string());
        }
        if let Some((kind, schema_sha256)) = self.constraint {
            entry
                .details
                .insert("constraint".to_owned(), kind.to_owned());
            entry
                .details
                .insert("schema_sha256".to_owned(), schema_sha256.to_owned());
        }
        if self.tools > 0 {
            entry
                .details
                .insert("tools".to_owned(), self.tools.to_string());
        }
    }
}

/// Notes how a generation ended: completion tokens, the digest of the
/// completion's text, the finish reason, how many tool calls it made (when
/// it made some) and, when a token was generated, the time from `started`
/// (the request's arrival) to the first one.
pub(crate) fn finished(entry: &mut Entry, finished: &Finished, started: Instant) {
    if let Some(first) = finished.first_token_at {
        let ttft = first.saturating_duration_since(started).as_micros();
        entry.details.insert("ttft_us".to_owned(), ttft.to_string());
    }
    entry.tokens_out = Some(finished.completion_tokens as u64);
    entry.details.insert(
        "completion_sha256".to_owned(),
        finished.completion_sha256.clone(),
    );
    entry.details.insert(
        "finish_reason".to_owned(),
        finished.reason.as_str().to_owned(),
    );
    if finished.tool_calls > 0 {
        entry
            .details
            .insert("tool_calls".to_owned(), finished.tool_calls.to_string());
    }
}
