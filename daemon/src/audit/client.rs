//! The daemon's side of the audit log: a connection to the auditor,
//! opened before the lockdown, pipelined: records go out tagged,
//! acknowledgements come back tagged, and a request's answer leaves only
//! once its record is acknowledged.
//!
//! When the connection is lost (the auditor restarted or stopped), every
//! record is refused until a new one is made: the daemon connects again to
//! `audit.socket` every [`RECONNECT_EVERY`] (the seccomp allow-list has
//! `connect` for this; docs/guide/hardening.md weighs the trade-off), records
//! `audit_reconnected`, and serves again by itself.
//!
//! A record that was refused to its client (503) but may still reach the
//! log, acknowledged after the timeout or in flight when the connection
//! broke, is followed by an `undelivered` entry, so the log never claims an
//! answer that was not given.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deepseek_audit::entry::{Entry, Event};
use deepseek_audit::service::{Reply, Request};

use super::records;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// Largest acknowledgement frame accepted from the auditor.
const MAX_REPLY: usize = 64 * 1024;

/// Largest record the daemon sends: the auditor's default `max_frame_bytes`.
/// [`Entry::bound`] keeps every record far below it; a larger one is a bug,
/// refused here rather than costing the connection.
pub(super) const MAX_FRAME: usize = 1 << 20;

/// How often a lost connection is tried again.
pub(super) const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// Corrections (`undelivered` entries) kept while the auditor is away;
/// beyond this they are counted in `audit_reconnected`'s
/// `details.undelivered_dropped` instead. Corrections come only from
/// records in flight, at most [`MAX_IN_FLIGHT`], so this is a backstop.
const MAX_CORRECTIONS: usize = 2 * MAX_IN_FLIGHT;

/// Records sent and not yet acknowledged, at most: past this (an auditor
/// that stalls), a new record is refused at once (503) instead of queueing
/// behind the others, so a stalled auditor costs bounded memory.
pub(super) const MAX_IN_FLIGHT: usize = 4096;

/// The same bound in bytes of the frames in flight.
pub(super) const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;

/// Why a record was not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum AuditError {
    #[error("the auditor did not acknowledge within {0:?}")]
    Timeout(Duration),
    #[error("the connection to the auditor is lost")]
    Lost,
    #[error("the auditor refused the record: {0}")]
    Refused(String),
    #[error("the record is {0} bytes, over the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error(
        "{MAX_IN_FLIGHT} records or {MAX_IN_FLIGHT_BYTES} bytes already wait for the auditor's acknowledgement"
    )]
    Backlog,
}

/// A record sent and not yet answered.
#[derive(Debug)]
struct Waiter {
    /// `None` once its caller gave up waiting (and refused its client), or
    /// for the daemon's own corrections, which nobody waits for.
    reply: Option<oneshot::Sender<Result<u64, AuditError>>>,
    /// The `undelivered` entry to write should the record reach the log
    /// after its client was refused; only for answers (request, completion)
    /// with `audit.required`.
    correction: Option<Entry>,
    /// A correction (or `audit_reconnected`) itself: sent again on the next
    /// connection if this one is lost before it is acknowledged.
    resend: Option<Entry>,
    /// Its caller timed out waiting: the auditor is not keeping up.
    abandoned: bool,
    bytes: usize,
}

#[derive(Debug, Default)]
struct State {
    /// Frames to the current connection; `None` while there is none.
    sender: Option<mpsc::UnboundedSender<Vec<u8>>>,
    pending: HashMap<u64, Waiter>,
    /// Bytes of the frames in `pending`.
    in_flight_bytes: usize,
    /// Waiters in `pending` whose caller timed out.
    abandoned: usize,
    /// `undelivered` entries waiting for a connection.
    corrections: VecDeque<Entry>,
    corrections_dropped: u64,
    /// When the connection was lost, and how many records were refused
    /// since, for `audit_reconnected`.
    lost_at_ns: Option<u128>,
    refused: u64,
}

impl State {
    /// Sends `frame` on the connection and tracks `waiter` for its reply.
    fn send(&mut self, tag: u64, frame: Vec<u8>, waiter: Waiter) -> Result<(), AuditError> {
        let Some(sender) = &self.sender else {
            return Err(AuditError::Lost);
        };
        let bytes = waiter.bytes;
        sender.send(frame).map_err(|_| AuditError::Lost)?;
        self.in_flight_bytes += bytes;
        self.pending.insert(tag, waiter);
        Ok(())
    }

