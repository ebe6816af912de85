//! Steps 2 and 3: leave root for the configured user, and make the process
//! unable to dump core or be attached to.

use nix::sys::resource::{Resource, setrlimit};
use nix::sys::stat::{Mode, umask};
use nix::unistd::{Gid, Uid, User, getresgid, getresuid, setgid, setgroups, setuid};

use super::error::SandboxError;

/// The account the daemon switches to, looked up while still root.
#[derive(Debug, Clone)]
pub(super) struct Account {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
}

/// Why `sandbox.user` cannot be switched to.
#[derive(Debug, thiserror::Error)]
pub(super) enum AccountError {
    #[error("cannot look up user {name:?}: {source}")]
    Lookup { name: String, source: nix::Error },
    #[error(
        "user {name:?} does not exist (create it with `useradd --system --no-create-home {name}`, or set sandbox.user)"
    )]
    Missing { name: String },
    #[error("user {name:?} is root; the daemon must not run as root")]
    Root { name: String },
}

/// Looks up `sandbox.user`; root itself is refused.
pub(super) fn account(name: &str) -> Result<Account, AccountError> {
    let user = User::from_name(name)
        .map_err(|source| AccountError::Lookup {
            name: name.to_owned(),
            source,
        })?
        .ok_or_else(|| AccountError::Missing {
            name: name.to_owned(),
        })?;
    if user.uid.is_root() {
        return Err(AccountError::Root {
            name: name.to_owned(),
        });
    }
    Ok(Account {
        name: name.to_owned(),
        uid: user.uid,
        gid: user.gid,
    })
}

/// Step 2: when root, drop supplementary groups and switch gid and uid (real,
/// effective and saved) to `account`, then prove there is no way back.
pub(super) fn switch_user(account: Option<&Account>) -> Result<String, SandboxError> {
    let step = "2 switch user";
    let Some(account) = account else {
        return Ok(format!(
            "not started as root: running as uid {}",
            Uid::current()
        ));
    };
    let fail = |what: &str, e: nix::Error| SandboxError::new(step, format!("{what}: {e}"));
    setgroups(&[]).map_err(|e| fail("setgroups([])", e))?;
    setgid(account.gid).map_err(|e| fail("setgid", e))?;
    setuid(account.uid).map_err(|e| fail("setuid", e))?;
    let uids = getresuid().map_err(|e| fail("getresuid", e))?;
    let gids = getresgid().map_err(|e| fail("getresgid", e))?;
    if [uids.real, uids.effective, uids.saved] != [account.uid; 3]
        || [gids.real, gids.effective, gids.saved] != [account.gid; 3]
    {
        return Err(SandboxError::new(
            step,
            "real, effective and saved ids did not all change".to_owned(),
        ));
    }
    if setuid(Uid::from_raw(0)).is_ok() {
        return Err(SandboxError::new(
            step,
            "setuid(0) still succeeds after the switch".to_owned(),
        ));
    }
    Ok(format!(
        "switched to {} (uid {}, gid {}), no supplementary groups",
        account.name, account.uid, account.gid
    ))
}

/// Step 3: not dumpable (no core files, no ptrace by the same uid, /proc
/// entries owned by root), core size 0, umask 077.
pub(super) fn restrict_process() -> Result<String, SandboxError> {
    let step = "3 no core dumps";
    nix::sys::prctl::set_dumpable(false)
        .map_err(|e| SandboxError::new(step, format!("prctl(PR_SET_DUMPABLE, 0): {e}")))?;
    // Under systemd's LimitCORE=0 the limit is already 0, and the unit's
    // system call filter may deny setrlimit (@resources): skip it then.
    let core = if core_limit_is_zero() {
        "RLIMIT_CORE already 0"
    } else {
        setrlimit(Resource::RLIMIT_CORE, 0, 0)
            .map_err(|e| SandboxError::new(step, format!("setrlimit(RLIMIT_CORE, 0): {e}")))?;
        "RLIMIT_CORE 0"
    };
    umask(Mode::from_bits_truncate(0o077));
    Ok(format!("PR_SET_DUMPABLE 0, {core}, umask 077"))
}

/// Whether both core-size limits are 0, read from `/proc/self/limits`
/// (getrlimit is prlimit64, in @resources too).
fn core_limit_is_zero() -> bool {
    std::fs::read_to_string("/proc/self/limits").is_ok_and(|limits| {
        limits
            .lines()
            .find_map(|l| l.strip_prefix("Max core file size"))
            .is_some_and(|rest| {
                let mut fields = rest.split_whitespace();
                fields.next() == Some("0") && fields.next() == Some("0")
            })
    })
}

/// Step 5: no execve can ever grant privileges again.
pub(super) fn no_new_privs() -> Result<String, SandboxError> {
    let step = "5 no_new_privs";
    nix::sys::prctl::set_no_new_privs()
        .map_err(|e| SandboxError::new(step, format!("prctl(PR_SET_NO_NEW_PRIVS, 1): {e}")))?;
    match nix::sys::prctl::get_no_new_privs() {
        Ok(true) => Ok("PR_SET_NO_NEW_PRIVS 1".to_owned()),
        other => Err(SandboxError::new(
            step,
            format!("the flag reads back as {other:?}"),
        )),
    }
}
