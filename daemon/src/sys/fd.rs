//! Closing file descriptors that no Rust object owns: those inherited from
//! whoever started the daemon.

use std::os::fd::RawFd;

/// Closes every descriptor from `first` on and returns those of `listed`
/// that were open. The caller guarantees that no object of this process
/// owns any descriptor from `first` on (they were all inherited: see
/// `sandbox::inherited::close_descriptors`), so nothing can use a closed
/// one or have it reused under it.
pub(crate) fn close_from(first: RawFd, mut listed: Vec<RawFd>) -> Vec<RawFd> {
    let Ok(low) = libc::c_uint::try_from(first) else {
        return Vec::new();
    };
    // SAFETY: F_GETFD only reads the descriptor's flags; it drops the
    // listing's own descriptor, which is already closed.
    listed.retain(|fd| super::check(unsafe { libc::fcntl(*fd, libc::F_GETFD) }).is_ok());
    // SAFETY: close_range only closes descriptors, none of which any object
    // of this process owns (the caller's guarantee above).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, low, libc::c_uint::MAX, 0) };
    if rc != 0 {
        // Kernels before 5.9 lack close_range: close them one by one.
        for fd in &listed {
            // SAFETY: as above; `fd` is one of the inherited descriptors.
            unsafe { libc::close(*fd) };
        }
    }
    listed
}
