//! The inputs the checks share, each read once and only when a selected
//! check needs it: the configurations, the integrity database, the audit
//! log and the running daemon.

use std::cell::OnceCell;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::finding::Undecided;
use super::procfs;
use super::profile::Profile;
use crate::entry::{Entry, Event};
use crate::service::ServiceConfig;

/// The part of `deepseekd.toml` the checks read. Unknown keys are ignored:
/// the daemon validates its own file strictly (`deepseekd check-config`);
/// the defaults here are the daemon's.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct DaemonView {
    #[serde(default)]
    pub server: ServerView,
    #[serde(default)]
    pub sandbox: SandboxView,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct ServerView {
    pub socket: PathBuf,
    pub socket_mode: u32,
    pub socket_group: Option<String>,
}

impl Default for ServerView {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/deepseek/deepseekd.sock"),
            socket_mode: 0o660,
            socket_group: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct SandboxView {
    pub user: String,
}

impl Default for SandboxView {
    fn default() -> Self {
        Self {
            user: "deepseek".to_owned(),
        }
    }
}

/// The integrity configuration and what loading its database gave.
#[derive(Debug)]
pub(crate) struct Integrity {
    pub config: deepseek_integrity::config::Config,
    pub database:
        Result<Vec<deepseek_integrity::entry::Entry>, deepseek_integrity::database::DatabaseError>,
}

/// The audit log as read and verified.
#[derive(Debug)]
pub(crate) struct AuditLog {
    pub entries: Vec<Entry>,
    pub verified: Result<crate::history::History, crate::history::HistoryError>,
}

/// The running daemon and how it was found.
#[derive(Debug, Clone)]
pub(crate) struct DaemonProcess {
    pub pid: i32,
    pub found_by: String,
}

/// Everything a run of the checks reads.
#[derive(Debug)]
pub(crate) struct Context {
    pub profile: Profile,
    pub profile_path: PathBuf,
    pub audit_config_path: PathBuf,
    /// The daemon's pid from `--pid`, instead of looking for it.
    pub pid: Option<i32>,
    pub root: bool,
    audit_config: OnceCell<Result<ServiceConfig, Undecided>>,
    daemon_config: OnceCell<Result<DaemonView, Undecided>>,
    integrity: OnceCell<Result<Integrity, Undecided>>,
    log: OnceCell<Result<AuditLog, Undecided>>,
    daemon: OnceCell<Result<DaemonProcess, Undecided>>,
}

fn shared<T>(
    cell: &OnceCell<Result<T, Undecided>>,
    load: impl FnOnce() -> Result<T, Undecided>,
) -> Result<&T, Undecided> {
    cell.get_or_init(load).as_ref().map_err(Clone::clone)
}

impl Context {
    pub(crate) fn new(
        profile: Profile,
        profile_path: PathBuf,
        audit_config_path: PathBuf,
        pid: Option<i32>,
    ) -> Self {
        Self {
            profile,
            profile_path,
            audit_config_path,
            pid,
            root: nix::unistd::Uid::effective().is_root(),
            audit_config: OnceCell::new(),
            daemon_config: OnceCell::new(),
            integrity: OnceCell::new(),
            log: OnceCell::new(),
            daemon: OnceCell::new(),
        }
    }

    /// `audit.toml`.
    pub(crate) fn audit_config(&self) -> Result<&ServiceConfig, Undecided> {
        shared(&self.audit_config, || {
            ServiceConfig::load(&self.audit_config_path)
                .map_err(|e| Undecided::Error(format!("{e} (the audit configuration, --config)")))
        })
    }

    /// `deepseekd.toml` (`files.daemon_config`).
    pub(crate) fn daemon_config(&self) -> Result<&DaemonView, Undecided> {
        shared(&self.daemon_config, || {
            let path = &self.profile.files.daemon_config;
            let text = std::fs::read_to_string(path).map_err(|e| {
                Undecided::Error(format!(
                    "cannot read {} (files.daemon_config of the profile): {e}",
                    path.display()
                ))
            })?;
            toml::from_str(&text).map_err(|e| Undecided::Error(format!("{}: {e}", path.display())))
        })
    }

    /// `integrity.toml` (`files.integrity_config`) and its database, loaded
    /// with the pinned key.
    pub(crate) fn integrity(&self) -> Result<&Integrity, Undecided> {
        shared(&self.integrity, || {
            let config =
                deepseek_integrity::config::Config::load(&self.profile.files.integrity_config)
                    .map_err(|e| {
                        Undecided::Error(format!("{e} (files.integrity_config of the profile)"))
                    })?;
            let database = deepseek_integrity::database::load(&config.database, config.verifier());
            Ok(Integrity { config, database })
        })
    }

    /// The audit log, read and verified against the configured key.
    pub(crate) fn log(&self) -> Result<&AuditLog, Undecided> {
        shared(&self.log, || {
            let config = self.audit_config()?;
            let verifier = config
                .verifier_or(None)
                .map_err(|e| Undecided::Error(e.to_string()))?;
            let sources = crate::history::Sources {
                live: Some(&config.log_dir),
                archives: &[],
            };
            let verified = crate::history::verify(sources, &verifier, None);
            if let Err(crate::history::HistoryError::Storage(crate::storage::StorageError::Io {
                path,
                source,
                ..
            })) = &verified
            {
                return Err(procfs::denied_or_error(path, source));
            }
            // The records of the live segments, in order.
            let mut entries = Vec::new();
            for piece in verified.iter().flat_map(|h| &h.pieces) {
                let bytes = piece.read().map_err(|e| Undecided::Error(e.to_string()))?;
                entries.extend(
                    bytes
                        .split(|&b| b == b'\n')
                        .filter_map(|line| Entry::decode(line).ok()),
                );
            }
            Ok(AuditLog { entries, verified })
        })
    }

