//! The log behind the socket, shared by the connections: each connection's
//! thread appends the records it has read with one write and one
//! `fdatasync` (group commit: what arrives during a sync waits in the
//! socket and goes in the next batch, and batches of several connections
//! go in one commit), then answers them itself. With one connection (the
//! daemon) no record passes between threads on its way: on a busy or
//! virtualised machine every wake-up costs as much as the sync. The clock's side ([`Recorder::tick`],
//! on the service's main thread) seals checkpoints by time, watches free
//! space and writes the metrics file.
//!
//! The first write or sync that fails, or free space under the floor,
//! stops the service: every later record is refused, and [`Recorder::close`]
//! returns the failure.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::config::ServiceConfig;
use super::error::ServiceError;
use super::stats::Stats;
use crate::checkpoint::Checkpoint;
use crate::entry::{Entry, Event};
use crate::segment::CHECKPOINTS;
use crate::storage::{LogFile, Readers, free_bytes, write_durably};
use deepseek_integrity::note::NoteSigner;

pub(super) fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Sends `message` to syslog (LOG_AUTHPRIV) as a notice, or a warning.
fn to_syslog(warning: bool, message: String) {
    let formatter = syslog::Formatter3164 {
        facility: syslog::Facility::LOG_AUTHPRIV,
        hostname: None,
        process: "deepseek-audit".into(),
        pid: std::process::id(),
    };
    match syslog::unix(formatter) {
        Ok(mut logger) => {
            let _ = if warning {
                logger.warning(message)
            } else {
                logger.notice(message)
            };
        }
        Err(e) => eprintln!("deepseek-audit: warning: cannot send to syslog: {e}"),
    }
}

#[derive(Debug)]
struct State {
    log: LogFile,
    sealed: u64,
    last_checkpoint: Instant,
    last_metrics: Option<Instant>,
    /// Under the low-water mark at the last check.
    low: bool,
    /// Why the service stops: set once, every record after it is refused.
    failed: Option<ServiceError>,
    /// The service is stopping: nothing more is appended.
    closed: bool,
}

/// Batches waiting for the connection that leads the next commit.
#[derive(Debug, Default)]
struct Queue {
    waiting: Vec<(Vec<Entry>, Answer)>,
    /// A connection is appending: what is queued now goes in its next commit.
    leading: bool,
}

type Answer = std::sync::mpsc::Sender<Result<Vec<u64>, &'static str>>;

/// Commits one leader makes before it answers its own client.
const LEADER_ROUNDS: usize = 8;
/// How long a waiting connection trusts the leader before it checks
/// whether its batch was left behind (it leads then itself).
const HANDOVER: Duration = Duration::from_millis(5);

/// The log, shared by every connection and the clock.
#[derive(Debug)]
pub(super) struct Recorder {
    config: ServiceConfig,
    signer: NoteSigner,
    pub(super) stats: Stats,
    queue: Mutex<Queue>,
    state: Mutex<State>,
    /// The last metrics write failed (said once until one works).
    metrics_failing: AtomicBool,
}

impl Recorder {
    pub(super) fn new(
        config: ServiceConfig,
        signer: NoteSigner,
        log: LogFile,
        sealed: u64,
    ) -> Self {
        let stats = Stats::new(log.size(), sealed);
        stats.segment(log.segment_bytes(), false);
        Self {
            stats,
            config,
            signer,
            queue: Mutex::default(),
            metrics_failing: AtomicBool::new(false),
            state: Mutex::new(State {
                log,
                sealed,
                last_checkpoint: Instant::now(),
                last_metrics: None,
                low: false,
                failed: None,
                closed: false,
            }),
        }
    }

