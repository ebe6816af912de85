//! What the checks read from `/proc`: process status, the sockets a process
//! holds, the kernel's socket tables, and which process holds a socket.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use super::finding::Undecided;

/// The socket tables of `/proc/net` (or `/proc/PID/net`) that show inet and
/// raw link-layer sockets: any line in them is a way off the host.
pub(crate) const INET_TABLES: [&str; 7] = ["tcp", "tcp6", "udp", "udp6", "raw", "raw6", "packet"];

/// Reads a file of `/proc`; "permission denied" means the check needs root
/// (another user's non-dumpable process), anything else is an error.
pub(crate) fn read(path: &Path) -> Result<String, Undecided> {
    std::fs::read_to_string(path).map_err(|e| denied_or_error(path, &e))
}

/// Maps an I/O error on `path` to the right undecided result.
pub(crate) fn denied_or_error(path: &Path, e: &std::io::Error) -> Undecided {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        Undecided::NeedsRoot(format!("{} is not readable: {e}", path.display()))
    } else {
        Undecided::Error(format!("cannot read {}: {e}", path.display()))
    }
}

/// `/proc/PID/status` as key-value pairs.
pub(crate) type Status = BTreeMap<String, String>;

fn parse_status(text: &str) -> Status {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// `/proc/PID/task/TID/status` of every thread, by thread id.
pub(crate) fn thread_statuses(pid: i32) -> Result<Vec<(i32, Status)>, Undecided> {
    let dir = PathBuf::from(format!("/proc/{pid}/task"));
    let items = std::fs::read_dir(&dir).map_err(|e| denied_or_error(&dir, &e))?;
    let mut threads = Vec::new();
    for item in items.flatten() {
        if let Some(tid) = item.file_name().to_str().and_then(|t| t.parse().ok()) {
            // A thread that ended meanwhile is simply gone.
            if let Ok(text) = std::fs::read_to_string(item.path().join("status")) {
                threads.push((tid, parse_status(&text)));
            }
        }
    }
    threads.sort_by_key(|(tid, _)| *tid);
    Ok(threads)
}

/// The inodes of the sockets process `pid` holds (`/proc/PID/fd`).
pub(crate) fn socket_inodes(pid: i32) -> Result<Vec<u64>, Undecided> {
    let dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let items = std::fs::read_dir(&dir).map_err(|e| denied_or_error(&dir, &e))?;
    let mut inodes: Vec<u64> = items
        .flatten()
        .filter_map(|item| socket_inode(&item.path()))
        .collect();
    inodes.sort_unstable();
    inodes.dedup();
    Ok(inodes)
}

fn socket_inode(fd: &Path) -> Option<u64> {
    let target = std::fs::read_link(fd).ok()?;
    target
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The processes holding any of these socket inodes, with their command
/// names. Reading every process's `fd` directory needs root; without it,
/// only this user's processes are seen.
pub(crate) fn holders(inodes: &[u64]) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return found;
    };
    for process in processes.flatten() {
        let Some(pid) = process.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .filter_map(|fd| socket_inode(&fd.path()))
            .any(|inode| inodes.contains(&inode))
        {
            found.push((pid, command_name(pid)));
        }
    }
    found.sort();
    found
}

/// `/proc/PID/comm`, or `?` when the process is gone.
pub(crate) fn command_name(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

/// When process `pid` started, in nanoseconds since the epoch, rounded
/// down to the second (the boot time in `/proc/stat` has whole seconds).
pub(crate) fn start_time_ns(pid: i32) -> Result<u128, Undecided> {
    let stat_path = PathBuf::from(format!("/proc/{pid}/stat"));
    let stat = read(&stat_path)?;
    // Field 22, counted after the command name, which may hold spaces.
    let ticks: u128 = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19)?.parse().ok())
        .ok_or_else(|| Undecided::Error(format!("{}: no start time", stat_path.display())))?;
    let boot: u128 = read(Path::new("/proc/stat"))?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
        .ok_or_else(|| Undecided::Error("/proc/stat: no btime line".to_owned()))?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|hz| u128::try_from(hz).ok())
        .filter(|hz| *hz > 0)
        .unwrap_or(100);
    Ok((boot + ticks / hz) * 1_000_000_000)
}

