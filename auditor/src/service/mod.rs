//! `deepseek-audit serve`: the audit service. Accepts records from allowed
//! peers (SO_PEERCRED) on a Unix socket as length-prefixed frames, appends
//! them with group commit (one `fdatasync` per batch: the records a
//! connection sent while the last sync ran), acknowledges each only once
//! it is on disk, writes a signed checkpoint every N entries, every T
//! seconds and at shutdown (to `checkpoints/` and to syslog), and stops on
//! any write or sync failure or when free space falls under the floor.

mod config;
mod error;
mod recorder;
mod stats;
mod wire;

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt};

pub(crate) use config::VerifierError;
pub use config::{ConfigError, ServiceConfig};
pub use error::ServiceError;
pub use wire::{Reply, Request};
pub(crate) use wire::{read_frame, write_frame};

use crate::entry::{Entry, Event};
use crate::storage::{LogFile, TornTail};
use deepseek_integrity::note::NoteSigner;
use recorder::Recorder;
use wire::{Incoming, TagOnly, read_incoming};

/// Frames read from a connection at once: a batch of records, whole.
const READ_BUFFER: usize = 256 << 10;
/// Records appended as one batch, at most.
const MAX_BATCH: usize = 4096;

/// Whether `buffered` starts with a whole frame.
fn whole_frame(buffered: &[u8]) -> bool {
    buffered.len() >= 4
        && buffered.len() - 4
            >= u32::from_be_bytes([buffered[0], buffered[1], buffered[2], buffered[3]]) as usize
}

/// One client connection: waits for a record, takes with it every record
/// already read (the daemon sends all it has at once), appends them as one
/// batch, and answers them in one write, on this thread: no hop to another
/// thread on the way. A record that is too large or malformed is answered
/// with an error under its tag (0 when even that is unreadable) and the
/// connection goes on: one bad record must not cut off the records behind
/// it. A client that does not read its answers holds up only itself.
fn connection(stream: UnixStream, max: usize, recorder: &Recorder) {
    let Ok(mut replies) = stream.try_clone() else {
        return;
    };
    let mut reader = std::io::BufReader::with_capacity(READ_BUFFER, stream);
    let mut out = Vec::new();
    loop {
        let mut tags = Vec::new();
        let mut entries = Vec::new();
        let mut answers = Vec::new();
        let mut next = match read_incoming(&mut reader, max) {
            Ok(Some(incoming)) => Some(incoming),
            _ => return,
        };
        while let Some(incoming) = next {
            match incoming {
                Incoming::Frame(frame) => match serde_json::from_slice::<Request>(&frame) {
                    // The events only the service itself writes: a client
                    // must not claim a torn tail, a low disk or a new key.
                    Ok(request) if request.entry.event.service_only() => {
                        answers.push(refused(
                            Some(request.tag),
                            format!(
                                "{} entries are written by the audit service only",
                                request.entry.event.as_str()
                            ),
                        ));
                    }
                    Ok(request) => {
                        tags.push(request.tag);
                        entries.push(request.entry);
                    }
                    Err(e) => answers.push(refused(
                        serde_json::from_slice::<TagOnly>(&frame)
                            .ok()
                            .map(|t| t.tag),
                        format!("malformed record: {e}"),
                    )),
                },
                Incoming::Oversized { length, tag } => answers.push(refused(
                    tag,
                    format!("record of {length} bytes over max_frame_bytes = {max}"),
                )),
            }
            next = if entries.len() < MAX_BATCH && whole_frame(reader.buffer()) {
                read_incoming(&mut reader, max).ok().flatten()
            } else {
                None
            };
        }
        if !entries.is_empty() {
            match recorder.append(entries) {
                Ok(seqs) => answers.extend(tags.into_iter().zip(seqs).map(|(tag, seq)| Reply {
                    tag,
                    seq: Some(seq),
                    error: None,
                })),
                Err(error) => answers.extend(tags.into_iter().map(|tag| Reply {
                    tag,
                    seq: None,
                    error: Some(error.to_owned()),
                })),
            }
        }
        out.clear();
        for answer in &answers {
            let bytes = serde_json::to_vec(answer).expect("replies serialize");
            write_frame(&mut out, &bytes).expect("writing to memory");
        }
        if replies.write_all(&out).is_err() {
            return;
        }
    }
}

