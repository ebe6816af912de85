//! Peers outside the allow-list, refused at `accept`: before they take a
//! connection slot, before a byte of their request is read, and recorded in
//! the audit log at a bounded rate, so that a refused peer can neither crowd
//! out allowed clients nor fill the audit disk.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::sync::Semaphore;

use super::http::audit_peer;
use super::peer::{Denial, Peer};
use crate::audit::AuditClient;
use crate::audit::records;
use crate::metrics::{Metrics, Refusal};

/// At most this many `denied_peer` records per interval, whatever the uids:
/// root can connect under as many uids as it likes.
const GLOBAL_RECORDS_PER_INTERVAL: u32 = 16;

/// The uids whose suppressed refusals are counted one by one; beyond this,
/// refusals are counted together (`suppressed_other_uids`).
const TRACKED_UIDS: usize = 1024;

/// Refused connections answered at once (403, then a short wait for the
/// client to finish sending); any more are closed without an answer, so a
/// flood cannot hold the daemon's file descriptors.
const ANSWERING: usize = 64;

/// How long a refused client may keep sending before its connection is
/// closed. Closing while it still writes would reset the connection before
/// it reads the 403.
const LINGER: Duration = Duration::from_secs(2);

/// What a refused client may send before the connection is closed; it is
/// discarded unread.
const LINGER_BYTES: usize = 256 * 1024;

/// The recording state of one uid.
#[derive(Debug, Default)]
struct Tally {
    /// When its last record was made.
    recorded: Option<Instant>,
    /// Refusals since then that were not recorded.
    suppressed: u64,
}

/// Decides which refusals are recorded: the first of each uid per interval,
/// at most [`GLOBAL_RECORDS_PER_INTERVAL`] in all, each carrying the count
/// of that uid's refusals left unrecorded since its previous record.
#[derive(Debug)]
pub(crate) struct RateLimit {
    interval: Duration,
    uids: HashMap<u32, Tally>,
    window_start: Option<Instant>,
    window_records: u32,
    /// Refusals of uids beyond [`TRACKED_UIDS`], not yet reported.
    untracked: u64,
}

/// A refusal to record, with what was left out before it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Record {
    /// This uid's refusals not recorded since its previous record.
    pub suppressed: u64,
    /// Other uids' refusals that could not be counted per uid.
    pub suppressed_other_uids: u64,
}

impl RateLimit {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            uids: HashMap::new(),
            window_start: None,
            window_records: 0,
            untracked: 0,
        }
    }

    /// Counts one refusal of `uid` at `now`; `Some` when it is to be recorded.
    pub(crate) fn refused(&mut self, uid: u32, now: Instant) -> Option<Record> {
        let interval = self.interval;
        let recent = |at: Option<Instant>| at.is_some_and(|at| now.duration_since(at) < interval);
        if !recent(self.window_start) {
            self.window_start = Some(now);
            self.window_records = 0;
        }
        if !self.uids.contains_key(&uid) && self.uids.len() >= TRACKED_UIDS {
            // Forget the uids with nothing pending and no record this interval.
            self.uids
                .retain(|_, tally| tally.suppressed > 0 || recent(tally.recorded));
            if self.uids.len() >= TRACKED_UIDS {
                self.untracked += 1;
                return None;
            }
        }
        let tally = self.uids.entry(uid).or_default();
        if recent(tally.recorded) || self.window_records >= GLOBAL_RECORDS_PER_INTERVAL {
            tally.suppressed += 1;
            return None;
        }
        self.window_records += 1;
        tally.recorded = Some(now);
        Some(Record {
            suppressed: std::mem::take(&mut tally.suppressed),
            suppressed_other_uids: std::mem::take(&mut self.untracked),
        })
    }
}

/// Refuses peers the allow-list does not admit.
#[derive(Debug)]
pub(crate) struct Refusals {
    audit: AuditClient,
    metrics: Arc<Metrics>,
    limit: Mutex<RateLimit>,
    answering: Arc<Semaphore>,
}

impl Refusals {
    /// `interval`: `server.denied_peer_interval_secs`.
    pub(crate) fn new(audit: AuditClient, metrics: Arc<Metrics>, interval: Duration) -> Self {
        Self {
            audit,
            metrics,
            limit: Mutex::new(RateLimit::new(interval)),
            answering: Arc::new(Semaphore::new(ANSWERING)),
        }
    }