    /// Stops tracking `tag`'s waiter, returning it.
    fn take(&mut self, tag: u64) -> Option<Waiter> {
        let waiter = self.pending.remove(&tag)?;
        self.in_flight_bytes -= waiter.bytes;
        if waiter.abandoned {
            self.abandoned -= 1;
        }
        Some(waiter)
    }
}

#[derive(Debug)]
struct Inner {
    socket: PathBuf,
    timeout: Duration,
    /// Clients are refused when a record fails: only then is a late record
    /// a claim of an answer that was never given.
    required: bool,
    next_tag: AtomicU64,
    /// Set by [`AuditClient::close`]: the end of the connection is then no
    /// loss, and nothing reconnects.
    closing: AtomicBool,
    connected: AtomicBool,
    state: Mutex<State>,
}

/// A handle to the auditor; cheap to share.
#[derive(Debug, Clone)]
pub(crate) struct AuditClient {
    inner: Option<Arc<Inner>>,
}

impl AuditClient {
    /// A client that records nothing (`audit.required = false` without an
    /// auditor).
    pub(crate) fn disabled() -> Self {
        Self { inner: None }
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Whether records can reach the auditor now. While this is false the
    /// daemon reconnects, readiness is false and systemd's watchdog is not
    /// pinged (a daemon that cannot reconnect is restarted).
    pub(crate) fn is_connected(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|inner| inner.connected.load(Ordering::Acquire))
    }

