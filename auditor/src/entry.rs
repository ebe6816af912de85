//! One audit log entry and its canonical encoding: compact JSON with the
//! fields in a fixed order and absent fields left out, one entry per line.
//! The bytes of the line (without the newline) are the Merkle leaf, so any
//! edit, even one that keeps the meaning, changes the tree. A line that does
//! not re-encode to itself is refused as non-canonical.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// One inference request and its answer. For a streamed completion
    /// (`/v1`, `"stream": true`) it is written before the first byte, and a
    /// `completion` entry follows.
    Request,
    /// The end of a streamed completion: `tokens_out`, `response_sha256`
    /// (every byte streamed before `[DONE]`) and `details.finish_reason`
    /// (`stop`, `length` or `cancelled`), under the `request_id` of its
    /// `request` entry.
    Completion,
    /// The daemon started (`details.config_sha256`).
    Start,
    /// A model was loaded (`model_sha256`: its file's digest in the
    /// integrity database).
    ModelLoad,
    /// A model failed integrity verification and was not loaded
    /// (`details.path`, `details.reason`); the daemon then exits.
    ModelRefused,
    /// A peer outside the allow-list was refused.
    DeniedPeer,
    /// The daemon stopped.
    Shutdown,
    /// The auditor removed a torn, never acknowledged last entry at start
    /// (`details.offset`, `details.bytes_dropped`).
    TornTailRemoved,
    /// `deepseek-audit integrity-check` ran the integrity check (the daily
    /// timer): its exit code, counts and paths, or why it could not run.
    IntegrityCheck,
    /// The answer an earlier `request` or `completion` entry describes was
    /// never delivered: its record was not acknowledged in time (or the
    /// connection was lost with it in flight), so the client got 503
    /// (`status`) instead. Same `peer`, `request_id` and `request_sha256`;
    /// `details.refers_to_seq` is the entry it corrects when the auditor
    /// acknowledged it late, absent when that is unknown.
    Undelivered,
    /// The daemon regained its connection to the auditor after losing it
    /// (`details.lost_at_ns`, `details.refused`: requests answered 503
    /// meanwhile).
    AuditReconnected,
    /// A client (`peer`, the request that crossed) went over a `[limits]`
    /// alert threshold of deepseekd: `details.kind` (`request_rate`),
    /// `details.client` (`uid N` or `gid N`), `details.requests` in the
    /// last `details.window_secs`, and `details.threshold`. Once per window
    /// per client.
    Alert,
    /// Free space on the log's filesystem fell under `warn_free_bytes`
    /// (`details.free_bytes`, `details.warn_free_bytes`,
    /// `details.min_free_bytes`): the service stops at the second.
    LowSpace,
    /// The service handed the log over from `details.from` to `details.to`
    /// (verifier keys): the seal after this entry is signed by both, and
    /// later checkpoints by the new key only.
    KeyRotated,
    /// `deepseek-audit model import`: a model bundle entered the store
    /// (`model`, `details.version`, `details.bundle_sha256`,
    /// `details.signer`, `details.operator_uid`). Written before the
    /// signed integrity database takes the version in; a `details.failed_seq`
    /// entry of the same event follows if that then failed.
    ModelImport,
    /// `deepseek-audit model activate`: `details.version` became the
    /// active version of `model` (`details.previous_version`).
    ModelActivate,
    /// `deepseek-audit model rollback`: as `model_activate`, back to the
    /// version active before.
    ModelRollback,
    /// `deepseek-audit model remove` (or the retention after an import):
    /// `details.version` of `model` left the store.
    ModelRemove,
}

impl Event {
    /// The name the log and the metrics use (`request`, `low_space`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Request => "request",
            Event::Completion => "completion",
            Event::Start => "start",
            Event::ModelLoad => "model_load",
            Event::ModelRefused => "model_refused",
            Event::DeniedPeer => "denied_peer",
            Event::Shutdown => "shutdown",
            Event::TornTailRemoved => "torn_tail_removed",
            Event::IntegrityCheck => "integrity_check",
            Event::Undelivered => "undelivered",
            Event::AuditReconnected => "audit_reconnected",
            Event::Alert => "alert",
            Event::LowSpace => "low_space",
            Event::KeyRotated => "key_rotated",
            Event::ModelImport => "model_import",
            Event::ModelActivate => "model_activate",
            Event::ModelRollback => "model_rollback",
            Event::ModelRemove => "model_remove",
        }
    }

    /// Written by the audit service itself only: a client's record claiming
    /// one is refused.
    pub fn service_only(self) -> bool {
        matches!(
            self,
            Event::TornTailRemoved | Event::LowSpace | Event::KeyRotated
        )
    }
}

