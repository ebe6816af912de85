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
    /// The ids that stand for "not mapped" when this process's user
    /// namespace does not map every id; `None` in the initial namespace.
    overflow: Option<Overflow>,
}

/// What a user namespace that maps only some ids reports for the others:
/// under systemd's `PrivateUsers=identity` (ids 0-65535) a client with uid
/// 100000 reads as 65534, like every other such client and `nobody`, so the
/// audit log could not tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Overflow {
    pub uid: u32,
    pub gid: u32,
}

/// The kernel's default overflow id (`/proc/sys/kernel/overflowuid`), used
/// where `/proc/sys` is hidden (`ProcSubset=pid`).
const DEFAULT_OVERFLOW: u32 = 65534;

impl Overflow {
    /// The overflow ids of this process's user namespace, or `None` when
    /// its uid and gid maps cover every id (the initial namespace). A map
    /// that cannot be read counts as partial: refusing the overflow ids is
    /// the safe side.
    pub(crate) fn of_this_process() -> Option<Self> {
        let whole = |path: &str| std::fs::read_to_string(path).is_ok_and(|map| maps_every_id(&map));
        if whole("/proc/self/uid_map") && whole("/proc/self/gid_map") {
            return None;
        }
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(DEFAULT_OVERFLOW)
        };
        Some(Self {
            uid: read("/proc/sys/kernel/overflowuid"),
            gid: read("/proc/sys/kernel/overflowgid"),
        })
    }
}

/// Whether a `uid_map` or `gid_map` maps all 2^32 - 1 ids to themselves:
/// the initial user namespace's `0 0 4294967295`.
fn maps_every_id(map: &str) -> bool {
    let mut lines = map.lines().filter(|l| !l.trim().is_empty());
    let only = lines.next().map(|l| {
        l.split_whitespace()
            .map(str::parse::<u64>)
            .collect::<Result<Vec<_>, _>>()
    });
    lines.next().is_none() && matches!(only, Some(Ok(v)) if v == [0, 0, u64::from(u32::MAX)])
}

/// Why a peer is refused at `accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denial {
    /// Neither its uid nor any of its groups is in the allow-list.
    NotListed,
    /// Its uid or gid reads as the overflow id: the daemon's user namespace
    /// does not map it, and the audit log could not say who it is.
    Unmapped,
}

impl Denial {
    /// The `reason` detail of its `denied_peer` record.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::NotListed => "not_allowed",
            Self::Unmapped => "unmapped_id",
        }
    }

    /// What the refused client is told.
    pub(crate) fn message(self, peer: &Peer) -> String {
        match self {
            Self::NotListed => format!(
                "uid {} gid {} is not allowed to use this socket",
                peer.uid, peer.gid
            ),
            Self::Unmapped => format!(
                "uid {} gid {} is the overflow id of the daemon's user namespace \
                 (systemd PrivateUsers=identity maps ids 0-65535 only): \
                 the audit log could not tell this client apart, so it is refused",
                peer.uid, peer.gid
            ),
        }
    }
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
        Ok(Self {
            uids,
            gids,
            overflow: Overflow::of_this_process(),
        })
    }

    /// The ids this policy refuses as unmapped, for the start-up log.
    pub(crate) fn overflow(&self) -> Option<Overflow> {
        self.overflow
    }

    /// A peer is admitted when its uid is listed, or its primary or any
    /// supplementary group is, unless its uid or primary gid is the
    /// overflow id (the allow-list may name 65534's group: it would admit
    /// every unmapped client under one name).
    pub(crate) fn check(&self, peer: &Peer) -> Result<(), Denial> {
        if self
            .overflow
            .is_some_and(|o| peer.uid == o.uid || peer.gid == o.gid)
        {
            return Err(Denial::Unmapped);
        }
        let listed = self.uids.contains(&peer.uid)
            || self.gids.contains(&peer.gid)
            || peer.groups.iter().any(|g| self.gids.contains(g));
        if listed {
            Ok(())
        } else {
            Err(Denial::NotListed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(uids: &[u32], gids: &[u32]) -> AccessPolicy {
        AccessPolicy {
            uids: uids.iter().copied().collect(),
            gids: gids.iter().copied().collect(),
            overflow: None,
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
        assert_eq!(policy.check(&peer(1000, 1000, &[])), Ok(()));
        assert_eq!(policy.check(&peer(1001, 500, &[])), Ok(()));
        assert_eq!(policy.check(&peer(1001, 1001, &[20, 500])), Ok(()));
        assert_eq!(
            policy.check(&peer(1001, 1001, &[20])),
            Err(Denial::NotListed)
        );
    }

    #[test]
    fn refuses_the_overflow_ids_of_a_partial_user_namespace() {
        let mut policy = policy(&[65534], &[500, 65534]);
        // The initial namespace: 65534 is nobody, listed here, admitted.
        assert_eq!(policy.check(&peer(65534, 65534, &[])), Ok(()));
        policy.overflow = Some(Overflow {
            uid: 65534,
            gid: 65534,
        });
        for unmapped in [peer(65534, 1000, &[500]), peer(1000, 65534, &[500])] {
            assert_eq!(policy.check(&unmapped), Err(Denial::Unmapped));
            assert!(
                Denial::Unmapped
                    .message(&unmapped)
                    .contains("PrivateUsers=identity")
            );
        }
        assert_eq!(policy.check(&peer(1000, 1000, &[500])), Ok(()));
    }

    #[test]
    fn only_the_whole_identity_map_maps_every_id() {
        assert!(maps_every_id("         0          0 4294967295\n"));
        for partial in [
            "0 0 65536\n",
            "0 1000 1\n",
            "0 0 4294967295\n1 1 1\n",
            "",
            "0 0 x\n",
        ] {
            assert!(!maps_every_id(partial), "{partial:?}");
        }
        // This test runs in the initial namespace, or in a container's.
        let here = std::fs::read_to_string("/proc/self/uid_map").expect("uid_map");
        assert_eq!(Overflow::of_this_process().is_none(), maps_every_id(&here));
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