/// The answer to a record refused before the log: logged, under its tag.
fn refused(tag: Option<u64>, error: String) -> Reply {
    eprintln!("deepseek-audit: refused a record: {error}");
    Reply {
        tag: tag.unwrap_or(0),
        seq: None,
        error: Some(error),
    }
}

/// The log, opened and verified against its checkpoints: what [`serve`]
/// appends to. Opened before the socket is bound, so that a client can
/// connect only once the service is ready to record.
#[derive(Debug)]
pub struct Opened {
    log: LogFile,
    torn: Option<TornTail>,
    sealed: u64,
}

/// Opens the log and verifies its whole live history from the first
/// pinned key (the configured verifier key, else `signer`'s): the slow
/// part of the start, done before anything listens. When the log's key is
/// `previous`'s, not `signer`'s, hands it over: a `key_rotated` entry,
/// then a seal signed by both keys.
pub fn open(
    config: &ServiceConfig,
    signer: &NoteSigner,
    previous: Option<&NoteSigner>,
) -> Result<Opened, ServiceError> {
    std::fs::create_dir_all(&config.log_dir).map_err(|source| ServiceError::Io {
        action: "create",
        path: config.log_dir.clone(),
        source,
    })?;
    // Only the auditor's user may enter its log directory.
    std::fs::set_permissions(
        &config.log_dir,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o700),
    )
    .map_err(|source| ServiceError::Io {
        action: "restrict the mode of",
        path: config.log_dir.clone(),
        source,
    })?;
    // A torn last line was never acknowledged: cut before verifying.
    let torn = crate::storage::prepare_active(&config.log_dir)?;
    // Never sign on top of a log that does not verify against its own
    // checkpoints: new checkpoints would otherwise bless a rewrite. The
    // chain of keys starts at the pinned first key; without one, at the
    // key being handed over from, else at signing_key's.
    let verifier = signer.verifier();
    let pinned = config
        .verifier
        .clone()
        .or_else(|| previous.map(NoteSigner::verifier))
        .unwrap_or_else(|| verifier.clone());
    let sources = crate::history::Sources {
        live: Some(&config.log_dir),
        archives: &[],
    };
    let history = crate::history::verify(sources, &pinned, None).map_err(|e| {
        let hint = if config.verifier.is_none() {
            format!(
                "; no verifier_key is set, so the chain of keys was followed from {pinned}: set \
                 verifier_key to the log's first key"
            )
        } else {
            String::new()
        };
        ServiceError::Tampered {
            reason: format!("{e}{hint}"),
        }
    })?;
    let mut log = LogFile::open(&config.log_dir, &history.tail)?;
    let current = history.keys.last().unwrap_or(&pinned);
    let mut sealed = history.sealed;
    if *current != verifier {
        let previous = previous
            .filter(|p| p.verifier() == *current)
            .ok_or_else(|| ServiceError::KeyChange {
                log_key: current.to_string(),
                signing_key: verifier.to_string(),
            })?;
        let mut entry = Entry::event(Event::KeyRotated);
        entry.details.insert("from".into(), current.to_string());
        entry.details.insert("to".into(), verifier.to_string());
        log.append(vec![Entry {
            time_ns: recorder::now_ns(),
            ..entry
        }])?;
        log.rotate(&[previous, signer], Some(verifier.to_string()))?;
        sealed = log.size();
        eprintln!(
            "deepseek-audit: handed the log over from {current} to {verifier}: segment sealed by both; \
             previous_signing_key is no longer needed"
        );
    } else if previous.is_some() {
        eprintln!(
            "deepseek-audit: the log is already signed with signing_key: previous_signing_key is not needed"
        );
    }
    Ok(Opened { log, torn, sealed })
}

