//! Who is on the other end of a connection, as the kernel reports it, and
//! whether the configured allow-list admits them.

use std::collections::BTreeSet;
use std::fmt;
use std::os::fd::AsFd;

use nix::sys::socket::{getsockopt, sockopt};
use nix::unistd::{Gid, Group, Uid};

use crate::config::ServerConfig;

/// The credentials of a connected client, read once when it connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    /// Supplementary groups (`SO_PEERGROUPS`), so that membership added with
    /// `usermod -aG deepseek` counts, not only the primary group.
    pub groups: Vec<u32>,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid={} gid={} pid={}", self.uid, self.gid, self.pid)
    }
}

impl Peer {
    /// Reads `SO_PEERCRED` and `SO_PEERGROUPS` from a connected Unix socket.
    /// These are the credentials the client had when it called `connect`, so
    /// a client cannot change them afterwards.
    pub(crate) fn of(socket: &impl AsFd) -> std::io::Result<Self> {
        let cred = getsockopt(socket, sockopt::PeerCredentials)?;
        let groups = crate::sys::peer::groups(socket)?;
        Ok(Self {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
            groups,
        })
    }
}

/// The uids and gids allowed to use the API, resolved once at startup.
#[derive(Debug, Clone)]
pub(crate) struct AccessPolicy {
    uids: BTreeSet<u32>,
    gids: BTreeSet<u32>,
}

/// A group named in the configuration does not exist on this system.
#[derive(Debug, thiserror::Error)]
#[error("group {group:?} does not exist on this system{hint}")]
pub(crate) struct UnknownGroup {
    /// The configuration key that named it, e.g. `server.allowed_groups`.
    pub key: &'static str,
    pub group: String,
    hint: &'static str,
}

impl UnknownGroup {
    fn new(key: &'static str, group: &str) -> Self {
        let hint = if group == "deepseek" {
            " (create it with `groupadd --system deepseek`, or set the key explicitly)"
        } else {
            ""
        };
        Self {
            key,
            group: group.to_owned(),
            hint,
        }
    }
}

/// Looks a group up by name.
pub(crate) fn resolve_group(key: &'static str, name: &str) -> Result<Gid, UnknownGroup> {
    match Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid),
        _ => Err(UnknownGroup::new(key, name)),
    }
}

impl AccessPolicy {
    /// Builds the policy from `[server]`: `allowed_uids` (default: `own_uid`,
    /// the uid the daemon runs as once locked down) and the gids of
    /// `allowed_groups`.
    pub(crate) fn from_config(config: &ServerConfig, own_uid: Uid) -> Result<Self, UnknownGroup> {
        let uids = match &config.allowed_uids {
            Some(uids) => uids.iter().copied().collect(),
            None => BTreeSet::from([own_uid.as_raw()]),
        };
        let gids = config
            .allowed_groups
            .iter()
            .map(|name| resolve_group("server.allowed_groups", name).map(Gid::as_raw))
            .collect::<Result<_, _>>()?;
        Ok(Self { uids, gids })
    }

    /// A peer is admitted when its uid is listed, or its primary or any
    /// supplementary group is.
    pub(crate) fn admits(&self, peer: &Peer) -> bool {
        self.uids.contains(&peer.uid)
            || self.gids.contains(&peer.gid)
            || peer.groups.iter().any(|g| self.gids.contains(g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(uids: &[u32], gids: &[u32]) -> AccessPolicy {
        AccessPolicy {
            uids: uids.iter().copied().collect(),
            gids: gids.iter().copied().collect(),
        }
    }

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid,
            pid: 1,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn admits_by_uid_primary_gid_or_supplementary_group() {
        let policy = policy(&[1000], &[500]);
        assert!(policy.admits(&peer(1000, 1000, &[])));
        assert!(policy.admits(&peer(1001, 500, &[])));
        assert!(policy.admits(&peer(1001, 1001, &[20, 500])));
        assert!(!policy.admits(&peer(1001, 1001, &[20])));
    }

    #[test]
    fn reads_own_credentials_from_a_socket_pair() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let peer = Peer::of(&a).expect("peer credentials");
        assert_eq!(peer.uid, Uid::current().as_raw());
        assert_eq!(
            peer.pid,
            i32::try_from(std::process::id()).expect("pid fits")
        );
        assert_eq!(peer.gid, Gid::current().as_raw());
    }

    #[test]
    fn unknown_group_is_named_with_a_hint() {
        let err = resolve_group("server.allowed_groups", "no-such-group-xyz").expect_err("unknown");
        assert_eq!(err.key, "server.allowed_groups");
        assert_eq!(
            err.to_string(),
            "group \"no-such-group-xyz\" does not exist on this system"
        );
        let err = resolve_group("server.socket_group", "deepseek-absent").expect_err("unknown");
        assert!(
            err.to_string().ends_with("does not exist on this system"),
            "{err}"
        );
    }
}
