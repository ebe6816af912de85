//! Who is on the other end of a connection, as the kernel reports it, and
//! whether the configured allow-list admits them.

use std::collections::BTreeSet;
use std::fmt;
use std::os::fd::AsFd;

use nix::sys::socket::{getsockopt, sockopt};
use nix::unistd::{Gid, Group, Uid};

use deepseek_audit::userns::Partial;

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
    /// This process's user namespace when it does not map every id.
    partial: Option<Partial>,
}

/// Why a peer is refused at `accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denial {
    /// Neither its uid nor any of its groups is in the allow-list.
    NotListed,
    /// Its uid reads as the overflow id: the daemon's user namespace does
    /// not map it, and the audit log could not say who it is.
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
                "uid {} is the overflow id of the daemon's user namespace: the client's own uid \
                 is not mapped there (under systemd PrivateUsers=identity, uids above 65535), \
                 so the audit log could not tell it apart; refused",
                peer.uid
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
            partial: Partial::of_this_process(),
        })
    }

    /// This process's user namespace when it does not map every id.
    pub(crate) fn partial(&self) -> Option<&Partial> {
        self.partial.as_ref()
    }

    /// Listed uids and gids the namespace does not map: no peer can ever
    /// match them (a peer with such an id reads as the overflow id).
    pub(crate) fn unmapped_entries(&self) -> (Vec<u32>, Vec<u32>) {
        let Some(partial) = &self.partial else {
            return (Vec::new(), Vec::new());
        };
        (
            self.uids
                .iter()
                .copied()
                .filter(|&u| !partial.uids.maps(u))
                .collect(),
            self.gids
                .iter()
                .copied()
                .filter(|&g| !partial.gids.maps(g))
                .collect(),
        )
    }

    /// A peer is admitted when its uid is listed, or its primary or any
    /// supplementary group is. In a namespace that does not map every id,
    /// a uid that reads as the overflow id is refused (the log could not
    /// say who it is), and the overflow gid matches no listed group (it
    /// stands for any unmapped group, not `nogroup`).
    pub(crate) fn check(&self, peer: &Peer) -> Result<(), Denial> {
        let overflow_gid = match &self.partial {
            Some(partial) if peer.uid == partial.overflow_uid => return Err(Denial::Unmapped),
            Some(partial) => Some(partial.overflow_gid),
            None => None,
        };
        let listed_group = |g: &u32| Some(*g) != overflow_gid && self.gids.contains(g);
        let listed = self.uids.contains(&peer.uid)
            || listed_group(&peer.gid)
            || peer.groups.iter().any(listed_group);
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
            partial: None,
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
    fn refuses_the_overflow_uid_and_matches_no_group_by_the_overflow_gid() {
        let mut policy = policy(&[65534, 70000], &[500, 65534, 70001]);
        // The initial namespace: 65534 is nobody, listed here, admitted.
        assert_eq!(policy.check(&peer(65534, 65534, &[])), Ok(()));
        assert_eq!(policy.check(&peer(1001, 1001, &[65534])), Ok(()));
        let map = deepseek_audit::userns::IdMap::parse("0 0 65536\n").expect("map");
        policy.partial = Some(Partial {
            uids: map.clone(),
            gids: map,
            overflow_uid: 65534,
            overflow_gid: 65534,
        });
        // A uid outside the map: refused, whatever its groups.
        let unmapped = peer(65534, 1000, &[500]);
        assert_eq!(policy.check(&unmapped), Err(Denial::Unmapped));
        assert!(
            Denial::Unmapped
                .message(&unmapped)
                .contains("PrivateUsers=identity")
        );
        // A group outside the map reads as 65534: it matches no listed
        // group, even nogroup's, primary or supplementary.
        assert_eq!(
            policy.check(&peer(1001, 1001, &[65534])),
            Err(Denial::NotListed)
        );
        assert_eq!(
            policy.check(&peer(1001, 65534, &[])),
            Err(Denial::NotListed)
        );
        // A mapped client whose primary group is nogroup, a member by a
        // listed group: admitted under its own uid.
        assert_eq!(policy.check(&peer(1001, 65534, &[500])), Ok(()));
        assert_eq!(policy.check(&peer(1000, 1000, &[500])), Ok(()));
        // Listed ids the namespace cannot show are reported.
        assert_eq!(policy.unmapped_entries(), (vec![70000], vec![70001]));
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