    /// Whether records are waiting past their timeout: the auditor is
    /// connected but does not keep up (stopped, or its disk stalls).
    pub(crate) fn is_stalled(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|inner| inner.lock().abandoned > 0)
    }

    /// Starts recording over `stream`, a connection to `socket` opened
    /// earlier; `socket` is connected again whenever the connection is lost.
    pub(crate) fn start(
        stream: std::os::unix::net::UnixStream,
        socket: PathBuf,
        timeout: Duration,
        required: bool,
    ) -> std::io::Result<Self> {
        stream.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(stream)?;
        let inner = Arc::new(Inner {
            socket,
            timeout,
            required,
            next_tag: AtomicU64::new(1),
            closing: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            state: Mutex::default(),
        });
        attach(&inner, stream);
        Ok(Self { inner: Some(inner) })
    }

    /// Sends `entry` and waits for its acknowledgement (its sequence
    /// number) for `audit.timeout_ms`.
    pub(crate) async fn record(&self, entry: Entry) -> Result<u64, AuditError> {
        let timeout = self.inner.as_ref().map_or(Duration::ZERO, |i| i.timeout);
        self.record_within(entry, timeout).await
    }

    /// [`Self::record`] with its own wait: the start-up records wait for an
    /// auditor that is still verifying its log.
    pub(crate) async fn record_within(
        &self,
        mut entry: Entry,
        timeout: Duration,
    ) -> Result<u64, AuditError> {
        let Some(inner) = &self.inner else {
            return Ok(0);
        };
        entry.bound();
        let tag = inner.next_tag.fetch_add(1, Ordering::Relaxed);
        let correction = (inner.required
            && matches!(entry.event, Event::Request | Event::Completion))
        .then(|| records::undelivered(&entry, 503));
        let frame = serde_json::to_vec(&Request { tag, entry }).expect("records serialize");
        if frame.len() > MAX_FRAME {
            return Err(AuditError::TooLarge(frame.len()));
        }
        let (tx, mut rx) = oneshot::channel();
        {
            let mut state = inner.lock();
            if state.sender.is_none() {
                state.refused += 1;
                return Err(AuditError::Lost);
            }
            if state.pending.len() >= MAX_IN_FLIGHT
                || state.in_flight_bytes + frame.len() > MAX_IN_FLIGHT_BYTES
            {
                return Err(AuditError::Backlog);
            }
            let bytes = frame.len();
            state.send(
                tag,
                frame,
                Waiter {
                    reply: Some(tx),
                    correction,
                    resend: None,
                    abandoned: false,
                    bytes,
                },
            )?;
        }
        if let Ok(answered) = tokio::time::timeout(timeout, &mut rx).await {
            return answered.unwrap_or(Err(AuditError::Lost));
        }
        // Who wins, the timeout or an acknowledgement arriving now, is
        // decided under the lock: a waiter still pending is abandoned (a
        // late acknowledgement then brings its correction); one already
        // taken has its answer on the way.
        let abandoned = {
            let mut state = inner.lock();
            match state.pending.get_mut(&tag) {
                Some(waiter) => {
                    waiter.reply = None;
                    waiter.abandoned = true;
                    state.abandoned += 1;
                    true
                }
                None => false,
            }
        };
        if abandoned {
            Err(AuditError::Timeout(timeout))
        } else {
            rx.await.unwrap_or(Err(AuditError::Lost))
        }
    }

    /// Ends recording (at shutdown): the connection closing is then no
    /// loss, and is not made again.
    pub(crate) fn close(&self) {
        if let Some(inner) = &self.inner {
            inner.closing.store(true, Ordering::Release);
            inner.lock().sender = None;
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// Queues a correction, bounded.
    fn queue(&mut self, correction: Entry) {
        if self.corrections.len() < MAX_CORRECTIONS {
            self.corrections.push_back(correction);
        } else {
            self.corrections_dropped += 1;
        }
    }

    /// Sends the queued corrections, in order, on the connection if there
    /// is one. Nobody waits for them; one in flight when the connection is
    /// lost is sent again on the next.
    fn flush(&mut self, inner: &Inner) {
        while self.sender.is_some() {
            let Some(entry) = self.corrections.pop_front() else {
                return;
            };
            let tag = inner.next_tag.fetch_add(1, Ordering::Relaxed);
            let frame = serde_json::to_vec(&Request {
                tag,
                entry: entry.clone(),
            })
            .expect("records serialize");
            let waiter = Waiter {
                reply: None,
                correction: None,
                resend: Some(entry),
                abandoned: false,
                bytes: frame.len(),
            };
            if let Err(unsent) = self.send(tag, frame, waiter) {
                tracing::debug!(error = %unsent, "corrections wait for the next connection");
                return;
            }
        }
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Makes `stream` the connection: a writer task, and a reader task that
/// answers waiters and, when the connection ends, fails them and starts
/// reconnecting. Queued corrections (`audit_reconnected` first) go out
/// before any other record can.
fn attach(inner: &Arc<Inner>, stream: tokio::net::UnixStream) {
    let (read, mut write) = stream.into_split();
    // Acknowledgements arrive in batches: read them through a buffer.
    let mut read = tokio::io::BufReader::new(read);
    let (sender, mut outgoing) = mpsc::unbounded_channel::<Vec<u8>>();
    {
        let mut state = inner.lock();
        state.sender = Some(sender);
        state.flush(inner);
        inner.connected.store(true, Ordering::Release);
    }
    tokio::spawn(async move {
        // Every frame queued by the time this runs goes out in one write:
        // under load one syscall (and one wake-up of the auditor) carries
        // many records.
        let mut batch = Vec::new();
        while let Some(frame) = outgoing.recv().await {
            batch.clear();
            let mut next = Some(frame);
            while let Some(frame) = next {
                let length = u32::try_from(frame.len()).unwrap_or(u32::MAX);
                batch.extend_from_slice(&length.to_be_bytes());
                batch.extend_from_slice(&frame);
                next = (batch.len() < MAX_FRAME)
                    .then(|| outgoing.try_recv().ok())
                    .flatten();
            }
            if write.write_all(&batch).await.is_err() {
                break;
            }
        }
        // Dropping the write half shuts the connection down: the reader
        // then sees its end too.
    });
    let inner = Arc::clone(inner);
    tokio::spawn(async move {
        while let Some(reply) = read_reply(&mut read).await {
            answer(&inner, reply);
        }
        lost(&inner);
    });
}

/// Reads one acknowledgement; `None` when the connection is over or the
/// auditor sent something that is not one.
async fn read_reply(
    read: &mut tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
) -> Option<Reply> {
    let mut length = [0u8; 4];
    read.read_exact(&mut length).await.ok()?;
    let length = u32::from_be_bytes(length) as usize;
    if length > MAX_REPLY {
        tracing::error!(length, "the auditor sent an oversized acknowledgement");
        return None;
    }
    let mut frame = vec![0u8; length];
    read.read_exact(&mut frame).await.ok()?;
    serde_json::from_slice(&frame)
        .inspect_err(
            |e| tracing::error!(error = %e, "the auditor sent a malformed acknowledgement"),
        )
        .ok()
}

/// Hands an acknowledgement to its waiter; a late one for a client that was
/// refused queues its correction.
fn answer(inner: &Inner, reply: Reply) {
    let mut state = inner.lock();
    let Some(waiter) = state.take(reply.tag) else {
        if let Some(error) = reply.error {
            tracing::error!(tag = reply.tag, error, "the auditor refused a record");
        }
        return;
    };
    let result = match (reply.seq, reply.error) {
        (Some(seq), _) => Ok(seq),
        (None, error) => Err(AuditError::Refused(error.unwrap_or_default())),
    };
    match (waiter.reply, waiter.correction, result) {
        (Some(caller), _, result) => {
            let _ = caller.send(result);
        }
        (None, Some(mut correction), Ok(seq)) => {
            tracing::error!(
                seq,
                "a record was acknowledged after its client was refused; recording that it was undelivered"
            );
            correction
                .details
                .insert("refers_to_seq".to_owned(), seq.to_string());
            state.queue(correction);
            state.flush(inner);
        }
        (None, _, Err(e)) if waiter.resend.is_some() => {
            tracing::error!(error = %e, "a correction was refused by the auditor");
        }
        // Acknowledged, or refused after its caller gave up (nothing
        // reached the log).
        (None, _, _) => {}
    }
}

/// The connection ended: every waiter fails; records in flight may or may
/// not be in the log, so each with a correction gets it (its caller refuses
/// its client), and corrections in flight are sent again. Reconnecting
/// starts unless the daemon is shutting down.
fn lost(inner: &Arc<Inner>) {
    let closing = inner.closing.load(Ordering::Acquire);
    {
        let mut state = inner.lock();
        state.sender = None;
        inner.connected.store(false, Ordering::Release);
        if !closing {
            state.lost_at_ns.get_or_insert_with(now_ns);
        }
        let mut tags: Vec<u64> = state.pending.keys().copied().collect();
        // In the order they were sent, so corrections stay in order.
        tags.sort_unstable();
        let mut resend = Vec::new();
        for tag in tags {
            let Some(waiter) = state.take(tag) else {
                continue;
            };
            if let Some(caller) = waiter.reply {
                let _ = caller.send(Err(AuditError::Lost));
            }
            if let Some(correction) = waiter.correction {
                state.queue(correction);
            }
            resend.extend(waiter.resend);
        }
        // Corrections that were in flight go first, as they were sent first.
        for entry in resend.into_iter().rev() {
            state.corrections.push_front(entry);
        }
    }
    if closing {
        tracing::debug!("the connection to the auditor is closed");
        return;
    }
    tracing::error!(
        socket = %inner.socket.display(),
        "the connection to the auditor is lost: every audited request is refused (503) until it is back; reconnecting"
    );
    tokio::spawn(reconnect(Arc::clone(inner)));
}

/// Connects again until it works (or the daemon shuts down); the new
/// connection first records the gap, then the corrections that waited.
async fn reconnect(inner: Arc<Inner>) {
    let mut failures = 0u64;
    let stream = loop {
        tokio::time::sleep(RECONNECT_EVERY).await;
        if inner.closing.load(Ordering::Acquire) {
            return;
        }
        match tokio::net::UnixStream::connect(&inner.socket).await {
            Ok(stream) => break stream,
            Err(e) => {
                failures += 1;
                // Once, then every minute: the error is the same each time.
                if failures == 1 || failures.is_multiple_of(60) {
                    tracing::error!(socket = %inner.socket.display(), error = %e, attempts = failures, "cannot reconnect to the auditor yet");
                }
            }
        }
    };
    let (lost_at_ns, refused, dropped) = {
        let mut state = inner.lock();
        let lost_at_ns = state.lost_at_ns.take();
        let refused = std::mem::take(&mut state.refused);
        let dropped = std::mem::take(&mut state.corrections_dropped);
        // One that never reached the auditor (a connection lost again at
        // once) is folded into this one: a flapping auditor adds no entries.
        let (mut lost_at_ns, mut refused, mut dropped) = (lost_at_ns, refused, dropped);
        while state
            .corrections
            .front()
            .is_some_and(|e| e.event == Event::AuditReconnected)
        {
            let earlier = state.corrections.pop_front().expect("front exists");
            let number = |key: &str| -> u64 {
                earlier
                    .details
                    .get(key)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            lost_at_ns = earlier
                .details
                .get("lost_at_ns")
                .and_then(|v| v.parse().ok())
                .or(lost_at_ns);
            refused += number("refused");
            dropped += number("undelivered_dropped");
        }
        let event = records::reconnected(lost_at_ns, refused, dropped);
        state.corrections.push_front(event);
        (lost_at_ns, refused, dropped)
    };
    attach(&inner, stream);
    tracing::info!(
        lost_at_ns,
        refused,
        undelivered_dropped = dropped,
        "reconnected to the auditor; serving again"
    );
}

#[cfg(test)]
mod tests;
