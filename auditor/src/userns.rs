//! The user namespace a service runs in, as `SO_PEERCRED` sees it.
//!
//! Under systemd's `PrivateUsers=identity` (systemd 257) a service runs in
//! a namespace that maps ids 0-65535 to themselves. A peer whose uid is
//! outside the map reads as the overflow id (65534), like every other such
//! peer and like `nobody`: the audit log could not tell them apart, and an
//! allow-list entry for 65534 would admit all of them. Both services
//! therefore refuse the overflow uid, and match no group by the overflow
//! gid, whenever their namespace does not map every id.

/// The kernel's default overflow id (`/proc/sys/kernel/overflowuid`), used
/// where `/proc/sys` is hidden (`ProcSubset=pid`).
const DEFAULT_OVERFLOW: u32 = 65534;

/// The ranges of ids, as seen inside, that a `uid_map` or `gid_map` maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMap {
    /// `(first, count)` per line.
    ranges: Vec<(u64, u64)>,
}

impl IdMap {
    /// Parses `/proc/PID/uid_map` text: `inside outside count` per line.
    /// `None` when a line is not three numbers.
    pub fn parse(text: &str) -> Option<Self> {
        let mut ranges = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let fields: Vec<u64> = line
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            let [inside, outside, count] = fields[..] else {
                return None;
            };
            // Only identity lines keep ids intact; a shifted one counts as
            // mapping nothing a peer would recognise as itself.
            if inside == outside {
                ranges.push((inside, count));
            }
        }
        Some(Self { ranges })
    }

    /// Whether every id is mapped to itself: the initial namespace's
    /// `0 0 4294967295`.
    pub fn is_whole(&self) -> bool {
        self.ranges == [(0, u64::from(u32::MAX))]
    }

    /// Whether `id` is mapped to itself.
    pub fn maps(&self, id: u32) -> bool {
        let id = u64::from(id);
        self.ranges
            .iter()
            .any(|&(first, count)| id >= first && id - first < count)
    }
}

impl std::fmt::Display for IdMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.ranges.is_empty() {
            return f.write_str("no id to itself");
        }
        for (i, (first, count)) in self.ranges.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{first}-{}", first + count.saturating_sub(1))?;
        }
        Ok(())
    }
}

/// A namespace that does not map every id, and the ids that stand for the
/// unmapped ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partial {
    pub uids: IdMap,
    pub gids: IdMap,
    pub overflow_uid: u32,
    pub overflow_gid: u32,
}

impl Partial {
    /// This process's namespace, or `None` when both maps are whole. A map
    /// that cannot be read counts as partial and mapping nothing: refusing
    /// the overflow ids is the safe side.
    pub fn of_this_process() -> Option<Self> {
        let map = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|text| IdMap::parse(&text))
                .unwrap_or(IdMap { ranges: Vec::new() })
        };
        let (uids, gids) = (map("/proc/self/uid_map"), map("/proc/self/gid_map"));
        if uids.is_whole() && gids.is_whole() {
            return None;
        }
        let overflow = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(DEFAULT_OVERFLOW)
        };
        Some(Self {
            uids,
            gids,
            overflow_uid: overflow("/proc/sys/kernel/overflowuid"),
            overflow_gid: overflow("/proc/sys/kernel/overflowgid"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_whole_identity_map_is_whole() {
        let whole = IdMap::parse("         0          0 4294967295\n").expect("map");
        assert!(whole.is_whole());
        assert!(whole.maps(4_000_000_000));
        let identity = IdMap::parse("0 0 65536\n").expect("map");
        assert!(!identity.is_whole());
        assert!(identity.maps(65535) && !identity.maps(65536));
        assert_eq!(identity.to_string(), "0-65535");
        // A shifted map (rootless containers) keeps no id as itself.
        let shifted = IdMap::parse("0 100000 65536\n").expect("map");
        assert!(!shifted.is_whole() && !shifted.maps(0));
        let two = IdMap::parse("0 0 1\n1000 1000 1\n").expect("map");
        assert_eq!(two.to_string(), "0-0, 1000-1000");
        for bad in ["0 0 x\n", "0 0\n", "0 0 1 1\n"] {
            assert_eq!(IdMap::parse(bad), None, "{bad:?}");
        }
        // This test runs in the initial namespace, or in a container's.
        let here = std::fs::read_to_string("/proc/self/uid_map").expect("uid_map");
        let here = IdMap::parse(&here).expect("map");
        if here.is_whole() {
            let gids = std::fs::read_to_string("/proc/self/gid_map").expect("gid_map");
            assert_eq!(
                Partial::of_this_process().is_none(),
                IdMap::parse(&gids).is_some_and(|m| m.is_whole())
            );
        } else {
            assert!(Partial::of_this_process().is_some());
        }
    }
}
