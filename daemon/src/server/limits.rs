//! Per-client limits and rate alerts over the inference endpoints
//! (`[limits]`, docs/guide/config.md): how many requests a uid sent in the
//! last minute (alert, or 429 beyond a limit), how many it has running
//! (429 beyond a limit), and how many a primary group sent (alert). The
//! policy only: `router` applies it to requests, records and answers.
//!
//! Memory is bounded: a client keeps at most threshold + 1 and limit
//! timestamps, and at most [`MAX_CLIENTS`] clients are tracked (those idle
//! for a minute go first).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::config::LimitsConfig;
use crate::metrics::Refusal;
use crate::server::peer::Peer;

/// The window every rate is counted over.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// Clients tracked at once.
const MAX_CLIENTS: usize = 4096;
/// A client's refusals are recorded at most once per this long; the rest
/// are counted into the next record (`details.suppressed`).
const REFUSAL_RECORD_INTERVAL: Duration = Duration::from_secs(1);

/// Who a count belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Client {
    Uid(u32),
    Group(u32),
}

impl Client {
    /// `uid` or `group`, the metric's label.
    pub(crate) fn kind(self) -> &'static str {
        match self {
            Client::Uid(_) => "uid",
            Client::Group(_) => "group",
        }
    }
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Client::Uid(uid) => write!(f, "uid {uid}"),
            Client::Group(gid) => write!(f, "gid {gid}"),
        }
    }
}

/// A client went over its alert threshold: once per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Alert {
    pub client: Client,
    /// Requests in the last window, this one included.
    pub requests: usize,
    pub threshold: u32,
}

/// A refused request: why, when to retry, and whether to record it now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refused {
    pub reason: Refusal,
    pub retry_after_secs: u64,
    /// `Some(n)`: record this refusal, with the `n` refusals of this
    /// client left unrecorded since its last record; `None`: count it only.
    pub record: Option<u64>,
}

#[derive(Debug, Default)]
struct State {
    /// Every request in the window (alerts), at most threshold + 1 kept.
    sent: VecDeque<Instant>,
    /// Admitted requests in the window (the rate limit), at most the limit
    /// kept: refused ones do not count, or a client that keeps trying
    /// would never get in again.
    admitted: VecDeque<Instant>,
    alerted_at: Option<Instant>,
    running: u32,
    refusal_recorded_at: Option<Instant>,
    suppressed: u64,
}

/// Drops the times older than the window; keeps at most `keep`.
fn slide(times: &mut VecDeque<Instant>, now: Instant, keep: usize) {
    while times
        .front()
        .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        || times.len() > keep
    {
        times.pop_front();
    }
}

impl State {
    fn idle(&self, now: Instant) -> bool {
        let last = self.sent.back().max(self.admitted.back());
        self.running == 0 && last.is_none_or(|t| now.duration_since(*t) >= WINDOW)
    }

    /// Counts a request sent; the alert when it crosses `threshold`.
    fn sent(&mut self, client: Client, threshold: u32, now: Instant) -> Option<Alert> {
        if threshold == 0 {
            return None;
        }
        self.sent.push_back(now);
        slide(&mut self.sent, now, threshold as usize + 1);
        let over = self.sent.len() > threshold as usize;
        let quiet = self
            .alerted_at
            .is_none_or(|at| now.duration_since(at) >= WINDOW);
        (over && quiet).then(|| {
            self.alerted_at = Some(now);
            Alert {
                client,
                requests: self.sent.len(),
                threshold,
            }
        })
    }

    fn refuse(&mut self, reason: Refusal, retry_after_secs: u64, now: Instant) -> Refused {
        let due = self
            .refusal_recorded_at
            .is_none_or(|at| now.duration_since(at) >= REFUSAL_RECORD_INTERVAL);
        let record = if due {
            self.refusal_recorded_at = Some(now);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        };
        Refused {
            reason,
            retry_after_secs,
            record,
        }
    }
}

/// The limits of one daemon.
#[derive(Debug)]
pub(crate) struct Limits {
    config: LimitsConfig,
    clients: Mutex<HashMap<Client, State>>,
}

/// A running request's place in its client's count; given back when
/// dropped (for a stream, when its body is).
#[derive(Debug)]
pub(crate) struct Lease {
    limits: Arc<Limits>,
    uid: u32,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(state) = self.limits.lock().get_mut(&Client::Uid(self.uid)) {
            state.running = state.running.saturating_sub(1);
        }
    }
}

