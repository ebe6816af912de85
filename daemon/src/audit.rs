//! The daemon's side of the audit log: a connection to the auditor,
//! opened before the lockdown, pipelined: records go out tagged,
//! acknowledgements come back tagged, and a request's answer leaves only
//! once its record is acknowledged.
//!
//! When the connection is lost (the auditor restarted or stopped), every
//! record is refused until a new one is made: the daemon connects again to
//! `audit.socket` every [`RECONNECT_EVERY`] (the seccomp allow-list has
//! `connect` for this; docs/hardening.md weighs the trade-off), records
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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// Largest acknowledgement frame accepted from the auditor.
const MAX_REPLY: usize = 64 * 1024;

/// Largest record the daemon sends: the auditor's default `max_frame_bytes`.
/// [`Entry::bound`] keeps every record far below it; a larger one is a bug,
/// refused here rather than costing the connection.
pub const MAX_FRAME: usize = 1 << 20;

/// How often a lost connection is tried again.
pub const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// Corrections (`undelivered` entries) kept while the auditor is away;
/// beyond this they are counted in `audit_reconnected`'s
/// `details.undelivered_dropped` instead.
const MAX_CORRECTIONS: usize = 4096;

/// Why a record was not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("the auditor did not acknowledge within {0:?}")]
    Timeout(Duration),
    #[error("the connection to the auditor is lost")]
    Lost,
    #[error("the auditor refused the record: {0}")]
    Refused(String),
    #[error("the record is {0} bytes, over the limit of {MAX_FRAME}")]
    TooLarge(usize),
}

/// A record sent and not yet answered.
#[derive(Debug)]
struct Waiter {
    /// `None` once its caller gave up waiting (and refused its client).
    reply: Option<oneshot::Sender<Result<u64, AuditError>>>,
    /// The `undelivered` entry to write should the record reach the log
    /// after its client was refused; only for answers (request, completion)
    /// with `audit.required`.
    correction: Option<Entry>,
}

#[derive(Debug, Default)]
struct State {
    /// Frames to the current connection; `None` while there is none.
    sender: Option<mpsc::UnboundedSender<Vec<u8>>>,
    pending: HashMap<u64, Waiter>,
    /// `undelivered` entries waiting for a connection.
    corrections: VecDeque<Entry>,
    corrections_dropped: u64,
    /// When the connection was lost, and how many records were refused
    /// since, for `audit_reconnected`.
    lost_at_ns: Option<u128>,
    refused: u64,
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
pub struct AuditClient {
    inner: Option<Arc<Inner>>,
}

impl AuditClient {
    /// A client that records nothing (`audit.required = false` without an
    /// auditor).
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Whether records can reach the auditor now. While this is false the
    /// daemon reconnects, readiness is false and systemd's watchdog is not
    /// pinged (a daemon that cannot reconnect is restarted).
    pub fn is_connected(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|inner| inner.connected.load(Ordering::Acquire))
    }

