//! The version string an ONNX Runtime library reports
//! (`OrtGetApiBase()->GetVersionString()`), read through its C ABI.
//!
//! `ort` only refuses libraries older than its API level and otherwise logs
//! the version, so the daemon asks the library itself, to refuse other
//! versions with an error that names what was found.

use std::ffi::{CStr, c_char};
use std::path::Path;

/// Why the version could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VersionError {
    #[error("{0}")]
    Load(libloading::Error),
    #[error("it does not export OrtGetApiBase; is it ONNX Runtime?")]
    NoApiBase,
    #[error("OrtGetApiBase returned NULL")]
    NullApiBase,
}

/// Loads the library at `path` and reads its version.
pub(crate) fn read(path: &Path) -> Result<String, VersionError> {
    /// The first two members of `OrtApiBase` (onnxruntime_c_api.h), which are
    /// stable across all ONNX Runtime releases.
    #[repr(C)]
    struct OrtApiBase {
        _get_api: unsafe extern "C" fn(u32) -> *const std::ffi::c_void,
        get_version_string: unsafe extern "C" fn() -> *const c_char,
    }
    // SAFETY: loading a shared library runs its initialisers. The path is the
    // operator-configured ONNX Runtime library, which is exactly the code this
    // process exists to run; `ort` loads the same file right after.
    let library = unsafe { libloading::Library::new(path) }.map_err(VersionError::Load)?;
    // SAFETY: `OrtGetApiBase` has had the signature `const OrtApiBase* (void)`
    // in every ONNX Runtime release; the type below matches it.
    let get_api_base =
        unsafe { library.get::<unsafe extern "C" fn() -> *const OrtApiBase>(b"OrtGetApiBase\0") }
            .map_err(|_| VersionError::NoApiBase)?;
    // SAFETY: the function takes no arguments and returns a pointer to a
    // static struct owned by the library, which stays loaded for this scope.
    let base = unsafe { get_api_base() };
    if base.is_null() {
        return Err(VersionError::NullApiBase);
    }
    // SAFETY: `base` is non-null and points to the library's static
    // `OrtApiBase`; `GetVersionString` returns a static NUL-terminated string.
    let version = unsafe { CStr::from_ptr(((*base).get_version_string)()) };
    Ok(version.to_string_lossy().into_owned())
}
