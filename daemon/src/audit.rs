//! The daemon's side of the audit log: one connection to the auditor,
//! opened before the lockdown (the locked-down daemon may not `connect`),
//! pipelined: records go out tagged, acknowledgements come back tagged, and
//! a request's answer leaves only once its record is acknowledged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deepseek_audit::entry::Entry;
use deepseek_audit::service::{Reply, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// Largest acknowledgement frame accepted from the auditor.
const MAX_REPLY: usize = 64 * 1024;

/// Why a record was not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("the auditor did not acknowledge within {0:?}")]
    Timeout(Duration),
    #[error("the connection to the auditor is lost")]
    Lost,
    #[error("the auditor refused the record: {0}")]
    Refused(String),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<u64, AuditError>>>>>;

/// A handle to the auditor; cheap to share.
#[derive(Debug, Clone)]
pub struct AuditClient {
    sender: Option<mpsc::UnboundedSender<(u64, Vec<u8>)>>,
    pending: Pending,
    next_tag: Arc<AtomicU64>,
    timeout: Duration,
    /// Set when the connection ends other than by this side's shutdown.
    lost: Arc<AtomicBool>,
}

impl AuditClient {
    /// A client that records nothing (`audit.required = false` without an
    /// auditor).
    pub fn disabled() -> Self {
        Self {
            sender: None,
            pending: Pending::default(),
            next_tag: Arc::default(),
            timeout: Duration::ZERO,
            lost: Arc::default(),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.sender.is_some()
    }

    /// Whether records can still reach the auditor: the daemon never
    /// reconnects, so once this is false it stops pinging systemd's
    /// watchdog and is restarted.
    pub fn is_connected(&self) -> bool {
        self.is_enabled() && !self.lost.load(Ordering::Acquire)
    }

    /// Starts the writer and reader tasks on a connection opened earlier.
    pub fn start(
        stream: std::os::unix::net::UnixStream,
        timeout: Duration,
    ) -> std::io::Result<Self> {
        stream.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(stream)?;
        let (mut read, mut write) = stream.into_split();
        let pending: Pending = Pending::default();
        let (sender, mut outgoing) = mpsc::unbounded_channel::<(u64, Vec<u8>)>();
        let writer_pending = Arc::clone(&pending);
        // Set when the client is dropped (shutdown): the auditor then closes
        // its side, which is no loss.
        let closed = Arc::new(AtomicBool::new(false));
        let writer_closed = Arc::clone(&closed);
        tokio::spawn(async move {
            loop {
                let Some((_, frame)) = outgoing.recv().await else {
                    writer_closed.store(true, Ordering::Release);
                    break;
                };
                let length = u32::try_from(frame.len()).unwrap_or(u32::MAX).to_be_bytes();
                if write.write_all(&length).await.is_err() || write.write_all(&frame).await.is_err()
                {
                    break;
                }
            }
            fail_all(&writer_pending);
        });
        let reader_pending = Arc::clone(&pending);
        let lost = Arc::new(AtomicBool::new(false));
        let reader_lost = Arc::clone(&lost);
        tokio::spawn(async move {
            loop {
                let mut length = [0u8; 4];
                if read.read_exact(&mut length).await.is_err() {
                    break;
                }
                let length = u32::from_be_bytes(length) as usize;
                if length > MAX_REPLY {
                    break;
                }
                let mut frame = vec![0u8; length];
                if read.read_exact(&mut frame).await.is_err() {
                    break;
                }
                let Ok(reply) = serde_json::from_slice::<Reply>(&frame) else {
                    break;
                };
                let waiter = reader_pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&reply.tag);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(match (reply.seq, reply.error) {
                        (Some(seq), _) => Ok(seq),
                        (None, error) => Err(AuditError::Refused(error.unwrap_or_default())),
                    });
                }
            }
            if closed.load(Ordering::Acquire) {
                tracing::debug!("the connection to the auditor is closed");
            } else {
                reader_lost.store(true, Ordering::Release);
                tracing::error!(
                    "the connection to the auditor is lost: every audited request is refused (503) until deepseekd restarts"
                );
            }
            fail_all(&reader_pending);
        });
        Ok(Self {
            sender: Some(sender),
            pending,
            next_tag: Arc::new(AtomicU64::new(1)),
            timeout,
            lost,
        })
    }

    /// Sends `entry` and waits for its acknowledgement (its sequence number).
    pub async fn record(&self, entry: Entry) -> Result<u64, AuditError> {
        let Some(sender) = &self.sender else {
            return Ok(0);
        };
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let frame = serde_json::to_vec(&Request { tag, entry }).expect("records serialize");
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(tag, tx);
        if sender.send((tag, frame)).is_err() {
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&tag);
            return Err(AuditError::Lost);
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(AuditError::Lost),
            Err(_) => {
                self.pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&tag);
                Err(AuditError::Timeout(self.timeout))
            }
        }
    }
}

fn fail_all(pending: &Pending) {
    for (_, waiter) in pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .drain()
    {
        let _ = waiter.send(Err(AuditError::Lost));
    }
}
