//! `deepseek-audit serve`: the audit service. Accepts records from allowed
//! peers (SO_PEERCRED) on a Unix socket as length-prefixed frames, appends
//! them with group commit (one `fdatasync` per batch, each writer waiting
//! for its own batch), acknowledges each only once it is on disk, writes a
//! signed checkpoint every N entries, every T seconds and at shutdown (to
//! `checkpoints/` and to syslog), and stops on any write or sync failure
//! or when free space falls under the floor.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::socket::{getsockopt, sockopt};
use serde::{Deserialize, Serialize};

use deepseek_integrity::config::from_toml;
use deepseek_integrity::keys::configured_verifier;

use crate::checkpoint::Checkpoint;
use crate::entry::Entry;
use crate::note::{NoteSigner, NoteVerifier};
use crate::storage::{LogFile, StorageError};

/// `audit.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    #[serde(default = "default_log_dir")]
    pub log_dir: PathBuf,
    #[serde(default = "default_key")]
    pub signing_key: PathBuf,
    /// The checkpoint verifier key (`name+hash+base64`), for `log verify`.
    #[serde(default)]
    pub verifier_key: Option<String>,
    /// Or the file holding it (`keygen --verifier-out`), for a
    /// configuration that cannot hold a key made at install.
    #[serde(default)]
    pub verifier_key_file: Option<PathBuf>,
    /// The key of either, read and checked at load.
    #[serde(skip)]
    pub verifier: Option<NoteVerifier>,
    /// Peers allowed to append, by uid.
    #[serde(default)]
    pub allowed_uids: Vec<u32>,
    /// And by user name, looked up when `serve` starts: system users get
    /// their uids at install (systemd-sysusers), so a static file cannot
    /// list them by number.
    #[serde(default)]
    pub allowed_users: Vec<String>,
    #[serde(default = "default_frame")]
    pub max_frame_bytes: usize,
    #[serde(default = "default_every")]
    pub checkpoint_every: std::num::NonZeroU64,
    #[serde(default = "default_interval")]
    pub checkpoint_interval_secs: u64,
    /// Stop (and refuse records) when the log's filesystem has less free.
    #[serde(default = "default_floor")]
    pub min_free_bytes: u64,
    /// Also send every checkpoint to syslog, so a copy lives elsewhere.
    #[serde(default = "yes")]
    pub syslog: bool,
}

/// Why `audit.toml` cannot be used: the same errors, and the same
/// messages, as deepseek-integrity's configuration.
pub use deepseek_integrity::config::ConfigError;

impl ServiceConfig {
    /// Reads and parses the file, and the verifier key it names.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Self = from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        config.verifier = configured_verifier(
            "",
            config.verifier_key.as_deref(),
            config.verifier_key_file.as_deref(),
            NoteVerifier::parse,
        )
        .map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            key: e.key().to_owned(),
            message: e.to_string(),
        })?;
        Ok(config)
    }

    /// The uids allowed to append: `allowed_uids` and the users of
    /// `allowed_users`. `path` (the file this was loaded from) is for
    /// messages only.
    pub fn allowed_peers(&self, path: &Path) -> Result<Vec<u32>, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: "allowed_users".to_owned(),
            message,
        };
        let mut uids = self.allowed_uids.clone();
        for name in &self.allowed_users {
            match nix::unistd::User::from_name(name) {
                Ok(Some(user)) => uids.push(user.uid.as_raw()),
                Ok(None) => {
                    return Err(invalid(format!(
                        "user {name:?} does not exist on this system"
                    )));
                }
                Err(e) => return Err(invalid(format!("cannot look up user {name:?}: {e}"))),
            }
        }
        if uids.is_empty() {
            return Err(invalid(
                "empty, and so is allowed_uids: no peer could append a record (list the daemon's \
                 user, e.g. allowed_users = [\"deepseek\"])"
                    .to_owned(),
            ));
        }
        Ok(uids)
    }
}

