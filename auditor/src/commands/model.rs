//! `deepseek-audit model`: the model store's operations (import, activate,
//! rollback, remove, list), each recorded in the audit log before it takes
//! effect. The store itself is the integrity library's
//! ([`deepseek_integrity::store`]); this command adds the record, and
//! refuses the operation when the record cannot be made.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use deepseek_integrity::bundle::ReleaseKeys;
use deepseek_integrity::config::Config;
use deepseek_integrity::store::{self, Operation, Pending, Store, StoreError};

use crate::client;
use crate::entry::{Entry, Event, Peer};
use crate::exit::{self, fail};
use crate::service::ServiceConfig;

/// Shown after `model --help`; the same table is in
/// docs/guide/exit-codes.md.
pub(crate) const EXIT_CODES: &str = "\
Exit codes:
  0   done (and recorded)
  17  the integrity configuration is invalid, or does not record the store
  18  a file could not be read or written
  24  the integrity database is missing or malformed, or the store disagrees
      with it
  25  interrupted (SIGINT, SIGTERM)
  26  a signature or key is refused: the bundle is not signed by a pinned
      release key, or the integrity signing key is not the pinned one
  27  the bundle is malformed or does not match its signed manifest
  28  the store refused: unknown model or version, a version already
      imported or already active, the active version removed, nothing to
      roll back to, another operation running
  64  bad command line
  71  --restart: systemctl restart deepseekd.service failed (the activation
      is done and recorded)
  74  the operation could NOT be recorded in the audit log, so it was
      undone (nothing changed); or it was recorded and then failed (a second
      entry says so)
  78  audit.toml is missing or invalid: nothing was done";

/// What to do, and with which files.
#[derive(Debug)]
pub(crate) struct Options<'a> {
    pub(crate) integrity_config: &'a Path,
    pub(crate) store: &'a Path,
    /// Release keys for an import (default: every `*.pub` in
    /// `/etc/deepseek/release-keys`).
    pub(crate) keys: &'a [PathBuf],
    pub(crate) jobs: Option<usize>,
    pub(crate) timeout: Duration,
    /// Restart deepseekd after an activation, so that it serves it.
    pub(crate) restart: bool,
    pub(crate) json: bool,
}

/// One store operation.
#[derive(Debug)]
pub(crate) enum Action {
    Import {
        bundle: PathBuf,
        activate: bool,
        keep: usize,
    },
    Activate {
        name: String,
        version: String,
    },
    Rollback {
        name: String,
    },
    Remove {
        name: String,
        version: String,
    },
    List,
}

/// Why a run stopped: the message is printed, the code returned.
struct Failed(u8, String);

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Self {
        Self(e.exit() as u8, e.to_string())
    }
}

/// Runs the subcommand; `audit_config` is `audit.toml` (for the socket).
pub(crate) fn run(audit_config: &Path, action: &Action, options: &Options<'_>) -> ExitCode {
    match run_inner(audit_config, action, options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failed(code, message)) => fail(code, &message),
    }
}

fn run_inner(audit_config: &Path, action: &Action, options: &Options<'_>) -> Result<(), Failed> {
    let config = Config::load(options.integrity_config).map_err(StoreError::from)?;
    if let Action::List = action {
        let list = store::list(&config, options.store)?;
        print_list(&list, options.json);
        return Ok(());
    }
    let socket = ServiceConfig::load(audit_config)
        .map_err(|e| {
            Failed(
                exit::CONFIG,
                format!("{e}: nothing was done, as it could not be recorded"),
            )
        })?
        .socket;
    let interrupted = deepseek_integrity::check::interrupt_on_signals()
        .map_err(|e| Failed(e.exit() as u8, e.to_string()))?;
    let scan = deepseek_integrity::check::scan_options(options.jobs, false);
    // What the store writes is root's and readable by the daemon's user,
    // whatever umask the operator's shell has (docs/guide/models.md).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let store = Store::open(config, options.store, scan, interrupted)?;
    let recorder = Recorder {
        socket: &socket,
        store: options.store,
        timeout: options.timeout,
    };
    // The release keys that imported and activated versions must be
    // signed by.
    let keys = || {
        if options.keys.is_empty() {
            ReleaseKeys::from_dir(Path::new(deepseek_integrity::bundle::cli::RELEASE_KEYS_DIR))
        } else {
            ReleaseKeys::from_files(options.keys)
        }
        .map_err(StoreError::from)
    };
    let activated = match action {
        Action::List => unreachable!("listed above"),
        Action::Import {
            bundle,
            activate,
            keep,
        } => {
            let keys = keys()?;
            let file = std::fs::File::open(bundle).map_err(|e| {
                Failed(
                    deepseek_integrity::exit::Exit::Io as u8,
                    format!("cannot read {}: {e}", bundle.display()),
                )
            })?;
            let pending = store.import(std::io::BufReader::with_capacity(1 << 20, file), &keys)?;
            let (name, version) = (pending.name.clone(), pending.version.clone());
            recorder.commit(pending)?;
            if *activate {
                recorder.commit(store.activate(&name, &version, &keys)?)?;
            }
            for old in store.surplus(&name, *keep, &version)? {
                recorder.commit(store.remove(&name, &old)?)?;
            }
            *activate
        }
        Action::Activate { name, version } => {
            recorder.commit(store.activate(name, version, &keys()?)?)?;
            true
        }
        Action::Rollback { name } => {
            recorder.commit(store.rollback(name, &keys()?)?)?;
            true
        }
        Action::Remove { name, version } => {
            recorder.commit(store.remove(name, version)?)?;
            false
        }
    };
    if activated {
        if options.restart {
            restart()?;
        } else {
            eprintln!(
                "deepseek-audit: deepseekd serves the new version once restarted \
                 (systemctl restart deepseekd.service, or --restart)"
            );
        }
    }
    Ok(())
}

