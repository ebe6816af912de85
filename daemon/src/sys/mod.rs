//! The daemon's only `unsafe` code, each block with the invariant it relies
//! on: reading ONNX Runtime's version through its C ABI, a socket option
//! `nix` does not wrap, closing inherited descriptors and changing the
//! environment. Everything else in the crate forbids `unsafe`
//! (docs/development/code-structure.md).

pub(crate) mod env;
pub(crate) mod fd;
pub(crate) mod ort_version;
pub(crate) mod peer;

/// Turns a libc return value of -1 into the thread's `errno`.
fn check(rc: libc::c_int) -> std::io::Result<libc::c_int> {
    if rc == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}
