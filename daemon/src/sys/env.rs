//! Changing the process environment, which Rust may do only while no other
//! thread can read it: checked here against the kernel's list of the
//! process's threads rather than assumed.

use std::ffi::OsStr;

/// The environment was to be changed while other threads ran.
#[derive(Debug, thiserror::Error)]
#[error(
    "the environment can be changed only while the daemon has one thread; it has {threads} (a bug: this runs first thing in main)"
)]
pub(crate) struct NotSingleThreaded {
    threads: usize,
}

/// The threads of this process, as `/proc/self/task` lists them (0 when it
/// cannot be read, which is not one).
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count)
}

fn single_threaded() -> Result<(), NotSingleThreaded> {
    match threads() {
        1 => Ok(()),
        threads => Err(NotSingleThreaded { threads }),
    }
}

/// Sets `name` to `value`, if the process has a single thread.
pub(crate) fn set(name: &str, value: impl AsRef<OsStr>) -> Result<(), NotSingleThreaded> {
    single_threaded()?;
    // SAFETY: the kernel lists exactly one thread, this one, so no other
    // thread can read the environment while it changes; the daemon creates
    // no thread behind the caller's back between the check and the call.
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
