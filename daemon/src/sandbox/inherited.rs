//! What the daemon inherits from whoever started it: open file descriptors
//! and environment variables. Neither is the caller's to hand to a process
//! that serves other users: an inherited descriptor can be a file, socket or
//! directory the service user could never open (and Landlock does not check
//! descriptors already open), and a variable can steer a library (CUDA's
//! `CUDA_INJECTION64_PATH` loads code; `ORT_*`, `OMP_*` change behaviour).
//! Both are cut down to what the daemon needs before its lockdown.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::fd::RawFd;

/// The variables the daemon keeps (when set): what ONNX Runtime and CUDA are
/// told by `engine::runtime::prepare_environment`, the operator's choice of
/// GPUs, and Rust's backtraces. Everything else is removed, including what
/// systemd passed (`NOTIFY_SOCKET`, `WATCHDOG_*`, `LISTEN_*`) once it has
/// been read.
pub const KEPT_VARIABLES: [&str; 5] = [
    "ORT_DISABLE_TELEMETRY",
    "CUDA_CACHE_PATH",
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "RUST_BACKTRACE",
];

/// The descriptors systemd passed for this very process (`LISTEN_PID` is
/// ours): 3 up to 3 + `LISTEN_FDS`, as sd_listen_fds(3) defines them.
fn passed_by_systemd() -> u32 {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| pid == std::process::id());
    if !ours {
        return 0;
    }
    std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0)
        .min(1024)
}

/// The descriptors from `first` on that `/proc/self/fd` lists; one of them
/// was the listing's own, closed again by the time this returns.
fn listed_from(first: RawFd) -> Vec<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= first)
        .collect()
}

/// Closes every descriptor above stderr except those systemd passed for the
/// listening socket, and returns the ones closed. Call first thing in
/// `serve`, while the process is single-threaded and owns no descriptor
/// beyond these: nothing else in the process refers to them.
pub(crate) fn close_descriptors() -> Vec<RawFd> {
    let first = 3 + RawFd::try_from(passed_by_systemd()).unwrap_or(0);
    crate::sys::fd::close_from(first, listed_from(first))
}

/// Removes every environment variable but [`KEPT_VARIABLES`] and returns
/// the names kept. Call once the variables systemd passed have been read,
/// before any thread exists.
pub(crate) fn clear_environment() -> Result<Vec<String>, crate::sys::env::NotSingleThreaded> {
    let kept: BTreeSet<&str> = KEPT_VARIABLES.into_iter().collect();
    let names: Vec<OsString> = std::env::vars_os().map(|(name, _)| name).collect();
    let mut remaining = Vec::new();
    for name in names {
        match name.to_str() {
            Some(text) if kept.contains(text) => remaining.push(text.to_owned()),
            _ => crate::sys::env::remove(&name)?,
        }
    }
    remaining.sort();
    Ok(remaining)
}
