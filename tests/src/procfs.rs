//! What `/proc` says about a process's sockets.

use std::fs;

/// The inodes of the sockets a process holds open (`/proc/PID/fd`).
pub fn socket_inodes(pid: i32) -> Vec<u64> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read fds")
        .filter_map(|entry| {
            let target = fs::read_link(entry.ok()?.path()).ok()?;
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// The socket inodes listed in one of `/proc/PID/net/{tcp,tcp6,udp,udp6}`.
pub fn inet_inodes(pid: i32, table: &str) -> Vec<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/net/{table}")).expect("read net table");
    text.lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(9)?.parse().ok())
        .collect()
}
