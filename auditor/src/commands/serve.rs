//! `deepseek-audit serve`: loads what the service needs, in the order that
//! lets a client connect only once the log is verified, then runs it.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::exit::{self, fail};
use crate::keys;
use crate::service::{self, ServiceConfig};

/// Runs the service until SIGTERM or SIGINT (exit 0) or a failure.
pub(crate) fn run(config_path: &Path) -> ExitCode {
    let config = match ServiceConfig::load(config_path) {
        Ok(config) => config,
        Err(e) => return fail(exit::CONFIG, &e),
    };
    let mut allowed = match config.allowed_peers(config_path) {
        Ok(allowed) => allowed,
        Err(e) => return fail(exit::CONFIG, &e),
    };
    // In a user namespace that does not map every id (systemd
    // PrivateUsers=identity), the overflow uid stands for every unmapped
    // peer: it may never append, whatever the configuration lists.
    if let Some(partial) = crate::userns::Partial::of_this_process() {
        allowed.retain(|&uid| {
            let keep = uid != partial.overflow_uid && partial.uids.maps(uid);
            if !keep {
                eprintln!(
                    "deepseek-audit: warning: allowed uid {uid} is not mapped in this user namespace \
                     (uids {}; overflow id {}): no peer is admitted by it",
                    partial.uids, partial.overflow_uid
                );
            }
            keep
        });
    }
    let signer = match keys::load(&config.signing_key) {
        Ok(signer) => signer,
        Err(e) => return fail(exit::CONFIG, &e),
    };
    let previous = match config.previous_signing_key.as_deref().map(keys::load) {
        None => None,
        Some(Ok(previous)) => Some(previous),
        Some(Err(e)) => return fail(exit::CONFIG, &e),
    };
    // The log is verified before the socket is bound: a client that
    // connects is recorded at once (under socket activation, its
    // connection waits in the backlog until then).
    let opened = match service::open(&config, &signer, previous.as_ref()) {
        Ok(opened) => opened,
        Err(e @ service::ServiceError::KeyChange { .. }) => return fail(exit::CONFIG, &e),
        Err(e) => return fail(exit::IO, &e),
    };
    let listener = match listen(&config) {
        Ok(listener) => listener,
        Err(e) => return fail(exit::OS, &e),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            return fail(exit::OS, &e);
        }
    }
    match service::serve(&config, opened, allowed, signer, listener, stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(exit::IO, &e),
    }
}

/// Why the service has no socket to listen on.
#[derive(Debug, thiserror::Error)]
enum ListenError {
    #[error("the socket systemd passed (LISTEN_FDS) is unusable: {0}")]
    Passed(std::io::Error),
    #[error("the socket systemd passed (LISTEN_FDS) was already taken")]
    Taken,
    #[error("cannot listen on {}: {source}", path.display())]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The socket systemd passed (`deepseek-audit.socket`, `LISTEN_FDS`), or
/// one bound at `socket`, replacing a stale socket but never anything else
/// (and never a live one).
fn listen(config: &ServiceConfig) -> Result<UnixListener, ListenError> {
    let mut passed = listenfd::ListenFd::from_env();
    if passed.len() > 0 {
        return passed
            .take_unix_listener(0)
            .map_err(ListenError::Passed)?
            .ok_or(ListenError::Taken);
    }
    if let Some(dir) = config.socket.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let stale = std::fs::symlink_metadata(&config.socket).is_ok_and(|m| m.file_type().is_socket())
        && UnixStream::connect(&config.socket).is_err();
    if stale {
        let _ = std::fs::remove_file(&config.socket);
    }
    UnixListener::bind(&config.socket).map_err(|source| ListenError::Bind {
        path: config.socket.clone(),
        source,
    })
}