    /// Bytes free on the log's filesystem, as unprivileged users see it.
    fn free(&self) -> Result<u64, ServiceError> {
        let dir = &self.config.log_dir;
        free_bytes(dir).map_err(|source| ServiceError::Io {
            action: "check free space on",
            path: dir.clone(),
            source,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `entries`, durable when this returns: their sequence
    /// numbers, or why none was written (the reply's error).
    ///
    /// Group commit across connections: the first caller to find nobody
    /// appending leads, and appends every batch queued meanwhile with one
    /// write and one sync, until none waits; the others wait for their
    /// answer. A single connection always leads, so it never waits on
    /// another thread.
    pub(super) fn append(&self, entries: Vec<Entry>) -> Result<Vec<u64>, &'static str> {
        let (done, answer) = std::sync::mpsc::channel();
        let lead = {
            let mut queue = self.queue();
            queue.waiting.push((entries, done));
            !std::mem::replace(&mut queue.leading, true)
        };
        if lead {
            self.lead();
        }
        loop {
            match answer.recv_timeout(HANDOVER) {
                Ok(result) => return result,
                Err(RecvTimeoutError::Disconnected) => return Err("the audit service is stopping"),
                // The last leader left batches waiting (its turn is
                // bounded): take over.
                Err(RecvTimeoutError::Timeout) => {
                    let take = {
                        let mut queue = self.queue();
                        let free = !queue.leading && !queue.waiting.is_empty();
                        queue.leading |= free;
                        free
                    };
                    if take {
                        self.lead();
                    }
                }
            }
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Commits what waits, at most [`LEADER_ROUNDS`] times, so that the
    /// leader's own client is answered even while others keep sending;
    /// a batch left waiting is taken over by its own connection.
    fn lead(&self) {
        for _ in 0..LEADER_ROUNDS {
            let batches = std::mem::take(&mut self.queue().waiting);
            if batches.is_empty() {
                break;
            }
            let sizes: Vec<usize> = batches.iter().map(|(e, _)| e.len()).collect();
            let (entries, answers): (Vec<Vec<Entry>>, Vec<_>) = batches.into_iter().unzip();
            let result = self.commit(entries.into_iter().flatten().collect());
            let mut seqs = result.as_ref().map(|s| s.iter().copied()).ok();
            for (size, answer) in sizes.into_iter().zip(answers) {
                let _ = answer.send(match (&result, seqs.as_mut()) {
                    (Ok(_), Some(seqs)) => Ok(seqs.by_ref().take(size).collect()),
                    (Err(e), _) => Err(*e),
                    (Ok(_), None) => Err("the audit log cannot be written"),
                });
            }
        }
        self.queue().leading = false;
    }

    /// One batch, under the log's lock.
    fn commit(&self, entries: Vec<Entry>) -> Result<Vec<u64>, &'static str> {
        let mut state = self.lock();
        if state.failed.is_some() {
            return Err("the audit log cannot be written");
        }
        if state.closed {
            return Err("the audit service is stopping");
        }
        let count = entries.len();
        match self.append_locked(&mut state, entries) {
            Ok(mut seqs) => {
                seqs.truncate(count);
                if let Err(e) = self.seal_if_due(&mut state, false) {
                    state.failed = Some(e);
                }
                Ok(seqs)
            }
            Err(e) => {
                let reply = match e {
                    ServiceError::DiskFull { .. } => "the audit log is out of space",
                    _ => "the audit log cannot be written",
                };
                state.failed = Some(e);
                Err(reply)
            }
        }
    }

    /// The batch with one write and one sync, a `low_space` entry after it
    /// when this batch crossed the low-water mark.
    fn append_locked(
        &self,
        state: &mut State,
        mut entries: Vec<Entry>,
    ) -> Result<Vec<u64>, ServiceError> {
        let config = &self.config;
        let free = self.free()?;
        if free < config.min_free_bytes {
            return Err(ServiceError::DiskFull {
                path: config.log_dir.clone(),
                free,
                floor: config.min_free_bytes,
            });
        }
        entries.extend(self.low_water(state, free));
        let time = now_ns();
        for entry in &mut entries {
            entry.time_ns = time;
        }
        let events: Vec<Event> = entries.iter().map(|e| e.event).collect();
        let started = Instant::now();
        let seqs = state.log.append(entries)?;
        self.stats.segment(state.log.segment_bytes(), false);
        self.stats.appended(
            events.into_iter(),
            state.log.size(),
            started.elapsed(),
            state.log.last_sync(),
        );
        Ok(seqs)
    }

    /// Tracks free space against the low-water mark: the `low_space` entry
    /// to append when it is crossed downwards (once per crossing), after
    /// warning on stderr and syslog.
    fn low_water(&self, state: &mut State, free: u64) -> Option<Entry> {
        let config = &self.config;
        let now_low = free < config.warn_free_bytes;
        self.stats.free(free, now_low);
        let crossed = now_low && !state.low;
        state.low = now_low;
        if !crossed {
            return None;
        }
        let message = format!(
            "the audit log's filesystem ({}) has {free} bytes free, under warn_free_bytes = {}; \
             at min_free_bytes = {} the service stops and the daemon refuses every request",
            config.log_dir.display(),
            config.warn_free_bytes,
            config.min_free_bytes
        );
        eprintln!("deepseek-audit: warning: {message}");
        if config.syslog {
            to_syslog(true, message);
        }
        let mut entry = Entry::event(Event::LowSpace);
        for (key, value) in [
            ("free_bytes", free),
            ("warn_free_bytes", config.warn_free_bytes),
            ("min_free_bytes", config.min_free_bytes),
        ] {
            entry.details.insert(key.to_owned(), value.to_string());
        }
        Some(entry)
    }

    /// Seals the active segment when it reached `segment_max_bytes` or
    /// (with `timed`) `segment_max_age_secs`; else a checkpoint when
    /// `checkpoint_every` entries or (with `timed`)
    /// `checkpoint_interval_secs` call for one.
    fn seal_if_due(&self, state: &mut State, timed: bool) -> Result<(), ServiceError> {
        let config = &self.config;
        let age = Duration::from_secs(config.segment_max_age_secs);
        let old = timed
            && !age.is_zero()
            && state
                .log
                .segment_since()
                .is_some_and(|since| since.elapsed().is_ok_and(|a| a >= age));
        if state.log.segment_bytes() >= config.segment_max_bytes.get() || old {
            return self.rotate(state);
        }
        let unsealed = state.log.size() - state.sealed;
        let interval = Duration::from_secs(config.checkpoint_interval_secs.max(1));
        let due = unsealed >= config.checkpoint_every.get()
            || (timed && unsealed > 0 && state.last_checkpoint.elapsed() >= interval);
        if due {
            self.write_checkpoint(state)?;
        }
        Ok(())
    }

    /// Seals the active segment (its seal is the checkpoint of the whole
    /// log at its end) and starts the next.
    fn rotate(&self, state: &mut State) -> Result<(), ServiceError> {
        if let Some(note) = state.log.rotate(&[&self.signer], None)? {
            self.stats.segment(0, true);
            self.sealed(state, "seal", &note);
        }
        Ok(())
    }

    /// Writes a checkpoint note for the log, atomically, and to syslog.
    fn write_checkpoint(&self, state: &mut State) -> Result<(), ServiceError> {
        let checkpoint = Checkpoint {
            origin: self.signer.verifier().name().to_owned(),
            size: state.log.size(),
            root: state.log.root(),
            extensions: vec![],
        };
        let note = self
            .signer
            .sign(&checkpoint.text())
            .expect("checkpoint text ends in a newline");
        let dir = self.config.log_dir.join(CHECKPOINTS);
        write_durably(
            &dir,
            &format!("{:020}.note", state.log.size()),
            note.as_bytes(),
            Readers::Directory,
        )
        .map_err(|source| ServiceError::Io {
            action: "write a checkpoint in",
            path: dir.clone(),
            source,
        })?;
        self.sealed(state, "checkpoint", &note);
        Ok(())
    }

    /// The log is sealed up to its end by `note` (a checkpoint or a seal).
    fn sealed(&self, state: &mut State, kind: &str, note: &str) {
        state.sealed = state.log.size();
        state.last_checkpoint = Instant::now();
        self.stats.sealed(state.sealed);
        if self.config.syslog {
            to_syslog(false, format!("{kind} {}", note.replace('\n', "\\n")));
        }
    }

    /// The clock's work, every few hundred milliseconds: a checkpoint once
    /// `checkpoint_interval_secs` passed with entries unsealed, and every
    /// `metrics_interval_secs` free space (a `low_space` entry when it
    /// crossed the mark) and the metrics file, written after the log's
    /// lock is released. `Err` once the service must stop.
    pub(super) fn tick(&self) -> Result<(), ()> {
        let metrics_due = {
            let mut state = self.lock();
            if state.failed.is_some() {
                return Err(());
            }
            let interval = Duration::from_secs(self.config.metrics_interval_secs.get());
            let due = state.last_metrics.is_none_or(|at| at.elapsed() >= interval);
            let result = self.seal_if_due(&mut state, true).and_then(|()| {
                if due {
                    state.last_metrics = Some(Instant::now());
                    self.space(&mut state)
                } else {
                    Ok(())
                }
            });
            if let Err(e) = result {
                state.failed = Some(e);
                return Err(());
            }
            due
        };
        if metrics_due && let Some(path) = &self.config.metrics_file {
            match self.stats.write_file(&self.config, path) {
                Ok(()) => self.metrics_failing.store(false, Ordering::Relaxed),
                Err(e) if !self.metrics_failing.swap(true, Ordering::Relaxed) => eprintln!(
                    "deepseek-audit: warning: cannot write metrics_file {}: {e} (said once until it works again)",
                    path.display()
                ),
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Free space, and the low-water mark's entry, alone, when no record
    /// brought it.
    fn space(&self, state: &mut State) -> Result<(), ServiceError> {
        let free = self.free()?;
        if let Some(entry) = self.low_water(state, free) {
            let started = Instant::now();
            state.log.append(vec![Entry {
                time_ns: now_ns(),
                ..entry
            }])?;
            self.stats.appended(
                std::iter::once(Event::LowSpace),
                state.log.size(),
                started.elapsed(),
                state.log.last_sync(),
            );
        }
        Ok(())
    }

    /// Stops appending, seals what is unsealed (or an empty log's first
    /// checkpoint), and says why the service stopped if it failed.
    pub(super) fn close(&self) -> Result<(), ServiceError> {
        let mut state = self.lock();
        state.closed = true;
        if let Some(failed) = state.failed.take() {
            return Err(failed);
        }
        if state.log.size() > state.sealed || state.sealed == 0 {
            self.write_checkpoint(&mut state)?;
        }
        Ok(())
    }
}