/// Longest recorded text field (ids, model names, digests, each detail),
/// in bytes: a client-supplied id can make a record no larger than this.
pub const FIELD_LIMIT: usize = 1024;

/// Longest recorded content value (`record_content`), in bytes.
pub const CONTENT_LIMIT: usize = 64 * 1024;

/// Room left for [`cut`]'s note past a limit: a value that was cut once is
/// not cut again.
const NOTE_ROOM: usize = 64;

/// `bytes` as text (invalid UTF-8 replaced), cut at `limit` bytes with a
/// note of the full length: recorded content, read without a copy of the
/// whole body.
pub fn cut_bytes(bytes: &[u8], limit: usize) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(limit)]);
    if bytes.len() <= limit {
        text.into_owned()
    } else {
        format!("{text}[truncated at {limit} of {} bytes]", bytes.len())
    }
}

/// `text` cut at `limit` bytes (on a character boundary) with a note of its
/// full length, so a cut value is never mistaken for a whole one.
pub fn cut(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}[truncated at {end} of {} bytes]",
        &text[..end],
        text.len()
    )
}

/// The kernel-reported identity of the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exe: Option<String>,
}

/// One entry. `seq` is its leaf index in the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub seq: u64,
    /// Hex leaf hash of entry `seq - 1` (absent for the first): chains the
    /// entries, so that an edited entry is pinpointed by the next one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub prev: Option<String>,
    /// Nanoseconds since the Unix epoch, UTC.
    pub time_ns: u128,
    pub event: Event,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub peer: Option<Peer>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub model_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub request_id: Option<String>,
    /// SHA-256 of the request body: proves a given prompt was processed
    /// without the log holding it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub request_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub response_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tokens_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tokens_out: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub latency_us: Option<u64>,
    /// Request and response content, only with `record_content = true`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub content: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub details: BTreeMap<String, String>,
}

/// Why a line is not an entry.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("not an entry: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not in canonical form (it would encode differently)")]
    NotCanonical,
}

impl Entry {
    /// An entry of `event` with every optional field empty; the auditor
    /// fills in `seq`, `prev` and `time_ns` when it appends it.
    pub fn event(event: Event) -> Self {
        Self {
            seq: 0,
            prev: None,
            time_ns: 0,
            event,
            peer: None,
            model: None,
            model_sha256: None,
            request_id: None,
            request_sha256: None,
            response_sha256: None,
            tokens_in: None,
            tokens_out: None,
            status: None,
            latency_us: None,
            content: None,
            details: BTreeMap::new(),
        }
    }

    /// Cuts every text field to [`FIELD_LIMIT`] and each content value to
    /// [`CONTENT_LIMIT`] ([`cut`]): a record's size is then bounded whatever
    /// a client sent (JSON escaping at most sextuples a byte).
    pub fn bound(&mut self) {
        let field = |value: &mut String| {
            if value.len() > FIELD_LIMIT + NOTE_ROOM {
                *value = cut(value, FIELD_LIMIT);
            }
        };
        for value in [
            &mut self.model,
            &mut self.model_sha256,
            &mut self.request_id,
            &mut self.request_sha256,
            &mut self.response_sha256,
        ]
        .into_iter()
        .flatten()
        {
            field(value);
        }
        if let Some(peer) = &mut self.peer
            && let Some(exe) = &mut peer.exe
        {
            field(exe);
        }
        for value in self.details.values_mut() {
            field(value);
        }
        for value in self.content.iter_mut().flat_map(BTreeMap::values_mut) {
            if value.len() > CONTENT_LIMIT + NOTE_ROOM {
                *value = cut(value, CONTENT_LIMIT);
            }
        }
    }

