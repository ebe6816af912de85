//! The supplementary groups of a Unix socket's peer (`SO_PEERGROUPS`),
//! which `nix` does not wrap.

use std::os::fd::{AsFd, AsRawFd};

/// Reads the peer's supplementary groups, growing the buffer on `ERANGE`
/// (Linux's NGROUPS_MAX is 65536).
pub(crate) fn groups(socket: &impl AsFd) -> std::io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * size_of::<libc::gid_t>())
            .map_err(|_| std::io::Error::other("too many peer groups"))?;
        // SAFETY: `groups` is a live, writable buffer of exactly `len` bytes;
        // the kernel writes at most `len` bytes into it and stores the size
        // it needs (or used) in `len`. The fd is borrowed for the call.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / size_of::<libc::gid_t>();
        match super::check(rc) {
            Ok(_) => {
                groups.truncate(needed);
                return Ok(groups);
            }
            Err(error) if error.raw_os_error() == Some(libc::ERANGE) && needed > groups.len() => {
                groups.resize(needed, 0);
            }
            Err(error) => return Err(error),
        }
    }
}
