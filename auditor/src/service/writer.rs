//! The single writer behind the socket: group commit (one `fdatasync` per
//! batch), the free-space floor, and the signed checkpoints.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::config::ServiceConfig;
use super::error::ServiceError;
use super::stats::Stats;
use super::wire::Reply;
use crate::checkpoint::Checkpoint;
use crate::entry::{Entry, Event};
use crate::note::NoteSigner;
use crate::storage::LogFile;

/// A record waiting for the writer, and where its reply goes.
pub(super) struct Pending {
    pub(super) entry: Entry,
    pub(super) tag: u64,
    pub(super) reply: Sender<Reply>,
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(path)?;
    Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

/// Writes a checkpoint note for the current log, atomically, and to syslog.
fn write_checkpoint(
    config: &ServiceConfig,
    signer: &NoteSigner,
    log: &LogFile,
    stats: &Stats,
) -> Result<(), ServiceError> {
    let checkpoint = Checkpoint {
        origin: signer.verifier().name().to_owned(),
        size: log.size(),
        root: log.root(),
        extensions: vec![],
    };
    let note = signer
        .sign(&checkpoint.text())
        .expect("checkpoint text ends in a newline");
    let dir = config.log_dir.join("checkpoints");
    let io = |action, source| ServiceError::Io {
        action,
        path: dir.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(|e| io("create", e))?;
    let name = format!("{:020}.note", log.size());
    let temporary = dir.join(format!(".{name}.new"));
    let mut file = std::fs::File::create(&temporary).map_err(|e| io("write a checkpoint in", e))?;
    file.write_all(note.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io("write a checkpoint in", e))?;
    std::fs::rename(&temporary, dir.join(&name)).map_err(|e| io("rename a checkpoint in", e))?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync", e))?;
    stats.sealed(log.size());
    if config.syslog {
        to_syslog(false, format!("checkpoint {}", note.replace('\n', "\\n")));
    }
    Ok(())
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

/// Tracks free space against the low-water mark: the `low_space` entry to
/// append when it is crossed downwards (once per crossing), after warning
/// on stderr and syslog.
fn low_water(config: &ServiceConfig, stats: &Stats, free: u64, low: &mut bool) -> Option<Entry> {
    let now_low = free < config.warn_free_bytes;
    stats.free(free, now_low);
    let crossed = now_low && !*low;
    *low = now_low;
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

/// The single writer: takes what is pending, appends it as one batch with
/// one sync, answers every writer in it, and seals checkpoints.
pub(super) fn writer(
    config: &ServiceConfig,
    signer: &NoteSigner,
    mut log: LogFile,
    queue: Receiver<Pending>,
    stop: &AtomicBool,
    sealed: u64,
    stats: &Stats,
) -> Result<(), ServiceError> {
    let interval = Duration::from_secs(config.checkpoint_interval_secs.max(1));
    let metrics_interval = Duration::from_secs(config.metrics_interval_secs.get());
    let mut sealed = sealed;
    let mut last_checkpoint = Instant::now();
    let mut last_metrics: Option<Instant> = None;
    let mut metrics_failing = false;
    let mut low = false;
    let free_space = || {
        free_bytes(&config.log_dir).map_err(|source| ServiceError::Io {
            action: "check free space on",
            path: config.log_dir.clone(),
            source,
        })
    };
    loop {
        let first = match queue.recv_timeout(Duration::from_millis(200)) {
            Ok(first) => Some(first),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if let Some(first) = first {
            let mut batch = vec![first];
            while let Ok(more) = queue.try_recv() {
                batch.push(more);
                if batch.len() >= 4096 {
                    break;
                }
            }
            let free = free_space()?;
            if free < config.min_free_bytes {
                for pending in &batch {
                    let _ = pending.reply.send(Reply {
                        tag: pending.tag,
                        seq: None,
                        error: Some("the audit log is out of space".into()),
                    });
                }
                return Err(ServiceError::DiskFull {
                    path: config.log_dir.clone(),
                    free,
                    floor: config.min_free_bytes,
                });
            }
            let time = now_ns();
            let mut entries: Vec<Entry> = batch
                .iter_mut()
                .map(|p| Entry {
                    time_ns: time,
                    ..std::mem::replace(&mut p.entry, Entry::event(Event::Request))
                })
                .collect();
            // After the batch's own: the replies below pair with the first.
            entries.extend(
                low_water(config, stats, free, &mut low).map(|e| Entry { time_ns: time, ..e }),
            );
            let events: Vec<Event> = entries.iter().map(|e| e.event).collect();
            let started = Instant::now();
            match log.append(entries) {
                Ok(seqs) => {
                    stats.appended(
                        events.into_iter(),
                        log.size(),
                        started.elapsed(),
                        log.last_sync(),
                    );
                    for (pending, seq) in batch.iter().zip(seqs) {
                        let _ = pending.reply.send(Reply {
                            tag: pending.tag,
                            seq: Some(seq),
                            error: None,
                        });
                    }
                }
                Err(e) => {
                    for pending in &batch {
                        let _ = pending.reply.send(Reply {
                            tag: pending.tag,
                            seq: None,
                            error: Some("the audit log cannot be written".into()),
                        });
                    }
                    return Err(e.into());
                }
            }
        }
        if last_metrics.is_none_or(|at| at.elapsed() >= metrics_interval) {
            last_metrics = Some(Instant::now());
            let free = free_space()?;
            if let Some(entry) = low_water(config, stats, free, &mut low) {
                let started = Instant::now();
                log.append(vec![Entry {
                    time_ns: now_ns(),
                    ..entry
                }])?;
                stats.appended(
                    std::iter::once(Event::LowSpace),
                    log.size(),
                    started.elapsed(),
                    log.last_sync(),
                );
            }
            if let Some(path) = &config.metrics_file {
                match stats.write_file(config, path) {
                    Ok(()) => metrics_failing = false,
                    Err(e) if !metrics_failing => {
                        metrics_failing = true;
                        eprintln!(
                            "deepseek-audit: warning: cannot write metrics_file {}: {e} (said once until it works again)",
                            path.display()
                        );
                    }
                    Err(_) => {}
                }
            }
        }
        let due = log.size() - sealed >= config.checkpoint_every.get()
            || (log.size() > sealed && last_checkpoint.elapsed() >= interval);
        if due {
            write_checkpoint(config, signer, &log, stats)?;
            sealed = log.size();
            last_checkpoint = Instant::now();
        }
        if stop.load(Ordering::Relaxed) && queue.try_recv().is_err() {
            break;
        }
    }
    if log.size() > sealed || sealed == 0 {
        write_checkpoint(config, signer, &log, stats)?;
    }
    Ok(())
}
