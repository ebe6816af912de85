//! AUDIT: the audit trail is intact, sealed, being written, and out of the
//! daemon's reach.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Group, User};

use super::check::Check;
use super::context::Context;
use super::finding::{Evidence, Finding, Undecided};
use super::procfs;

pub(crate) static CHECKS: &[Check] = &[
    Check {
        id: "AUDIT-LOG",
        title: "The audit log verifies",
        rationale: "The log is the record of every request; its Merkle tree, entry chain and signed checkpoints must all verify, or an entry was edited, deleted, inserted or truncated.",
        remediation: "Keep the log and the host as evidence; `deepseek-audit log verify` names the first bad entry or the checkpoint range that changed. Compare with the checkpoints sent to syslog (`--trusted-checkpoint`).",
        references: &["AU-9", "AU-10", "SI-7"],
        run: log,
    },
    Check {
        id: "AUDIT-UNSEALED",
        title: "The unsealed tail of the audit log is under the limit",
        rationale: "Entries after the last signed checkpoint are protected by the entry chain only, not by a signature; a long unsealed tail means the auditor stopped sealing.",
        remediation: "Check that deepseek-audit is running and can write checkpoints (its journal); restart it, which seals the log at start and shutdown.",
        references: &["AU-9", "AU-10"],
        run: unsealed,
    },
    Check {
        id: "AUDIT-SERVICE",
        title: "The audit service is running and reachable",
        rationale: "With audit.required the daemon refuses every request the auditor does not record; a stopped auditor means the appliance serves nothing, or, misconfigured, serves unaudited.",
        remediation: "Start it (`systemctl start deepseek-audit`) and read its journal for why it stopped (a full disk stops it on purpose).",
        references: &["AU-5", "AU-12"],
        run: service,
    },
    Check {
        id: "AUDIT-PERMISSIONS",
        title: "The log and the audit key are not writable by the daemon's user",
        rationale: "Privilege separation: the daemon may only append through the auditor's socket. If its user can write the log directory, a file in it or the signing key, a compromised daemon can rewrite the trail.",
        remediation: "Make the log directory and key owned by the auditor's user with mode 0700/0600 (`chown -R deepseek-audit: /var/lib/deepseek-audit; chmod 0700 ...`), and remove the daemon's user from their groups.",
        references: &["AU-9", "AC-6", "AC-3"],
        run: permissions,
    },
    Check {
        id: "AUDIT-SPACE",
        title: "The audit log's filesystem is above the low-water mark",
        rationale: "Under min_free_bytes the auditor stops and, with audit.required, the daemon refuses every request; warn_free_bytes is the warning before that, time to move old records off the machine or grow the filesystem.",
        remediation: "Free space on the log's filesystem: archive and remove what else lives there, or grow it; never remove files from the log directory itself (verification would fail).",
        references: &["AU-4", "AU-5"],
        run: space,
    },
];

fn space(context: &Context) -> Result<Finding, Undecided> {
    let config = context.audit_config()?;
    let free = crate::storage::free_bytes(&config.log_dir)
        .map_err(|e| procfs::denied_or_error(&config.log_dir, &e))?;
    let observed = format!("{free} bytes free");
    Ok(Finding::verdict(
        free < config.warn_free_bytes,
        format!("{observed}, above warn_free_bytes"),
        format!(
            "{observed}, under warn_free_bytes = {} (the service stops at min_free_bytes = {})",
            config.warn_free_bytes, config.min_free_bytes
        ),
        vec![Evidence::new(
            format!("statvfs({})", config.log_dir.display()),
            observed,
            format!("at least warn_free_bytes = {}", config.warn_free_bytes),
        )],
    ))
}

fn log(context: &Context) -> Result<Finding, Undecided> {
    let config = context.audit_config()?;
    let log = context.log()?;
    let source = config.log_dir.display().to_string();
    Ok(match &log.verified {
        Ok(v) => Finding::pass(
            format!(
                "{} entries, {} checkpoints, sealed up to {}",
                v.entries, v.checkpoints, v.sealed
            ),
            vec![Evidence::new(
                source,
                format!(
                    "{} entries, {} checkpoints verified, sealed up to {}, unsealed tail {}",
                    v.entries, v.checkpoints, v.sealed, v.unsealed
                ),
                "tree, entry chain and every checkpoint verify",
            )],
        ),
        Err(e) => Finding::fail(
            e.to_string(),
            vec![Evidence::new(
                source,
                e.to_string(),
                "tree, entry chain and every checkpoint verify",
            )],
        ),
    })
}

fn unsealed(context: &Context) -> Result<Finding, Undecided> {
    let config = context.audit_config()?;
    let limit = context
        .profile
        .thresholds
        .max_unsealed_entries
        .unwrap_or(config.checkpoint_every.get());
    let v = match &context.log()?.verified {
        Ok(v) => v,
        Err(e) => {
            return Err(Undecided::Error(format!(
                "the audit log does not verify (AUDIT-LOG): {e}"
            )));
        }
    };
    Ok(Finding::verdict(
        v.unsealed > limit,
        format!("{} unsealed entries (limit {limit})", v.unsealed),
        format!("{} unsealed entries, over the limit of {limit}", v.unsealed),
        vec![Evidence::new(
            format!(
                "{} (entries after checkpoint {})",
                config.log_dir.display(),
                v.sealed
            ),
            v.unsealed.to_string(),
            format!("<= {limit}"),
        )],
    ))
}