fn default_socket() -> PathBuf {
    PathBuf::from("/run/deepseek-audit/audit.sock")
}
fn default_log_dir() -> PathBuf {
    PathBuf::from("/var/lib/deepseek-audit")
}
fn default_key() -> PathBuf {
    PathBuf::from("/etc/deepseek/audit.key")
}
fn default_frame() -> usize {
    1 << 20
}
fn default_every() -> std::num::NonZeroU64 {
    std::num::NonZeroU64::new(1000).expect("non-zero")
}
fn default_interval() -> u64 {
    60
}
fn default_floor() -> u64 {
    64 << 20
}
fn yes() -> bool {
    true
}

/// One record sent by a client.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub tag: u64,
    pub entry: Entry,
}

/// The auditor's answer: the record's sequence number once durable.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub tag: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

/// Reads a frame's 4-byte big-endian length; `None` at a clean end.
fn read_length(stream: &mut impl Read) -> std::io::Result<Option<usize>> {
    let mut length = [0u8; 4];
    match stream.read_exact(&mut length) {
        Ok(()) => Ok(Some(u32::from_be_bytes(length) as usize)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads one frame: a 4-byte big-endian length, then that many bytes.
pub fn read_frame(stream: &mut impl Read, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    let Some(length) = read_length(stream)? else {
        return Ok(None);
    };
    if length > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {length} bytes over the limit of {max}"),
        ));
    }
    let mut frame = vec![0u8; length];
    stream.read_exact(&mut frame)?;
    Ok(Some(frame))
}

/// Writes one frame.
pub fn write_frame(stream: &mut impl Write, payload: &[u8]) -> std::io::Result<()> {
    let length =
        u32::try_from(payload.len()).map_err(|_| std::io::Error::other("frame too large"))?;
    stream.write_all(&length.to_be_bytes())?;
    stream.write_all(payload)
}

/// Why the service stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(
        "free space on {path} is {free} bytes, under min_free_bytes = {floor}: stopped accepting records"
    )]
    DiskFull {
        path: PathBuf,
        free: u64,
        floor: u64,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refusing to append: {reason} (investigate with `deepseek-audit log verify`)")]
    Tampered { reason: String },
}

struct Pending {
    entry: Entry,
    tag: u64,
    reply: Sender<Reply>,
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
    if config.syslog {
        let formatter = syslog::Formatter3164 {
            facility: syslog::Facility::LOG_AUTHPRIV,
            hostname: None,
            process: "deepseek-audit".into(),
            pid: std::process::id(),
        };
        match syslog::unix(formatter) {
            Ok(mut logger) => {
                let _ = logger.notice(format!("checkpoint {}", note.replace('\n', "\\n")));
            }
            Err(e) => {
                eprintln!("deepseek-audit: warning: cannot send the checkpoint to syslog: {e}")
            }
        }
    }
    Ok(())
}