impl Limits {
    pub(crate) fn new(config: LimitsConfig) -> Self {
        Self {
            config,
            clients: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Client, State>> {
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn config(&self) -> &LimitsConfig {
        &self.config
    }

    /// Whether anything is limited or watched at all.
    pub(crate) fn active(&self) -> bool {
        let c = &self.config;
        c.alert_requests_per_minute > 0
            || c.alert_group_requests_per_minute > 0
            || c.requests_per_minute > 0
            || c.concurrent_per_client > 0
    }

    /// Admits `peer`'s request at `now` (a [`Lease`] to hold while it
    /// runs) or refuses it, with the alerts it raised either way. A
    /// refused request counts towards the alerts but not the limit.
    pub(crate) fn admit(
        self: &Arc<Self>,
        peer: &Peer,
        now: Instant,
    ) -> (Result<Lease, Refused>, Vec<Alert>) {
        let c = &self.config;
        let mut clients = self.lock();
        if clients.len() >= MAX_CLIENTS {
            clients.retain(|_, state| !state.idle(now));
        }
        if clients.len() >= MAX_CLIENTS
            && let Some(stalest) = clients
                .iter()
                .filter(|(_, s)| s.running == 0)
                .min_by_key(|(_, s)| s.sent.back().max(s.admitted.back()).copied())
                .map(|(k, _)| *k)
        {
            clients.remove(&stalest);
        }
        let mut alerts = Vec::new();
        if c.alert_group_requests_per_minute > 0 {
            let group = Client::Group(peer.gid);
            let state = clients.entry(group).or_default();
            alerts.extend(state.sent(group, c.alert_group_requests_per_minute, now));
        }
        let client = Client::Uid(peer.uid);
        let state = clients.entry(client).or_default();
        alerts.extend(state.sent(client, c.alert_requests_per_minute, now));
        let limit = c.requests_per_minute as usize;
        slide(&mut state.admitted, now, limit);
        let verdict = if limit > 0 && state.admitted.len() >= limit {
            let oldest = state.admitted.front().copied().unwrap_or(now);
            let wait = WINDOW.saturating_sub(now.duration_since(oldest));
            Err(state.refuse(
                Refusal::RateLimited,
                wait.as_secs_f64().ceil().max(1.0) as u64,
                now,
            ))
        } else if c.concurrent_per_client > 0 && state.running >= c.concurrent_per_client {
            Err(state.refuse(Refusal::TooManyConcurrent, 1, now))
        } else {
            if limit > 0 {
                state.admitted.push_back(now);
            }
            state.running += 1;
            Ok(Lease {
                limits: Arc::clone(self),
                uid: peer.uid,
            })
        };
        (verdict, alerts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32) -> Peer {
        Peer {
            uid,
            gid,
            pid: 1,
            groups: vec![],
        }
    }

    fn limits(alert: u32, group: u32, rate: u32, concurrent: u32) -> Arc<Limits> {
        Arc::new(Limits::new(LimitsConfig {
            alert_requests_per_minute: alert,
            alert_group_requests_per_minute: group,
            requests_per_minute: rate,
            concurrent_per_client: concurrent,
        }))
    }

    #[test]
    fn alerts_once_per_window_per_client() {
        let l = limits(3, 5, 0, 0);
        let t0 = Instant::now();
        let mut alerts = Vec::new();
        for i in 0..10 {
            let uid = if i % 2 == 0 { 1 } else { 2 };
            let (lease, raised) = l.admit(&peer(uid, 100), t0 + Duration::from_millis(i));
            drop(lease.expect("no limit"));
            alerts.extend(raised);
        }
        assert_eq!(
            alerts,
            [
                // The group's 6th request comes before either uid's 4th.
                Alert {
                    client: Client::Group(100),
                    requests: 6,
                    threshold: 5
                },
                Alert {
                    client: Client::Uid(1),
                    requests: 4,
                    threshold: 3
                },
                Alert {
                    client: Client::Uid(2),
                    requests: 4,
                    threshold: 3
                },
            ]
        );
        // A minute later, over again: alerted again.
        let later = t0 + WINDOW + Duration::from_secs(1);
        let raised: Vec<_> = (0..4)
            .flat_map(|i| l.admit(&peer(1, 7), later + Duration::from_millis(i)).1)
            .collect();
        assert_eq!(
            raised,
            [Alert {
                client: Client::Uid(1),
                requests: 4,
                threshold: 3
            }]
        );
    }

    #[test]
    fn refuses_over_the_rate_with_the_wait_and_records_a_refusal_a_second() {
        let l = limits(0, 0, 2, 0);
        let t0 = Instant::now();
        for i in 0..2 {
            assert!(l.admit(&peer(1, 1), t0 + Duration::from_secs(i)).0.is_ok());
        }
        let refused = |at| l.admit(&peer(1, 1), at).0.expect_err("over the rate");
        let first = refused(t0 + Duration::from_secs(10));
        assert_eq!(
            first,
            Refused {
                reason: Refusal::RateLimited,
                retry_after_secs: 50,
                record: Some(0)
            }
        );
        assert_eq!(refused(t0 + Duration::from_millis(10_500)).record, None);
        assert_eq!(refused(t0 + Duration::from_millis(10_600)).record, None);
        assert_eq!(refused(t0 + Duration::from_secs(12)).record, Some(2));
        // Another uid is not limited by this one's rate.
        assert!(l.admit(&peer(2, 1), t0 + Duration::from_secs(12)).0.is_ok());
        // Once the first request leaves the window, one more is admitted.
        assert!(l.admit(&peer(1, 1), t0 + WINDOW).0.is_ok());
    }

    #[test]
    fn refuses_beyond_the_running_limit_until_a_lease_is_dropped() {
        let l = limits(0, 0, 0, 2);
        let now = Instant::now();
        let a = l.admit(&peer(1, 1), now).0.expect("first");
        let _b = l.admit(&peer(1, 1), now).0.expect("second");
        let refused = l.admit(&peer(1, 1), now).0.expect_err("third");
        assert_eq!(refused.reason, Refusal::TooManyConcurrent);
        assert_eq!(refused.retry_after_secs, 1);
        assert!(l.admit(&peer(2, 1), now).0.is_ok(), "per uid");
        drop(a);
        assert!(l.admit(&peer(1, 1), now).0.is_ok());
    }

    #[test]
    fn memory_stays_bounded_by_clients_and_window() {
        let l = limits(100, 0, 0, 0);
        let now = Instant::now();
        for uid in 0..(MAX_CLIENTS as u32 + 500) {
            let _ = l.admit(&peer(uid, 1), now);
        }
        for i in 0..1000 {
            let _ = l.admit(&peer(7, 1), now + Duration::from_millis(i));
        }
        let clients = l.lock();
        assert!(clients.len() <= MAX_CLIENTS);
        assert!(
            clients
                .values()
                .all(|s| s.sent.len() <= 101 && s.admitted.is_empty())
        );
    }
}
