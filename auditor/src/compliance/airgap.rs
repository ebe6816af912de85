//! AIRGAP: the host has no way off it. Read from the kernel for the
//! network namespace `verify` runs in: interfaces (netlink, through
//! `getifaddrs`), routes and sockets (`/proc/net`), radios (`/sys/class/rfkill`).

use std::collections::BTreeMap;
use std::path::Path;

use nix::net::if_::InterfaceFlags;

use super::check::Check;
use super::context::Context;
use super::finding::{Evidence, Finding, Undecided};
use super::procfs;

pub(crate) static CHECKS: &[Check] = &[
    Check {
        id: "AIRGAP-INTERFACES",
        title: "No network interface other than loopback is up",
        rationale: "An interface that is up, even without an address or a cable, can be configured and used to move data off the appliance; an air-gapped host keeps every non-loopback interface down.",
        remediation: "Bring the named interfaces down (`ip link set IFACE down`) and keep them down at boot (disable them in /etc/network/interfaces or systemd-networkd, or blacklist their drivers).",
        references: &["SC-7", "CM-7", "AC-4"],
        run: interfaces,
    },
    Check {
        id: "AIRGAP-ROUTES",
        title: "No route other than loopback",
        rationale: "A route is a configured path off the host; with only loopback, no packet has anywhere to go.",
        remediation: "Delete the named routes (`ip route del ...`, `ip -6 route del ...`) and remove them from the network configuration.",
        references: &["SC-7", "CM-7"],
        run: routes,
    },
    Check {
        id: "AIRGAP-SOCKETS",
        title: "No inet or packet socket is open on the host",
        rationale: "A listening or connected TCP, UDP, raw or packet socket means some process can talk to a network, loopback included; the appliance's components use Unix sockets only.",
        remediation: "Stop the named processes or services (the evidence gives each socket's inode and, as root, the process holding it).",
        references: &["SC-7", "CM-7", "AC-4"],
        run: sockets,
    },
    Check {
        id: "AIRGAP-RADIOS",
        title: "Every radio is blocked",
        rationale: "Wi-Fi, Bluetooth and WWAN radios bridge an air gap without a cable; the hardening guide blocks them all (`rfkill block all`).",
        remediation: "Run `rfkill block all`, keep it across boots (systemd-rfkill saves the state), and remove the radios' drivers where possible.",
        references: &["SC-7", "AC-18", "SC-40"],
        run: radios,
    },
];

fn interfaces(_: &Context) -> Result<Finding, Undecided> {
    let addresses = nix::ifaddrs::getifaddrs()
        .map_err(|e| Undecided::Error(format!("getifaddrs (netlink RTM_GETLINK) failed: {e}")))?;
    let mut links: BTreeMap<String, InterfaceFlags> = BTreeMap::new();
    for address in addresses {
        *links
            .entry(address.interface_name)
            .or_insert(InterfaceFlags::empty()) |= address.flags;
    }
    let up: Vec<&String> = links
        .iter()
        .filter(|(_, f)| {
            f.contains(InterfaceFlags::IFF_UP) && !f.contains(InterfaceFlags::IFF_LOOPBACK)
        })
        .map(|(name, _)| name)
        .collect();
    let evidence = links
        .iter()
        .map(|(name, flags)| {
            let loopback = flags.contains(InterfaceFlags::IFF_LOOPBACK);
            let state = if flags.contains(InterfaceFlags::IFF_UP) {
                "UP"
            } else {
                "down"
            };
            Evidence::new(
                format!("netlink link {name}"),
                format!("{state}{}", if loopback { ", loopback" } else { "" }),
                if loopback { "any (loopback)" } else { "down" },
            )
        })
        .collect();
    Ok(Finding::verdict(
        !up.is_empty(),
        format!("only loopback up ({} interfaces)", links.len()),
        format!(
            "up: {}",
            up.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
        ),
        evidence,
    ))
}

/// RTF_REJECT: an unreachable route.
const RTF_REJECT: u32 = 0x0200;

