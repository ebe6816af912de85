//! systemd's notification protocol (sd_notify(3)) for `Type=notify`:
//! `STATUS=` lines while starting, `READY=1` once every model is loaded and
//! the lockdown is complete, `WATCHDOG=1` pings only while the daemon is
//! healthy, and `STOPPING=1` at shutdown.
//!
//! The datagram socket is created and connected while the daemon is still
//! single-threaded and unconfined: afterwards the seccomp filter refuses new
//! `AF_UNIX` datagram sockets and Landlock scopes abstract sockets. That is
//! why this is not the `sd-notify` crate, which opens a socket per message.
#![forbid(unsafe_code)]

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// `NOTIFY_SOCKET` is set but cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to systemd's notification socket NOTIFY_SOCKET={address}: {source}")]
pub(crate) struct NotifyError {
    address: String,
    source: std::io::Error,
}

/// The connection to systemd, or nothing when not started by systemd.
#[derive(Debug)]
pub(crate) struct Notifier {
    socket: Option<UnixDatagram>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Connects to `$NOTIFY_SOCKET` (a path, or `@name` for an abstract
    /// socket) and reads `$WATCHDOG_USEC` (ignored when `$WATCHDOG_PID`
    /// names another process, as sd_watchdog_enabled(3) does).
    pub(crate) fn from_env() -> Result<Self, NotifyError> {
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.parse::<u64>().ok())
            .filter(|usec| *usec > 0)
            .filter(|_| {
                std::env::var("WATCHDOG_PID")
                    .ok()
                    .and_then(|pid| pid.parse::<u32>().ok())
                    .is_none_or(|pid| pid == std::process::id())
            })
            .map(Duration::from_micros);
        let Some(address) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(Self {
                socket: None,
                watchdog: None,
            });
        };
        let text = address.to_string_lossy().into_owned();
        let error = |source| NotifyError {
            address: text.clone(),
            source,
        };
        let socket = UnixDatagram::unbound().map_err(error)?;
        match text.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                    .map_err(error)?;
                socket.connect_addr(&address).map_err(error)?;
            }
            None => socket.connect(PathBuf::from(&address)).map_err(error)?,
        }
        Ok(Self {
            socket: Some(socket),
            watchdog,
        })
    }

    /// Whether systemd is listening.
    pub(crate) fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// How often to ping: half of `WatchdogSec=`, as sd_watchdog_enabled(3)
    /// advises; `None` without a watchdog.
    pub(crate) fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.is_enabled()).map(|w| w / 2)
    }

    /// Sends newline-separated `KEY=value` assignments. A failure is logged,
    /// never fatal: systemd's view of the daemon is not worth an outage.
    pub(crate) fn send(&self, state: &str) {
        if let Some(socket) = &self.socket
            && let Err(e) = socket.send(state.as_bytes())
        {
            tracing::warn!(error = %e, state, "cannot notify systemd");
        }
    }

    /// A `STATUS=` line, shown by `systemctl status`.
    pub(crate) fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", status.replace('\n', " ")));
    }
}
