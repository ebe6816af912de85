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