    /// The canonical bytes (no newline).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("entries always serialize")
    }

    /// Parses one line and checks that it is canonical.
    pub fn decode(line: &[u8]) -> Result<Self, EntryError> {
        let entry: Entry = serde_json::from_slice(line)?;
        if entry.encode() != line {
            return Err(EntryError::NotCanonical);
        }
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_are_the_serialized_ones() {
        for event in [
            Event::Request,
            Event::Completion,
            Event::Start,
            Event::ModelLoad,
            Event::ModelRefused,
            Event::DeniedPeer,
            Event::Shutdown,
            Event::TornTailRemoved,
            Event::IntegrityCheck,
            Event::Undelivered,
            Event::AuditReconnected,
            Event::Alert,
            Event::LowSpace,
            Event::KeyRotated,
        ] {
            let json = serde_json::to_string(&event).expect("serializes");
            assert_eq!(json, format!("\"{}\"", event.as_str()));
        }
    }

    fn sample() -> Entry {
        Entry {
            seq: 3,
            prev: None,
            time_ns: 1_795_000_000_123_456_789,
            event: Event::Request,
            peer: Some(Peer {
                uid: 1000,
                gid: 1000,
                pid: 42,
                exe: Some("/usr/bin/curl".into()),
            }),
            model: Some("demo".into()),
            model_sha256: Some("ab".repeat(32)),
            request_id: Some("r1".into()),
            request_sha256: Some("cd".repeat(32)),
            response_sha256: Some("ef".repeat(32)),
            tokens_in: None,
            tokens_out: None,
            status: Some(200),
            latency_us: Some(512),
            content: None,
            details: BTreeMap::new(),
        }
    }

    #[test]
    fn canonical_round_trip_and_refusal_of_equivalent_rewrites() {
        let bytes = sample().encode();
        assert!(bytes.starts_with(
            br#"{"seq":3,"time_ns":1795000000123456789,"event":"request","peer":{"uid":1000"#
        ));
        assert_eq!(Entry::decode(&bytes).expect("decodes"), sample());
        let spaced = String::from_utf8(bytes.clone())
            .expect("utf8")
            .replacen(",", ", ", 1);
        assert!(matches!(
            Entry::decode(spaced.as_bytes()),
            Err(EntryError::NotCanonical)
        ));
        let unknown = String::from_utf8(bytes)
            .expect("utf8")
            .replacen("{", r#"{"x":1,"#, 1);
        assert!(matches!(
            Entry::decode(unknown.as_bytes()),
            Err(EntryError::Json(_))
        ));
    }

    #[test]
    fn bound_cuts_client_strings_on_a_character_boundary_and_says_so() {
        let mut entry = sample();
        entry.request_id = Some("é".repeat(FIELD_LIMIT));
        entry
            .details
            .insert("path".into(), "x".repeat(3 * FIELD_LIMIT));
        entry
            .details
            .insert("short".into(), "z".repeat(FIELD_LIMIT + 1));
        entry.content = Some(BTreeMap::from([(
            "response".to_owned(),
            "y".repeat(CONTENT_LIMIT + 100),
        )]));
        entry.bound();
        let id = entry.request_id.as_deref().expect("id");
        assert_eq!(
            id,
            format!(
                "{}[truncated at {FIELD_LIMIT} of {} bytes]",
                "é".repeat(FIELD_LIMIT / 2),
                2 * FIELD_LIMIT
            )
        );
        assert!(entry.details["path"].ends_with(&format!(
            "[truncated at {FIELD_LIMIT} of {} bytes]",
            3 * FIELD_LIMIT
        )));
        let content = &entry.content.as_ref().expect("content")["response"];
        assert_eq!(
            content.len(),
            CONTENT_LIMIT + "[truncated at 65536 of 65636 bytes]".len()
        );
        assert_eq!(
            entry.model.as_deref(),
            Some("demo"),
            "short fields unchanged"
        );
        assert_eq!(
            entry.details["short"].len(),
            FIELD_LIMIT + 1,
            "room for a note"
        );
        assert_eq!(
            cut_bytes(&[b'a'; 10], 4),
            "aaaa[truncated at 4 of 10 bytes]"
        );
        let once = cut_bytes(&vec![b'b'; CONTENT_LIMIT * 2], CONTENT_LIMIT);
        let mut again = sample();
        again.content = Some(BTreeMap::from([("response".to_owned(), once.clone())]));
        again.bound();
        assert_eq!(
            again.content.expect("content")["response"],
            once,
            "not cut twice"
        );
        assert!(entry.encode().len() < CONTENT_LIMIT + 4 * FIELD_LIMIT);
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::super::Entry;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]
            #[test]
            fn arbitrary_lines_never_panic(line in proptest::collection::vec(any::<u8>(), 0..300)) {
                let _ = Entry::decode(&line);
            }
        }
    }
}