/// Runs the service on the log [`open`] verified until `stop` is set
/// (SIGTERM/SIGINT) or a write fails. `allowed` are the uids that may
/// append ([`ServiceConfig::allowed_peers`]).
pub fn serve(
    config: &ServiceConfig,
    opened: Opened,
    allowed: Vec<u32>,
    signer: NoteSigner,
    listener: UnixListener,
    stop: Arc<AtomicBool>,
) -> Result<(), ServiceError> {
    let Opened { log, torn, sealed } = opened;
    let recorder = Arc::new(Recorder::new(config.clone(), signer, log, sealed));
    if let Some(torn) = torn {
        // Recorded like any event: the removal is part of the history.
        let mut details = std::collections::BTreeMap::new();
        details.insert("offset".to_owned(), torn.offset.to_string());
        details.insert("bytes_dropped".to_owned(), torn.bytes.to_string());
        let entry = Entry {
            details,
            ..Entry::event(Event::TornTailRemoved)
        };
        // A failure here stops the service at the first tick.
        let _ = recorder.append(vec![entry]);
        eprintln!(
            "deepseek-audit: removed a torn last entry at offset {} ({} bytes, never acknowledged)",
            torn.offset, torn.bytes
        );
    }
    listener
        .set_nonblocking(true)
        .map_err(|source| ServiceError::Io {
            action: "configure",
            path: config.socket.clone(),
            source,
        })?;
    let max = config.max_frame_bytes;
    // Under systemd (Type=notify): ready once the log is open and verified.
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!(
            "recording; the log verified, sealed up to entry {sealed}"
        )),
    ]);
    std::thread::scope(|scope| {
        let accept_stop = Arc::clone(&stop);
        let mut refusals = RefusalLog::default();
        let accept_recorder = Arc::clone(&recorder);
        scope.spawn(move || {
            let stats = &accept_recorder.stats;
            while !accept_stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        match getsockopt(&stream, sockopt::PeerCredentials) {
                            Ok(cred) if allowed.contains(&cred.uid()) => {
                                let recorder = Arc::clone(&accept_recorder);
                                std::thread::spawn(move || connection(stream, max, &recorder));
                            }
                            Ok(cred) => refusals.log(stats, format_args!(
                                "peer uid={} gid={} pid={}: not in allowed_uids or allowed_users",
                                cred.uid(),
                                cred.gid(),
                                cred.pid()
                            )),
                            Err(e) => refusals.log(
                                stats,
                                format_args!("a peer without credentials: {e}"),
                            ),
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => eprintln!("deepseek-audit: accept failed: {e}"),
                }
            }
        });
        // The clock: checkpoints by time, free space, metrics.
        while !stop.load(Ordering::Relaxed) && recorder.tick().is_ok() {
            std::thread::sleep(Duration::from_millis(200));
        }
        stop.store(true, Ordering::Relaxed);
        notify(&[sd_notify::NotifyState::Stopping]);
        recorder.close()
    })
}

/// Refused peers, logged at most once a second with a count of those left
/// out since: whoever can reach the socket cannot flood the journal.
#[derive(Debug, Default)]
struct RefusalLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    fn log(&mut self, stats: &stats::Stats, who: std::fmt::Arguments<'_>) {
        stats.refused_peer();
        if self
            .last
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            self.unlogged += 1;
            return;
        }
        let unlogged = std::mem::take(&mut self.unlogged);
        let since = if unlogged > 0 {
            format!(" ({unlogged} more refused since the last line)")
        } else {
            String::new()
        };
        eprintln!("deepseek-audit: refused {who}{since}");
        self.last = Some(Instant::now());
    }
}

/// Tells systemd, when it is listening; a failure is only reported.
fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        eprintln!("deepseek-audit: warning: cannot notify systemd: {e}");
    }
}