/// Records operations through the audit service.
struct Recorder<'a> {
    socket: &'a Path,
    store: &'a Path,
    timeout: Duration,
}

impl Recorder<'_> {
    /// Records `pending`, then commits it; undone (by dropping it) when the
    /// record fails. A commit that fails after the record is recorded too.
    fn commit(&self, pending: Pending<'_>) -> Result<(), Failed> {
        let entry = self.entry(&pending);
        let what = format!(
            "{} of {} {}",
            pending.operation.as_str(),
            pending.name,
            pending.version
        );
        let seq = match client::append(self.socket, &entry, self.timeout) {
            Ok(seq) => seq,
            Err(e) => {
                drop(pending); // undone
                // A record that timed out may still land later: say that
                // the operation under its id did not take effect.
                let mut undone = entry.clone();
                undone
                    .details
                    .insert("result".to_owned(), "undone".to_owned());
                undone.details.insert("error".to_owned(), e.to_string());
                let _ = client::append(self.socket, &undone, self.timeout);
                return Err(Failed(
                    exit::IO,
                    format!("the {what} was NOT recorded in the audit log, so it was undone: {e}"),
                ));
            }
        };
        if let Err(e) = pending.commit() {
            let mut failed = entry.clone();
            failed
                .details
                .insert("failed_seq".to_owned(), seq.to_string());
            failed.details.insert("error".to_owned(), e.to_string());
            let note = match client::append(self.socket, &failed, self.timeout) {
                Ok(at) => format!("entry {at} records the failure"),
                Err(r) => format!("the failure could not be recorded ({r})"),
            };
            return Err(Failed(
                e.exit() as u8,
                format!("the {what}, recorded as entry {seq}, then failed: {e}; {note}"),
            ));
        }
        println!("{what}: done, recorded as audit entry {seq}");
        Ok(())
    }

    /// The entry for `pending`: the operation, the version, its origin,
    /// and who ran it.
    fn entry(&self, pending: &Pending<'_>) -> Entry {
        let event = match pending.operation {
            Operation::Import => Event::ModelImport,
            Operation::Activate => Event::ModelActivate,
            Operation::Rollback => Event::ModelRollback,
            Operation::Remove => Event::ModelRemove,
        };
        let mut details = BTreeMap::new();
        let mut put = |key: &str, value: String| {
            details.insert(key.to_owned(), value);
        };
        put("store", self.store.display().to_string());
        put("version", pending.version.clone());
        if let Some(previous) = &pending.previous {
            put("previous_version", previous.clone());
        }
        if let Some(origin) = &pending.origin {
            put("bundle_sha256", origin.bundle_sha256.clone());
            put("signer", origin.signer.clone());
            if pending.operation == Operation::Import {
                put("linked_files", origin.linked_files.to_string());
            }
        }
        let uid = nix::unistd::getuid().as_raw();
        put("operator_uid", uid.to_string());
        // The login uid survives sudo and su: the person, not just root.
        if let Some(login) = std::fs::read_to_string("/proc/self/loginuid")
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .filter(|&l| l != u32::MAX)
        {
            put("login_uid", login.to_string());
        }
        // One id for the operation's entries: its record, and a later
        // `undone` or `failed_seq` entry about it.
        let mut id = [0u8; 16];
        let _ = getrandom::getrandom(&mut id);
        Entry {
            model: Some(pending.name.clone()),
            request_id: Some(deepseek_integrity::digest::hex(&id)),
            peer: Some(Peer {
                uid,
                gid: nix::unistd::getgid().as_raw(),
                pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
                exe: std::env::current_exe()
                    .ok()
                    .map(|p| p.display().to_string()),
            }),
            details,
            ..Entry::event(event)
        }
    }
}

/// `systemctl restart deepseekd.service`, so that the daemon serves the
/// version just activated (a socket-activated daemon's socket stays open:
/// clients wait instead of being refused).
fn restart() -> Result<(), Failed> {
    let status = std::process::Command::new("systemctl")
        .args(["restart", "deepseekd.service"])
        .status()
        .map_err(|e| Failed(exit::OS, format!("cannot run systemctl: {e}")))?;
    if !status.success() {
        return Err(Failed(
            exit::OS,
            format!(
                "systemctl restart deepseekd.service failed ({status}): the activation is \
                 recorded; see journalctl -u deepseekd"
            ),
        ));
    }
    println!("deepseekd restarted");
    Ok(())
}

fn print_list(list: &[store::VersionInfo], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(list).expect("the list serializes")
        );
        return;
    }
    if list.is_empty() {
        println!("no models in the store");
        return;
    }
    println!(
        "{:<24} {:<16} {:<7} {:<9} {:<24} BUNDLE",
        "MODEL", "VERSION", "ACTIVE", "SIGNED", "SIGNER"
    );
    for v in list {
        let (signer, bundle) = v.origin.as_ref().map_or(("-", "-".to_owned()), |o| {
            (o.signer.as_str(), format!("sha256:{}", o.bundle_sha256))
        });
        println!(
            "{:<24} {:<16} {:<7} {:<9} {:<24} {bundle}",
            v.name,
            v.version,
            if v.active { "active" } else { "" },
            if v.recorded { "yes" } else { "NO" },
            signer
        );
    }
}