/// One line of a socket table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InetSocket {
    pub table: &'static str,
    pub local: String,
    pub remote: String,
    pub state: &'static str,
    pub inode: u64,
}

impl std::fmt::Display for InetSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.table, self.local)?;
        if !self.remote.is_empty() {
            write!(f, " -> {}", self.remote)?;
        }
        write!(f, " {} (inode {})", self.state, self.inode)
    }
}

/// Every socket in the tables of `net_dir` (`/proc/net` for this network
/// namespace, `/proc/PID/net` for a process's).
pub(crate) fn inet_sockets(net_dir: &Path) -> Result<Vec<InetSocket>, Undecided> {
    let mut sockets = Vec::new();
    for table in INET_TABLES {
        let path = net_dir.join(table);
        let text = match std::fs::read_to_string(&path) {
            // IPv6 or packet sockets compiled out: nothing can be open there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            other => other.map_err(|e| denied_or_error(&path, &e))?,
        };
        for line in text.lines().skip(1) {
            let socket = if table == "packet" {
                parse_packet(line)
            } else {
                parse_inet(table, line)
            };
            sockets.push(socket.ok_or_else(|| {
                Undecided::Error(format!("{}: unexpected line {line:?}", path.display()))
            })?);
        }
    }
    Ok(sockets)
}

fn parse_inet(table: &'static str, line: &str) -> Option<InetSocket> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
    let state = if table.starts_with("tcp") {
        match state {
            0x01 => "ESTABLISHED",
            0x02 => "SYN_SENT",
            0x03 => "SYN_RECV",
            0x04 => "FIN_WAIT1",
            0x05 => "FIN_WAIT2",
            0x06 => "TIME_WAIT",
            0x07 => "CLOSE",
            0x08 => "CLOSE_WAIT",
            0x09 => "LAST_ACK",
            0x0A => "LISTEN",
            0x0B => "CLOSING",
            _ => "UNKNOWN",
        }
    } else if state == 0x01 {
        "CONNECTED"
    } else {
        "OPEN"
    };
    let remote = address(fields.get(2)?)?;
    Some(InetSocket {
        table,
        local: address(fields.get(1)?)?,
        // An unconnected socket's remote end is all zeros.
        remote: if remote.ends_with(":0")
            && (remote.starts_with("0.0.0.0") || remote.starts_with("[::]"))
        {
            String::new()
        } else {
            remote
        },
        state,
        inode: fields.get(9)?.parse().ok()?,
    })
}

/// `sk RefCnt Type Proto Iface R Rmem User Inode`.
fn parse_packet(line: &str) -> Option<InetSocket> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    Some(InetSocket {
        table: "packet",
        local: format!("proto 0x{} ifindex {}", fields.get(3)?, fields.get(4)?),
        remote: String::new(),
        state: "OPEN",
        inode: fields.get(8)?.parse().ok()?,
    })
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): the kernel
/// prints each 32-bit word of the address in host byte order.
fn address(text: &str) -> Option<String> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    match addr.len() {
        8 => Some(format!("{}:{port}", Ipv4Addr::from(word(0)?))),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(format!("[{}]:{port}", Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

/// The inodes of the listening Unix sockets bound to `path`
/// (`/proc/net/unix`, this network namespace).
pub(crate) fn unix_listeners(path: &Path) -> Result<Vec<u64>, Undecided> {
    let table = Path::new("/proc/net/unix");
    let text = read(table)?;
    // Num RefCount Protocol Flags Type St Inode Path; flag 0x10000 = listening.
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(fields.get(3)?, 16).ok()?;
            (fields.get(7).map(Path::new) == Some(path) && flags & 0x10000 != 0)
                .then(|| fields.get(6)?.parse().ok())
                .flatten()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_as_the_kernel_prints_them() {
        if cfg!(target_endian = "little") {
            assert_eq!(address("0100007F:1F90").as_deref(), Some("127.0.0.1:8080"));
            assert_eq!(
                address("00000000000000000000000001000000:0016").as_deref(),
                Some("[::1]:22")
            );
        }
        assert_eq!(address("zz:1"), None);
    }

    #[test]
    fn tcp_lines() {
        let line = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0";
        let socket = parse_inet("tcp", line).expect("parses");
        assert_eq!(socket.state, "LISTEN");
        assert_eq!(socket.inode, 4242);
        assert_eq!(socket.remote, "");
    }
}
