//! Changing the process environment, which Rust may do only while no other
//! thread can read it: checked here against the kernel's list of the
//! process's threads rather than assumed.

use std::ffi::OsStr;

/// The environment was to be changed while other threads ran.
#[derive(Debug, thiserror::Error)]
#[error(
    "the environment can be changed only while the daemon has one thread; it has {threads} (a bug in the start-up order)"
)]
pub(crate) struct NotSingleThreaded {
    threads: usize,
}

/// The threads of this process, as `/proc/self/task` lists them; `None`
/// without a readable `/proc`.
fn threads() -> Option<usize> {
    std::fs::read_dir("/proc/self/task")
        .ok()
        .map(Iterator::count)
}

/// Refuses when the kernel lists other threads. Without `/proc` nothing can
/// be counted, and the call sites' order (the start of `serve`, before any
/// thread) is all there is; the daemon then stops at its lockdown, which
/// needs `/proc/self/status` (exit 78).
fn single_threaded() -> Result<(), NotSingleThreaded> {
    match threads() {
        None | Some(1) => Ok(()),
        Some(threads) => Err(NotSingleThreaded { threads }),
    }
}

/// Sets `name` to `value`, if the process has a single thread.
pub(crate) fn set(name: &str, value: impl AsRef<OsStr>) -> Result<(), NotSingleThreaded> {
    single_threaded()?;
    // SAFETY: the kernel lists exactly one thread, this one (or, without
    // /proc, the caller runs before the daemon starts any), so no other
    // thread can read the environment while it changes; nothing creates a
    // thread between the check and the call.
    unsafe { std::env::set_var(name, value) };
    Ok(())
}

/// Removes `name`, if the process has a single thread.
pub(crate) fn remove(name: &OsStr) -> Result<(), NotSingleThreaded> {
    single_threaded()?;
    // SAFETY: as in `set`: this is the process's only thread.
    unsafe { std::env::remove_var(name) };
    Ok(())
}