fn routes(_: &Context) -> Result<Finding, Undecided> {
    let mut offending = Vec::new();
    let v4 = Path::new("/proc/net/route");
    // Iface Destination Gateway Flags ... Mask: the main table only; the
    // loopback routes live in the local table, so any line here is a route off.
    for line in procfs::read(v4)?.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(iface), Some(dest), Some(mask)) = (f.first(), f.get(1), f.get(7)) else {
            return Err(Undecided::Error(format!(
                "{}: unexpected line {line:?}",
                v4.display()
            )));
        };
        let word = |hex: &str| {
            u32::from_str_radix(hex, 16)
                .map(u32::to_ne_bytes)
                .unwrap_or_default()
        };
        let prefix = u32::from_ne_bytes(word(mask)).count_ones();
        offending.push(format!(
            "{}/{prefix} dev {iface}",
            std::net::Ipv4Addr::from(word(dest))
        ));
    }
    let v6 = Path::new("/proc/net/ipv6_route");
    match std::fs::read_to_string(v6) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        read => {
            let text = read.map_err(|e| procfs::denied_or_error(v6, &e))?;
            // dest plen src plen next-hop metric refcnt use flags iface
            for line in text.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                let (Some(dest), Some(plen), Some(flags), Some(iface)) =
                    (f.first(), f.get(1), f.get(8), f.get(9))
                else {
                    return Err(Undecided::Error(format!(
                        "{}: unexpected line {line:?}",
                        v6.display()
                    )));
                };
                let flags = u32::from_str_radix(flags, 16).unwrap_or(0);
                let loopback =
                    *iface == "lo" && *dest == "00000000000000000000000000000001" && *plen == "80";
                // The kernel's own unreachable default of each table.
                let null_entry =
                    flags & RTF_REJECT != 0 && *plen == "00" && f.get(5) == Some(&"ffffffff");
                if loopback || null_entry {
                    continue;
                }
                let mut bytes = [0u8; 16];
                for (i, byte) in bytes.iter_mut().enumerate() {
                    *byte = dest
                        .get(2 * i..2 * i + 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                        .unwrap_or(0);
                }
                let plen = u8::from_str_radix(plen, 16).unwrap_or(0);
                offending.push(format!(
                    "{}/{plen} dev {iface}",
                    std::net::Ipv6Addr::from(bytes)
                ));
            }
        }
    }
    let evidence = if offending.is_empty() {
        vec![Evidence::new(
            "/proc/net/route, /proc/net/ipv6_route",
            "no route but ::1/128 and the kernel's unreachable defaults",
            "loopback routes only",
        )]
    } else {
        offending
            .iter()
            .map(|r| {
                Evidence::new(
                    "/proc/net/route, /proc/net/ipv6_route",
                    r.clone(),
                    "no route",
                )
            })
            .collect()
    };
    Ok(Finding::verdict(
        !offending.is_empty(),
        "loopback routes only",
        format!(
            "{} routes off the host: {}",
            offending.len(),
            offending.join(", ")
        ),
        evidence,
    ))
}

fn sockets(context: &Context) -> Result<Finding, Undecided> {
    let sockets = procfs::inet_sockets(Path::new("/proc/net"))?;
    if sockets.is_empty() {
        return Ok(Finding::pass(
            "no inet or packet socket",
            vec![Evidence::new(
                format!("/proc/net/{{{}}}", procfs::INET_TABLES.join(",")),
                "empty",
                "empty",
            )],
        ));
    }
    let inodes: Vec<u64> = sockets.iter().map(|s| s.inode).collect();
    // Which process holds each socket: every process's fd table, root only.
    let holders: Vec<(i32, String, Vec<u64>)> = if context.root {
        procfs::holders(&inodes)
            .into_iter()
            .map(|(pid, comm)| {
                let held = procfs::socket_inodes(pid).unwrap_or_default();
                (pid, comm, held)
            })
            .collect()
    } else {
        Vec::new()
    };
    let evidence = sockets
        .iter()
        .map(|s| {
            let owner = holders
                .iter()
                .filter(|(_, _, held)| held.contains(&s.inode))
                .map(|(pid, comm, _)| format!("pid {pid} ({comm})"))
                .collect::<Vec<_>>();
            let owner = if owner.is_empty() {
                String::new()
            } else {
                format!(", held by {}", owner.join(", "))
            };
            Evidence::new(
                format!("/proc/net/{}", s.table),
                format!("{s}{owner}"),
                "no socket",
            )
        })
        .collect();
    Ok(Finding::fail(
        format!(
            "{} sockets open: {}",
            sockets.len(),
            sockets
                .iter()
                .map(|s| format!("{} {} {}", s.table, s.local, s.state))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        evidence,
    ))
}

fn radios(_: &Context) -> Result<Finding, Undecided> {
    let dir = Path::new("/sys/class/rfkill");
    let items = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Finding::not_applicable(
                "no radio on this host",
                vec![Evidence::new(
                    dir.display().to_string(),
                    "absent",
                    "absent, or every radio blocked",
                )],
            ));
        }
        other => other.map_err(|e| procfs::denied_or_error(dir, &e))?,
    };
    let read = |path: &Path| procfs::read(path).map(|t| t.trim().to_owned());
    let mut evidence = Vec::new();
    let mut unblocked = Vec::new();
    for item in items.flatten() {
        let path = item.path();
        let name = read(&path.join("name"))?;
        let kind = read(&path.join("type"))?;
        let soft = read(&path.join("soft"))?;
        let hard = read(&path.join("hard"))?;
        if soft == "0" && hard == "0" {
            unblocked.push(format!("{name} ({kind})"));
        }
        evidence.push(Evidence::new(
            path.display().to_string(),
            format!("{name} ({kind}): soft={soft} hard={hard}"),
            "soft=1 or hard=1",
        ));
    }
    if evidence.is_empty() {
        return Ok(Finding::not_applicable(
            "no radio on this host",
            vec![Evidence::new(
                dir.display().to_string(),
                "empty",
                "empty, or every radio blocked",
            )],
        ));
    }
    Ok(Finding::verdict(
        !unblocked.is_empty(),
        format!("{} radios, all blocked", evidence.len()),
        format!("not blocked: {}", unblocked.join(", ")),
        evidence,
    ))
}