    /// The log's records, but only once the log verified: records from a
    /// log that does not verify are not evidence.
    pub(crate) fn verified_entries(&self) -> Result<&[Entry], Undecided> {
        let log = self.log()?;
        match &log.verified {
            Ok(_) => Ok(&log.entries),
            Err(e) => Err(Undecided::Error(format!(
                "the audit log does not verify, so its records are not evidence (AUDIT-LOG): {e}"
            ))),
        }
    }

    /// The daemon's last start record with this pid, and the records after
    /// it. A record written before the process started (an earlier daemon
    /// that had the same pid) does not count.
    pub(crate) fn start_record(&self, pid: i32) -> Result<Option<(&Entry, &[Entry])>, Undecided> {
        let entries = self.verified_entries()?;
        let started = procfs::start_time_ns(pid)?;
        let pid = pid.to_string();
        Ok(entries
            .iter()
            .rposition(|e| {
                e.event == Event::Start
                    && e.details.get("pid") == Some(&pid)
                    && e.time_ns >= started
            })
            .map(|i| (&entries[i], &entries[i + 1..])))
    }

    /// The daemon's `model_load` records: those after its start record
    /// ([`Context::start_record`]) up to the next start, with that start.
    pub(crate) fn model_loads(&self, pid: i32) -> Result<Option<(&Entry, Vec<&Entry>)>, Undecided> {
        Ok(self.start_record(pid)?.map(|(start, after)| {
            let loads = after
                .iter()
                .take_while(|e| e.event != Event::Start)
                .filter(|e| e.event == Event::ModelLoad)
                .collect();
            (start, loads)
        }))
    }

    /// The running daemon: `--pid`, then `daemon.pidfile`, then the unit's
    /// `MainPID` when systemd is PID 1, then the process holding the
    /// daemon's listening socket.
    pub(crate) fn daemon(&self) -> Result<&DaemonProcess, Undecided> {
        shared(&self.daemon, || self.find_daemon())
    }

    fn find_daemon(&self) -> Result<DaemonProcess, Undecided> {
        let alive = |pid: i32, found_by: String| {
            if Path::new(&format!("/proc/{pid}")).exists() {
                Ok(DaemonProcess { pid, found_by })
            } else {
                Err(Undecided::Error(format!(
                    "{found_by}, but no process {pid} is running"
                )))
            }
        };
        if let Some(pid) = self.pid {
            return alive(pid, format!("pid {pid} given with --pid"));
        }
        if let Some(pidfile) = &self.profile.daemon.pidfile {
            let text = std::fs::read_to_string(pidfile)
                .map_err(|e| procfs::denied_or_error(pidfile, &e))?;
            let pid = text.trim().parse().map_err(|_| {
                Undecided::Error(format!(
                    "{}: expected a pid, found {:?}",
                    pidfile.display(),
                    text.trim()
                ))
            })?;
            return alive(pid, format!("pid {pid} read from {}", pidfile.display()));
        }
        if systemd_booted() {
            let unit = &self.profile.daemon.unit;
            let output = std::process::Command::new("systemctl")
                .args(["show", "--property=MainPID", "--value", unit])
                .output()
                .map_err(|e| Undecided::Error(format!("cannot run systemctl show {unit}: {e}")))?;
            let pid: i32 = String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse()
                .unwrap_or(0);
            if pid > 0 {
                return alive(pid, format!("MainPID {pid} of {unit}"));
            }
            return Err(Undecided::Error(format!(
                "{unit} is not running (systemctl show: MainPID=0)"
            )));
        }
        let socket = &self.daemon_config()?.server.socket;
        let listeners = procfs::unix_listeners(socket)?;
        if listeners.is_empty() {
            return Err(Undecided::Error(format!(
                "no daemon found: nothing listens on {} (server.socket of {}) and systemd is not PID 1",
                socket.display(),
                self.profile.files.daemon_config.display()
            )));
        }
        if !self.root {
            return Err(Undecided::NeedsRoot(format!(
                "finding the process that holds {} reads every process's /proc/PID/fd",
                socket.display()
            )));
        }
        // PID 1 holds the socket too when it passed it (socket activation).
        let holders: Vec<(i32, String)> = procfs::holders(&listeners)
            .into_iter()
            .filter(|(pid, _)| *pid != 1)
            .collect();
        match holders.as_slice() {
            [(pid, _)] => alive(
                *pid,
                format!(
                    "pid {pid}, the process holding the listening socket {}",
                    socket.display()
                ),
            ),
            [] => Err(Undecided::Error(format!(
                "the listening socket {} is held by no process",
                socket.display()
            ))),
            many => Err(Undecided::Error(format!(
                "several processes hold {}: {}; pass --pid",
                socket.display(),
                many.iter()
                    .map(|(p, c)| format!("{p} ({c})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

/// Whether systemd is the init system (`sd_booted(3)`'s test).
pub(crate) fn systemd_booted() -> bool {
    Path::new("/run/systemd/system").is_dir()
}