/// The single writer: takes what is pending, appends it as one batch with
/// one sync, answers every writer in it, and seals checkpoints.
fn writer(
    config: &ServiceConfig,
    signer: &NoteSigner,
    mut log: LogFile,
    queue: Receiver<Pending>,
    stop: &AtomicBool,
    sealed: u64,
) -> Result<(), ServiceError> {
    let interval = Duration::from_secs(config.checkpoint_interval_secs.max(1));
    let mut sealed = sealed;
    let mut last_checkpoint = Instant::now();
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
            let free = free_bytes(&config.log_dir).map_err(|source| ServiceError::Io {
                action: "check free space on",
                path: config.log_dir.clone(),
                source,
            })?;
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
            let entries = batch
                .iter()
                .map(|p| Entry {
                    time_ns: time,
                    ..p.entry.clone()
                })
                .collect();
            match log.append(entries) {
                Ok(seqs) => {
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
        let due = log.size() - sealed >= config.checkpoint_every.get()
            || (log.size() > sealed && last_checkpoint.elapsed() >= interval);
        if due {
            write_checkpoint(config, signer, &log)?;
            sealed = log.size();
            last_checkpoint = Instant::now();
        }
        if stop.load(Ordering::Relaxed) && queue.try_recv().is_err() {
            break;
        }
    }
    if log.size() > sealed || sealed == 0 {
        write_checkpoint(config, signer, &log)?;
    }
    Ok(())
}

/// One frame as the service reads it: a record to parse, or one too large
/// to hold, skipped so that the connection stays in step.
enum Incoming {
    Frame(Vec<u8>),
    Oversized { length: usize, tag: Option<u64> },
}

/// Reads one frame, or skips one over `max` bytes without holding it. Its
/// tag is read from the prefix every client writes first (`{"tag":N,`), so
/// the refusal reaches the record's writer.
fn read_incoming(stream: &mut impl Read, max: usize) -> std::io::Result<Option<Incoming>> {
    let Some(length) = read_length(stream)? else {
        return Ok(None);
    };
    if length <= max {
        let mut frame = vec![0u8; length];
        stream.read_exact(&mut frame)?;
        return Ok(Some(Incoming::Frame(frame)));
    }
    let mut prefix = [0u8; 32];
    let head = prefix.len().min(length);
    stream.read_exact(&mut prefix[..head])?;
    let rest = (length - head) as u64;
    if std::io::copy(&mut stream.take(rest), &mut std::io::sink())? != rest {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Some(Incoming::Oversized {
        length,
        tag: leading_tag(&prefix[..head]),
    }))
}

/// The tag of a frame that starts `{"tag":N`, if it does.
fn leading_tag(prefix: &[u8]) -> Option<u64> {
    let digits = prefix.strip_prefix(br#"{"tag":"#)?;
    let end = digits.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// Just the tag of a record that does not parse, to answer it.
#[derive(Deserialize)]
struct TagOnly {
    tag: u64,
}

/// One client connection: reads records, queues them, and writes the
/// replies as they come back (in order). A record that is too large or
/// malformed is answered with an error under its tag (0 when even that is
/// unreadable) and the connection goes on: one bad record must not cut off
/// the records behind it.
fn connection(mut stream: UnixStream, max: usize, queue: Sender<Pending>) {
    let Ok(mut replies) = stream.try_clone() else {
        return;
    };
    let (reply_tx, reply_rx) = mpsc::channel::<Reply>();
    let responder = std::thread::spawn(move || {
        for reply in reply_rx {
            let bytes = serde_json::to_vec(&reply).expect("replies serialize");
            if write_frame(&mut replies, &bytes).is_err() {
                return;
            }
        }
    });
    let refuse = |tag: Option<u64>, error: String| {
        eprintln!("deepseek-audit: refused a record: {error}");
        let _ = reply_tx.send(Reply {
            tag: tag.unwrap_or(0),
            seq: None,
            error: Some(error),
        });
    };
    while let Ok(Some(incoming)) = read_incoming(&mut stream, max) {
        let frame = match incoming {
            Incoming::Frame(frame) => frame,
            Incoming::Oversized { length, tag } => {
                refuse(
                    tag,
                    format!("record of {length} bytes over max_frame_bytes = {max}"),
                );
                continue;
            }
        };
        match serde_json::from_slice::<Request>(&frame) {
            Ok(request) => {
                if queue
                    .send(Pending {
                        entry: request.entry,
                        tag: request.tag,
                        reply: reply_tx.clone(),
                    })
                    .is_err()
                {
                    let _ = reply_tx.send(Reply {
                        tag: request.tag,
                        seq: None,
                        error: Some("the audit service is stopping".into()),
                    });
                    break;
                }
            }
            Err(e) => refuse(
                serde_json::from_slice::<TagOnly>(&frame)
                    .ok()
                    .map(|t| t.tag),
                format!("malformed record: {e}"),
            ),
        }
    }
    drop(reply_tx);
    let _ = responder.join();
}

/// The log, opened and verified against its checkpoints: what [`serve`]
/// appends to. Opened before the socket is bound, so that a client can
/// connect only once the service is ready to record.
#[derive(Debug)]
pub struct Opened {
    log: LogFile,
    torn: Option<crate::storage::TornTail>,
    sealed: u64,
}

/// Opens the log and verifies it: the slow part of the start (the whole
/// log is read), done before anything listens.
pub fn open(config: &ServiceConfig, signer: &NoteSigner) -> Result<Opened, ServiceError> {
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
    let (log, torn) = LogFile::open(&config.log_dir)?;
    // Never sign on top of a log that does not verify against its own
    // checkpoints: new checkpoints would otherwise bless a rewrite.
    let verifier = signer.verifier();
    if let Some(configured) = &config.verifier
        && *configured != verifier
    {
        return Err(ServiceError::Tampered {
            reason: format!(
                "the configured verifier key {configured} is not the key of signing_key ({verifier})"
            ),
        });
    }
    let (bytes, checkpoints) = crate::storage::read_log(&config.log_dir)?;
    let sealed = crate::verify::verify(&bytes, &checkpoints, &verifier, None)
        .map_err(|e| ServiceError::Tampered {
            reason: e.to_string(),
        })?
        .sealed;
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
    let (queue_tx, queue_rx) = mpsc::channel::<Pending>();
    if let Some(torn) = torn {
        // Recorded like any event: the removal is part of the history.
        let mut details = std::collections::BTreeMap::new();
        details.insert("offset".to_owned(), torn.offset.to_string());
        details.insert("bytes_dropped".to_owned(), torn.bytes.to_string());
        let entry = Entry {
            details,
            ..Entry::event(crate::entry::Event::TornTailRemoved)
        };
        let (tx, _rx) = mpsc::channel();
        queue_tx
            .send(Pending {
                entry,
                tag: 0,
                reply: tx,
            })
            .expect("queue open");
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
        let accept_queue = queue_tx.clone();
        let mut refusals = RefusalLog::default();
        scope.spawn(move || {
            while !accept_stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        match getsockopt(&stream, sockopt::PeerCredentials) {
                            Ok(cred) if allowed.contains(&cred.uid()) => {
                                let queue = accept_queue.clone();
                                std::thread::spawn(move || connection(stream, max, queue));
                            }
                            Ok(cred) => refusals.log(format_args!(
                                "peer uid={} gid={} pid={}: not in allowed_uids or allowed_users",
                                cred.uid(),
                                cred.gid(),
                                cred.pid()
                            )),
                            Err(e) => refusals.log(format_args!("a peer without credentials: {e}")),
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => eprintln!("deepseek-audit: accept failed: {e}"),
                }
            }
        });
        drop(queue_tx);
        let result = writer(config, &signer, log, queue_rx, &stop, sealed);
        stop.store(true, Ordering::Relaxed);
        notify(&[sd_notify::NotifyState::Stopping]);
        result
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
    fn log(&mut self, who: std::fmt::Arguments<'_>) {
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

        /// The frame decoder reads whatever a client sends: it never panics,
        /// never returns more than the limit, and refuses larger claims
        /// before allocating.
        #[test]
        fn frames_never_panic_or_exceed_the_limit(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut reader = bytes.as_slice();
            if let Ok(Some(frame)) = read_frame(&mut reader, 16) {
                prop_assert!(frame.len() <= 16);
            }
        }
    }

    /// `audit.toml` holding `text`, and a verifier key file (mode 0644)
    /// holding `key`, both in `dir`.
    fn files(dir: &tempfile::TempDir, text: &str, key: &str) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let config = dir.path().join("audit.toml");
        let public = dir.path().join("audit.pub");
        std::fs::write(&public, key).expect("key file");
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::write(&config, text.replace("PUB", &public.display().to_string()))
            .expect("config");
        (config, public)
    }

    fn load(dir: &tempfile::TempDir, text: &str, key: &str) -> Result<ServiceConfig, String> {
        let (config, _) = files(dir, text, key);
        ServiceConfig::load(&config).map_err(|e| e.to_string())
    }

    fn verifier() -> String {
        NoteSigner::from_seed("deepseek-audit/test", [7; 32])
            .expect("signer")
            .verifier()
            .to_string()
    }

    #[test]
    fn the_verifier_key_may_be_inline_or_in_a_file_or_absent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = verifier();
        let inline = load(&dir, &format!("verifier_key = \"{key}\"\n"), "").expect("inline");
        let file = load(&dir, "verifier_key_file = \"PUB\"\n", &format!("{key}\n")).expect("file");
        assert_eq!(inline.verifier, file.verifier);
        assert_eq!(file.verifier.expect("set").to_string(), key);
        assert!(load(&dir, "", "").expect("neither").verifier.is_none());
    }

    #[test]
    fn verifier_key_errors_name_the_file_and_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.toml");
        let key = verifier();
        let err = load(
            &dir,
            &format!("verifier_key = \"{key}\"\nverifier_key_file = \"PUB\"\n"),
            &key,
        )
        .expect_err("both");
        assert_eq!(
            err,
            format!(
                "{}: verifier_key_file: conflicts with verifier_key: set only one of the two",
                path.display()
            )
        );
        let err = load(&dir, "verifier_key_file = \"audit.pub\"\n", &key).expect_err("relative");
        assert_eq!(
            err,
            format!(
                "{}: verifier_key_file: expected an absolute path, got \"audit.pub\"",
                path.display()
            )
        );
        let (config, public) = files(
            &dir,
            "verifier_key_file = \"PUB\"\n",
            "deepseek+0000000g+AA\n",
        );
        let err = ServiceConfig::load(&config)
            .expect_err("bad key")
            .to_string();
        assert_eq!(
            err,
            format!(
                "{}: verifier_key_file: {}: malformed key: the hash is not hex",
                path.display(),
                public.display()
            )
        );
        std::fs::remove_file(&public).expect("remove");
        let err = ServiceConfig::load(&config)
            .expect_err("missing")
            .to_string();
        assert_eq!(
            err,
            format!(
                "{}: verifier_key_file: cannot read {}: No such file or directory (os error 2)",
                path.display(),
                public.display()
            )
        );
    }

    #[test]
    fn parse_errors_name_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = load(&dir, "allowed_users = [1]\n", "").expect_err("bad type");
        assert!(
            err.starts_with(&format!(
                "{}: allowed_users[0]: TOML parse error at line 1",
                dir.path().join("audit.toml").display()
            )),
            "{err}"
        );
    }

    #[test]
    fn allowed_users_are_resolved_and_someone_must_be_allowed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.toml");
        let config = load(
            &dir,
            "allowed_uids = [4242]\nallowed_users = [\"root\"]\n",
            "",
        )
        .expect("config");
        assert_eq!(config.allowed_peers(&path).expect("resolved"), [4242, 0]);
        let config = load(&dir, "allowed_users = [\"no-such-user-42\"]\n", "").expect("config");
        assert_eq!(
            config
                .allowed_peers(&path)
                .expect_err("unknown")
                .to_string(),
            format!(
                "{}: allowed_users: user \"no-such-user-42\" does not exist on this system",
                path.display()
            )
        );
        let config = load(&dir, "", "").expect("config");
        let err = config.allowed_peers(&path).expect_err("nobody").to_string();
        assert!(
            err.starts_with(&format!(
                "{}: allowed_users: empty, and so is allowed_uids: no peer could append",
                path.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn a_claimed_length_over_the_limit_is_refused() {
        let mut reader: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        let err = read_frame(&mut reader, 1024).expect_err("too large");
        assert!(err.to_string().contains("over the limit of 1024"), "{err}");
    }
}