    /// Answers a refused connection with a fixed 403 and closes it, without
    /// reading its request; records the refusal when the rate limit allows.
    /// Returns at once: the answer and the record run in their own tasks.
    pub(crate) fn refuse(&self, stream: UnixStream, peer: &Peer, denial: Denial) {
        self.metrics.refused(Refusal::Peer);
        let record = self
            .limit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .refused(peer.uid, Instant::now());
        if let Some(record) = record {
            tracing::warn!(
                uid = peer.uid,
                gid = peer.gid,
                pid = peer.pid,
                suppressed = record.suppressed,
                reason = denial.name(),
                "{}",
                match denial {
                    Denial::NotListed =>
                        "peer not in the allow-list (server.allowed_uids, server.allowed_groups); refused",
                    Denial::Unmapped =>
                        "peer's uid is the overflow id of the daemon's user namespace (its own uid is not mapped there); refused",
                }
            );
            let denied = records::denied_peer(
                audit_peer(peer),
                denial.name(),
                record.suppressed,
                record.suppressed_other_uids,
            );
            let audit = self.audit.clone();
            tokio::spawn(async move {
                if let Err(e) = audit.record(denied).await {
                    tracing::error!(error = %e, "the refusal of a peer could not be recorded");
                }
            });
        } else {
            tracing::debug!(
                uid = peer.uid,
                pid = peer.pid,
                "peer refused (not recorded: rate limit)"
            );
        }
        let Ok(permit) = Arc::clone(&self.answering).try_acquire_owned() else {
            return;
        };
        let response = forbidden(&denial.message(peer));
        tokio::spawn(async move {
            answer(stream, &response).await;
            drop(permit);
        });
    }
}

/// The whole answer to a refused peer. One shape for both APIs: the path,
/// which would tell them apart, is never read.
fn forbidden(message: &str) -> Vec<u8> {
    let body = serde_json::json!({ "error": message }).to_string();
    format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Waits (briefly) for the end of the client's request head, so that the
/// answer does not reach an HTTP client still sending (it would drop the
/// connection unread), writes the answer (it fits a fresh socket's buffer,
/// so it never waits), ends the write side and discards what the client
/// still sends. What the client sends is only scanned for the blank line
/// that ends a head: never parsed, logged or recorded.
async fn answer(mut stream: UnixStream, response: &[u8]) {
    let mut sink = [0u8; 8192];
    let mut left = LINGER_BYTES;
    let _ = tokio::time::timeout(LINGER, async {
        let mut last = [0u8; 4];
        while left > 0 {
            let n = match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            left = left.saturating_sub(n);
            if ends_head(&mut last, &sink[..n]) {
                break;
            }
        }
        if stream.try_write(response).is_err() {
            return;
        }
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// Whether `chunk`, following the bytes whose last four are `last`, holds
/// the `\r\n\r\n` that ends a request head; updates `last`.
fn ends_head(last: &mut [u8; 4], chunk: &[u8]) -> bool {
    chunk.iter().any(|&b| {
        last.rotate_left(1);
        last[3] = b;
        last == b"\r\n\r\n"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn one_record_per_uid_per_interval_with_the_count_left_out() {
        let mut limit = RateLimit::new(10 * SECOND);
        let t0 = Instant::now();
        let first = limit.refused(7, t0).expect("first recorded");
        assert_eq!(first.suppressed, 0);
        for i in 1..100 {
            assert_eq!(limit.refused(7, t0 + i * (SECOND / 20)), None);
        }
        // Another uid is not held back by the first.
        assert!(limit.refused(8, t0 + SECOND).is_some());
        let next = limit.refused(7, t0 + 10 * SECOND).expect("next interval");
        assert_eq!(next.suppressed, 99);
    }

    #[test]
    fn many_uids_share_a_global_cap() {
        let mut limit = RateLimit::new(10 * SECOND);
        let t0 = Instant::now();
        let recorded = (0..1000)
            .filter(|uid| limit.refused(*uid, t0).is_some())
            .count();
        assert_eq!(recorded, GLOBAL_RECORDS_PER_INTERVAL as usize);
        // A capped uid's refusal is counted in its next record.
        let later = limit.refused(999, t0 + 10 * SECOND).expect("recorded");
        assert_eq!(later.suppressed, 1);
    }

    #[test]
    fn uids_beyond_the_tracked_ones_are_counted_together() {
        let mut limit = RateLimit::new(10 * SECOND);
        let t0 = Instant::now();
        for uid in 0..2000 {
            limit.refused(uid, t0);
        }
        let later = limit.refused(0, t0 + 10 * SECOND).expect("recorded");
        assert_eq!(later.suppressed_other_uids, 2000 - TRACKED_UIDS as u64);
    }

    #[test]
    fn the_end_of_a_head_is_found_across_reads() {
        let mut last = [0u8; 4];
        assert!(!ends_head(&mut last, b"GET / HTTP/1.1\r\nhost: x\r"));
        assert!(!ends_head(&mut last, b"\n"));
        assert!(ends_head(&mut last, b"\r\nbody"));
    }

    #[test]
    fn the_answer_is_a_complete_403() {
        let peer = Peer {
            uid: 65534,
            gid: 65534,
            pid: 9,
            groups: Vec::new(),
        };
        let text = String::from_utf8(forbidden(&Denial::NotListed.message(&peer))).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(body).expect("json")["error"],
            "uid 65534 gid 65534 is not allowed to use this socket"
        );
    }
}