fn service(context: &Context) -> Result<Finding, Undecided> {
    let config = context.audit_config()?;
    let socket = &config.socket;
    let mut evidence = Vec::new();
    let connected = std::os::unix::net::UnixStream::connect(socket);
    evidence.push(Evidence::new(
        format!("connect({})", socket.display()),
        match &connected {
            Ok(_) => "accepted".to_owned(),
            Err(e) => e.to_string(),
        },
        "accepted",
    ));
    if context.root
        && let Ok(listeners) = procfs::unix_listeners(socket)
    {
        let holders = procfs::holders(&listeners);
        evidence.push(Evidence::new(
            format!("/proc/*/fd holding {}", socket.display()),
            holders
                .iter()
                .map(|(pid, comm)| format!("pid {pid} ({comm})"))
                .collect::<Vec<_>>()
                .join(", "),
            "the deepseek-audit process",
        ));
    }
    Ok(Finding::verdict(
        connected.is_err(),
        format!("listening on {}", socket.display()),
        format!("not reachable at {}", socket.display()),
        evidence,
    ))
}

/// A user and every group it belongs to.
struct Account {
    name: String,
    uid: u32,
    gids: Vec<u32>,
}

fn account(name: &str, key: &str) -> Result<Account, Undecided> {
    let user = User::from_name(name)
        .map_err(|e| Undecided::Error(format!("cannot look up user {name:?} ({key}): {e}")))?
        .ok_or_else(|| Undecided::Error(format!("user {name:?} ({key}) does not exist")))?;
    let c_name = std::ffi::CString::new(name)
        .map_err(|_| Undecided::Error(format!("bad user name {name:?}")))?;
    let gids = nix::unistd::getgrouplist(&c_name, user.gid)
        .unwrap_or_else(|_| vec![user.gid])
        .into_iter()
        .map(Gid::as_raw)
        .collect();
    Ok(Account {
        name: name.to_owned(),
        uid: user.uid.as_raw(),
        gids,
    })
}

/// Why `account` can write a file with this metadata (mode bits; root
/// aside, which is why the daemon must not stay root), or `None`.
fn writable_by(meta: &std::fs::Metadata, account: &Account) -> Option<String> {
    let mode = meta.mode();
    if meta.uid() == account.uid {
        return (mode & 0o200 != 0)
            .then(|| format!("owned by {} with mode {:04o}", account.name, mode & 0o7777));
    }
    if account.gids.contains(&meta.gid()) && mode & 0o020 != 0 {
        let group = Group::from_gid(Gid::from_raw(meta.gid()))
            .ok()
            .flatten()
            .map_or_else(|| meta.gid().to_string(), |g| g.name);
        return Some(format!(
            "group-writable (mode {:04o}) by group {group}, which {} is in",
            mode & 0o7777,
            account.name
        ));
    }
    (mode & 0o002 != 0).then(|| format!("world-writable (mode {:04o})", mode & 0o7777))
}

fn permissions(context: &Context) -> Result<Finding, Undecided> {
    let config = context.audit_config()?;
    let user = &context.daemon_config()?.sandbox.user;
    let daemon = account(user, "sandbox.user of the daemon's configuration")?;
    if daemon.uid == 0 {
        return Ok(Finding::fail(
            format!("the daemon's user {user} is root, which can write everything"),
            vec![Evidence::new(
                "sandbox.user",
                user.clone(),
                "an unprivileged user",
            )],
        ));
    }
    // The log directory, everything in it, the key, and every directory
    // above them (renaming a parent replaces the whole log).
    // A sticky parent (`/tmp`) lets no one rename another user's entry.
    let mut paths: Vec<PathBuf> = Vec::new();
    let keys: Vec<&PathBuf> = std::iter::once(&config.signing_key)
        .chain(config.previous_signing_key.as_ref())
        .collect();
    for top in std::iter::once(&config.log_dir).chain(keys.iter().copied()) {
        paths.extend(
            top.ancestors()
                .skip(1)
                .filter(|p| !p.as_os_str().is_empty())
                .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.mode() & 0o1000 == 0))
                .map(Path::to_path_buf),
        );
    }
    // A file the service replaces while this walks (a checkpoint's or the
    // metrics file's temporary) is gone by the time it is read: not a finding.
    let vanished = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    for item in walkdir::WalkDir::new(&config.log_dir) {
        let item = match item {
            Ok(item) => item,
            Err(e) if e.io_error().is_some_and(vanished) && e.path() != Some(&config.log_dir) => {
                continue;
            }
            Err(e) => {
                let path = e.path().unwrap_or(&config.log_dir).to_owned();
                return Err(match e.into_io_error() {
                    Some(io) => procfs::denied_or_error(&path, &io),
                    None => Undecided::Error(format!("cannot walk {}", path.display())),
                });
            }
        };
        paths.push(item.into_path());
    }
    paths.extend(keys.iter().map(|k| (*k).clone()));
    paths.sort();
    paths.dedup();
    let mut evidence = Vec::new();
    for path in &paths {
        let meta = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e)
                if vanished(&e) && path.starts_with(&config.log_dir) && path != &config.log_dir =>
            {
                continue;
            }
            Err(e) => return Err(procfs::denied_or_error(path, &e)),
        };
        if let Some(why) = writable_by(&meta, &daemon) {
            evidence.push(Evidence::new(
                path.display().to_string(),
                why,
                format!("not writable by {user}"),
            ));
        }
    }
    let failed = !evidence.is_empty();
    if !failed {
        evidence.push(Evidence::new(
            format!(
                "{} and {} (with their parents)",
                config.log_dir.display(),
                config.signing_key.display()
            ),
            format!(
                "{} paths, none writable by {user} (uid {})",
                paths.len(),
                daemon.uid
            ),
            format!("not writable by {user}"),
        ));
    }
    Ok(Finding::verdict(
        failed,
        format!("{} paths, none writable by {user}", paths.len()),
        format!("{} paths writable by {user}", evidence.len()),
        evidence,
    ))
}
