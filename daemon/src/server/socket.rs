//! The listening Unix socket: inherited from systemd (socket activation) or
//! created at `server.socket` with the configured mode and group.
//!
//! There is deliberately no TCP listener anywhere in the daemon.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, umask};
use nix::unistd::{Gid, Uid};

use crate::config::ServerConfig;

/// Where the listening socket came from.
#[derive(Debug)]
pub(crate) enum Origin {
    /// Passed by systemd (`LISTEN_FDS`); systemd owns the file.
    Systemd,
    /// Created by the daemon at this path. It is left in place on exit (a
    /// locked-down daemon may not unlink it); the next start replaces it.
    Created(PathBuf),
}

/// Why the listening socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SocketError {
    #[error("the socket systemd passed (LISTEN_FDS) is unusable: {0}")]
    Inherited(io::Error),
    #[error("{path} (server.socket) exists and is not a socket; refusing to remove it")]
    NotASocket { path: PathBuf },
    #[error("{path} (server.socket) is in use: another process is listening on it")]
    InUse { path: PathBuf },
    #[error("cannot {action} {path} (server.socket): {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// Takes the socket from systemd if it passed one, otherwise creates it,
/// owned by `owner` (the service user, when the daemon is about to switch to
/// it) and `group` (the resolved `server.socket_group`) when given.
///
/// Must run before any thread exists: it reads and clears `LISTEN_FDS` and
/// changes the process umask for the duration of `bind`.
pub(crate) fn open(
    config: &ServerConfig,
    owner: Option<Uid>,
    group: Option<Gid>,
) -> Result<(UnixListener, Origin), SocketError> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() > 0 {
        if fds.len() > 1 {
            tracing::warn!(
                count = fds.len(),
                "systemd passed several sockets; using the first"
            );
        }
        let listener = fds
            .take_unix_listener(0)
            .map_err(SocketError::Inherited)?
            .ok_or_else(|| SocketError::Inherited(io::Error::other("fd 3 was already taken")))?;
        listener
            .set_nonblocking(true)
            .map_err(SocketError::Inherited)?;
        return Ok((listener, Origin::Systemd));
    }
    let path = config.socket.as_path();
    let io_error = |action, source| SocketError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    remove_stale(path)?;
    // Create the file with no permissions for group and others, then widen
    // them: there is no window in which the socket is more open than asked.
    let previous = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    umask(previous);
    let listener = bound.map_err(|e| io_error("bind", e))?;
    if owner.is_some() || group.is_some() {
        std::os::unix::fs::chown(path, owner.map(Uid::as_raw), group.map(Gid::as_raw))
            .map_err(|e| io_error("set the owner of", e))?;
    }
    std::fs::set_permissions(
        path,
        std::fs::Permissions::from_mode(config.socket_mode.bits()),
    )
    .map_err(|e| io_error("set the mode of", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| io_error("configure", e))?;
    Ok((listener, Origin::Created(path.to_owned())))
}

/// Removes a socket file left by a daemon that died; refuses to touch
/// anything that is not a socket, or a socket someone is listening on.
fn remove_stale(path: &Path) -> Result<(), SocketError> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SocketError::Io {
                action: "inspect",
                path: path.to_owned(),
                source,
            });
        }
    };
    if !metadata.file_type().is_socket() {
        return Err(SocketError::NotASocket {
            path: path.to_owned(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(SocketError::InUse {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing stale socket file");
            std::fs::remove_file(path).map_err(|source| SocketError::Io {
                action: "remove the stale socket",
                path: path.to_owned(),
                source,
            })
        }
        Err(source) => Err(SocketError::Io {
            action: "probe the existing socket",
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> ServerConfig {
        ServerConfig {
            socket: dir.join("d.sock"),
            ..ServerConfig::default()
        }
    }

    #[test]
    fn creates_socket_with_configured_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_listener, origin) = open(&config(dir.path()), None, None).expect("socket opens");
        let mode = std::fs::metadata(dir.path().join("d.sock"))
            .expect("socket exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o660);
        assert!(matches!(origin, Origin::Created(_)));
    }

    #[test]
    fn replaces_a_stale_socket_but_not_a_live_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        let live = UnixListener::bind(&config.socket).expect("bind");
        let err = open(&config, None, None).expect_err("live socket kept");
        assert!(matches!(err, SocketError::InUse { .. }), "{err}");
        drop(live);
        open(&config, None, None).expect("stale socket replaced");
    }

    #[test]
    fn never_removes_a_regular_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        std::fs::write(&config.socket, b"precious").expect("write");
        let err = open(&config, None, None)
            .expect_err("file kept")
            .to_string();
        assert!(
            err.ends_with("exists and is not a socket; refusing to remove it"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(&config.socket).expect("still there"),
            b"precious"
        );
    }
}