    /// Starts recording over `stream`, a connection to `socket` opened
    /// earlier; `socket` is connected again whenever the connection is lost.
    pub fn start(
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
    pub async fn record(&self, entry: Entry) -> Result<u64, AuditError> {
        let timeout = self.inner.as_ref().map_or(Duration::ZERO, |i| i.timeout);
        self.record_within(entry, timeout).await
    }

    /// [`Self::record`] with its own wait: the start-up records wait for an
    /// auditor that is still verifying its log.
    pub async fn record_within(
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
        .then(|| undelivered(&entry));
        let frame = serde_json::to_vec(&Request { tag, entry }).expect("records serialize");
        if frame.len() > MAX_FRAME {
            return Err(AuditError::TooLarge(frame.len()));
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut state = inner.lock();
            let Some(sender) = &state.sender else {
                state.refused += 1;
                return Err(AuditError::Lost);
            };
            if sender.send(frame).is_err() {
                state.refused += 1;
                return Err(AuditError::Lost);
            }
            state.pending.insert(
                tag,
                Waiter {
                    reply: Some(tx),
                    correction,
                },
            );
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(AuditError::Lost),
            Err(_) => {
                // The record may still be written: its waiter stays, without
                // a caller, so a late acknowledgement brings its correction.
                let mut state = inner.lock();
                if let Some(waiter) = state.pending.get_mut(&tag) {
                    waiter.reply = None;
                }
                state.refused += 1;
                Err(AuditError::Timeout(timeout))
            }
        }
    }

    /// Ends recording (at shutdown): the connection closing is then no
    /// loss, and is not made again.
    pub fn close(&self) {
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

    /// Queues an `undelivered` entry, bounded.
    fn correct(&self, mut correction: Entry, refers_to: Option<u64>) {
        if let Some(seq) = refers_to {
            correction
                .details
                .insert("refers_to_seq".to_owned(), seq.to_string());
        }
        let mut state = self.lock();
        if state.corrections.len() < MAX_CORRECTIONS {
            state.corrections.push_back(correction);
        } else {
            state.corrections_dropped += 1;
        }
    }
}

/// The `undelivered` entry for `entry`, should its client be refused.
fn undelivered(entry: &Entry) -> Entry {
    let mut correction = Entry::event(Event::Undelivered);
    correction.peer.clone_from(&entry.peer);
    correction.model.clone_from(&entry.model);
    correction.request_id.clone_from(&entry.request_id);
    correction.request_sha256.clone_from(&entry.request_sha256);
    correction.status = Some(503);
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

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Makes `stream` the connection: a writer task, and a reader task that
/// answers waiters and, when the connection ends, fails them and starts
/// reconnecting.
fn attach(inner: &Arc<Inner>, stream: tokio::net::UnixStream) {
    let (mut read, mut write) = stream.into_split();
    let (sender, mut outgoing) = mpsc::unbounded_channel::<Vec<u8>>();
    inner.lock().sender = Some(sender);
    inner.connected.store(true, Ordering::Release);
    tokio::spawn(async move {
        while let Some(frame) = outgoing.recv().await {
            let length = u32::try_from(frame.len()).unwrap_or(u32::MAX).to_be_bytes();
            if write.write_all(&length).await.is_err() || write.write_all(&frame).await.is_err() {
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
async fn read_reply(read: &mut tokio::net::unix::OwnedReadHalf) -> Option<Reply> {
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
fn answer(inner: &Arc<Inner>, reply: Reply) {
    let waiter = inner.lock().pending.remove(&reply.tag);
    let Some(waiter) = waiter else {
        if let Some(error) = reply.error {
            tracing::error!(tag = reply.tag, error, "the auditor refused a record");
        }
        return;
    };
    let result = match (reply.seq, reply.error) {
        (Some(seq), _) => Ok(seq),
        (None, error) => Err(AuditError::Refused(error.unwrap_or_default())),
    };
    match (waiter.reply, waiter.correction, &result) {
        (Some(caller), _, _) => {
            let _ = caller.send(result);
        }
        (None, Some(correction), Ok(seq)) => {
            tracing::error!(
                seq,
                "a record was acknowledged after its client was refused; recording that it was undelivered"
            );
            inner.correct(correction, Some(*seq));
            flush(inner);
        }
        // Refused after its caller gave up: nothing reached the log.
        (None, _, _) => {}
    }
}

/// The connection ended: every waiter fails, records in flight may or may
/// not be in the log (their corrections wait for the next connection), and
/// reconnecting starts unless the daemon is shutting down.
fn lost(inner: &Arc<Inner>) {
    let closing = inner.closing.load(Ordering::Acquire);
    let waiters: Vec<Waiter> = {
        let mut state = inner.lock();
        state.sender = None;
        inner.connected.store(false, Ordering::Release);
        if !closing {
            state.lost_at_ns.get_or_insert_with(now_ns);
        }
        state.pending.drain().map(|(_, w)| w).collect()
    };
    for waiter in waiters {
        if let Some(caller) = waiter.reply {
            let _ = caller.send(Err(AuditError::Lost));
        } else if let Some(correction) = waiter.correction {
            inner.correct(correction, None);
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

/// Connects again until it works (or the daemon shuts down), then records
/// the gap and the corrections that waited for it.
async fn reconnect(inner: Arc<Inner>) {
    let mut failures = 0u64;
    loop {
        tokio::time::sleep(RECONNECT_EVERY).await;
        if inner.closing.load(Ordering::Acquire) {
            return;
        }
        match tokio::net::UnixStream::connect(&inner.socket).await {
            Ok(stream) => {
                attach(&inner, stream);
                break;
            }
            Err(e) => {
                failures += 1;
                // Once, then every minute: the error is the same each time.
                if failures == 1 || failures.is_multiple_of(60) {
                    tracing::error!(socket = %inner.socket.display(), error = %e, attempts = failures, "cannot reconnect to the auditor yet");
                }
            }
        }
    }
    let (lost_at_ns, refused, dropped) = {
        let mut state = inner.lock();
        let gap = (
            state.lost_at_ns.take(),
            std::mem::take(&mut state.refused),
            std::mem::take(&mut state.corrections_dropped),
        );
        // Corrections go after this entry, which explains them.
        let mut event = Entry::event(Event::AuditReconnected);
        if let Some(at) = gap.0 {
            event
                .details
                .insert("lost_at_ns".to_owned(), at.to_string());
        }
        event
            .details
            .insert("refused".to_owned(), gap.1.to_string());
        event
            .details
            .insert("undelivered_dropped".to_owned(), gap.2.to_string());
        state.corrections.push_front(event);
        gap
    };
    tracing::info!(
        lost_at_ns,
        refused,
        undelivered_dropped = dropped,
        "reconnected to the auditor; serving again"
    );
    flush(&inner);
}

/// Sends the queued corrections in order, each acknowledged before the
/// next; one that fails goes back to the front for the next connection.
fn flush(inner: &Arc<Inner>) {
    let inner = Arc::clone(inner);
    tokio::spawn(async move {
        let client = AuditClient {
            inner: Some(Arc::clone(&inner)),
        };
        loop {
            let next = inner.lock().corrections.pop_front();
            let Some(entry) = next else {
                return;
            };
            if let Err(e) = client.record(entry.clone()).await {
                tracing::error!(error = %e, "a correction could not be recorded yet");
                inner.lock().corrections.push_front(entry);
                return;
            }
        }
    });
}
