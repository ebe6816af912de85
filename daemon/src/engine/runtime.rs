//! Loading ONNX Runtime: the one process-wide `Environment`, built from the
//! library named in `[runtime] library`, after checking its version.

use std::ffi::{CStr, c_char};
use std::path::{Path, PathBuf};

use ort::environment::Environment;

use crate::config::{Config, RuntimeConfig};

/// The ONNX Runtime release line this build of the daemon is written against
/// (the `api-31` feature of `ort`). Other minor versions are refused: an older
/// one lacks API entries `ort` calls, a newer one is untested.
pub const REQUIRED_VERSION_PREFIX: &str = "1.31.";

/// Why ONNX Runtime could not be brought up.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library {path} (runtime.library) does not exist; run packaging/fetch-onnxruntime.sh or fix the path"
    )]
    Missing { path: PathBuf },
    #[error("cannot load ONNX Runtime library {path} (runtime.library): {reason}")]
    Load { path: PathBuf, reason: String },
    #[error(
        "ONNX Runtime library {path} (runtime.library) is version {found}, expected {REQUIRED_VERSION_PREFIX}x"
    )]
    Version { path: PathBuf, found: String },
    #[error("cannot preload CUDA libraries from {dir} ({key}): {reason}")]
    CudaPreload {
        dir: PathBuf,
        key: &'static str,
        reason: String,
    },
    #[error("cannot create the ONNX Runtime environment: {0}")]
    Environment(ort::Error),
}

/// Sets the environment ONNX Runtime and CUDA read when they start. Call at
/// the very start of `main`, while the process has a single thread.
///
/// - `ORT_DISABLE_TELEMETRY=1`: the PyPI builds of ONNX Runtime 1.31 carry
///   Microsoft's 1DS telemetry client. Even with `DisableTelemetryEvents` it
///   creates `~/.cache/Microsoft/DeveloperTools/.onnxruntime/onnxruntime.db`
///   and retries DNS lookups of `mobile.events.data.microsoft.com` with
///   backoff, starting about 9 s after the environment is created (seen
///   with strace). This variable stops both; seccomp refuses its sockets too.
/// - `CUDA_CACHE_PATH`: the writable JIT cache (`sandbox.cuda_cache_dir`).
#[expect(
    unsafe_code,
    reason = "std::env::set_var is unsafe when other threads may read the environment"
)]
pub fn prepare_environment(config: &Config) {
    // SAFETY: called first thing in `main`, before the daemon creates any
    // thread, so no other thread can be reading the environment.
    unsafe {
        std::env::set_var("ORT_DISABLE_TELEMETRY", "1");
        if let Some(dir) = &config.sandbox.cuda_cache_dir {
            std::env::set_var("CUDA_CACHE_PATH", dir);
        }
    }
}

/// Loads the library, checks its version and builds the environment. Call once.
pub fn init(config: &RuntimeConfig) -> Result<(Environment, String), RuntimeError> {
    let path = config.library.as_path();
    if !path.exists() {
        return Err(RuntimeError::Missing {
            path: path.to_owned(),
        });
    }
    let version = library_version(path)?;
    if !version.starts_with(REQUIRED_VERSION_PREFIX) {
        return Err(RuntimeError::Version {
            path: path.to_owned(),
            found: version,
        });
    }
    preload_cuda(config)?;
    let environment = ort::init_from(path)
        .map_err(|e| RuntimeError::Load {
            path: path.to_owned(),
            reason: e.to_string(),
        })?
        .with_name("deepseekd")
        // Air-gapped: nothing may even try to phone home.
        .with_telemetry(false)
        .build()
        .map_err(RuntimeError::Environment)?;
    Ok((environment, version))
}

/// Preloads the CUDA and cuDNN libraries by absolute path, so the CUDA
/// provider finds them whatever `LD_LIBRARY_PATH` the daemon was started with.
fn preload_cuda(config: &RuntimeConfig) -> Result<(), RuntimeError> {
    let dirs = [
        ("runtime.cuda_library_dir", &config.cuda_library_dir, true),
        (
            "runtime.cudnn_library_dir",
            &config.cudnn_library_dir,
            false,
        ),
    ];
    for (key, dir, is_cuda) in dirs {
        let Some(dir) = dir else { continue };
        let (cuda, cudnn) = if is_cuda {
            (Some(dir.as_path()), None)
        } else {
            (None, Some(dir.as_path()))
        };
        ort::ep::cuda::preload_dylibs(cuda, cudnn).map_err(|e| RuntimeError::CudaPreload {
            dir: dir.clone(),
            key,
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

/// Reads the version string the library reports (`OrtGetApiBase()->GetVersionString()`).
///
/// `ort` only refuses libraries older than its API level and otherwise logs
/// the version, so the daemon asks the library itself to refuse other versions
/// with an error that names what was found.
#[expect(
    unsafe_code,
    reason = "calling into the ONNX Runtime C ABI to read its version"
)]
fn library_version(path: &Path) -> Result<String, RuntimeError> {
    /// The first two members of `OrtApiBase` (onnxruntime_c_api.h), which are
    /// stable across all ONNX Runtime releases.
    #[repr(C)]
    struct OrtApiBase {
        _get_api: unsafe extern "C" fn(u32) -> *const std::ffi::c_void,
        get_version_string: unsafe extern "C" fn() -> *const c_char,
    }
    let load_error = |reason: String| RuntimeError::Load {
        path: path.to_owned(),
        reason,
    };
    // SAFETY: loading a shared library runs its initialisers. The path is the
    // operator-configured ONNX Runtime library, which is exactly the code this
    // process exists to run; `ort` loads the same file right after.
    let library =
        unsafe { libloading::Library::new(path) }.map_err(|e| load_error(e.to_string()))?;
    // SAFETY: `OrtGetApiBase` has had the signature `const OrtApiBase* (void)`
    // in every ONNX Runtime release; the type below matches it.
    let get_api_base =
        unsafe { library.get::<unsafe extern "C" fn() -> *const OrtApiBase>(b"OrtGetApiBase\0") }
            .map_err(|_| {
            load_error("it does not export OrtGetApiBase; is it ONNX Runtime?".to_owned())
        })?;
    // SAFETY: the function takes no arguments and returns a pointer to a
    // static struct owned by the library, which stays loaded for this scope.
    let base = unsafe { get_api_base() };
    if base.is_null() {
        return Err(load_error("OrtGetApiBase returned NULL".to_owned()));
    }
    // SAFETY: `base` is non-null and points to the library's static
    // `OrtApiBase`; `GetVersionString` returns a static NUL-terminated string.
    let version = unsafe { CStr::from_ptr(((*base).get_version_string)()) };
    Ok(version.to_string_lossy().into_owned())
}
