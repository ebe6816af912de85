//! Loading ONNX Runtime: the one process-wide `Environment`, built from the
//! library named in `[runtime] library`, after checking its version.

use std::path::PathBuf;

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
pub(crate) fn prepare_environment(
    config: &Config,
) -> Result<(), crate::sys::env::NotSingleThreaded> {
    crate::sys::env::set("ORT_DISABLE_TELEMETRY", "1")?;
    if let Some(dir) = &config.sandbox.cuda_cache_dir {
        crate::sys::env::set("CUDA_CACHE_PATH", dir)?;
    }
    Ok(())
}

/// Loads the library, checks its version and builds the environment. Call once.
pub fn init(config: &RuntimeConfig) -> Result<(Environment, String), RuntimeError> {
    let path = config.library.as_path();
    if !path.exists() {
        return Err(RuntimeError::Missing {
            path: path.to_owned(),
        });
    }
    let version = crate::sys::ort_version::read(path).map_err(|e| RuntimeError::Load {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if !version.starts_with(REQUIRED_VERSION_PREFIX) {
        return Err(RuntimeError::Version {
            path: path.to_owned(),
            found: version,
        });
    }
    let builder = ort::init_from(path).map_err(|e| RuntimeError::Load {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    // After the library is loaded: a failed preload's error is made by
    // ONNX Runtime, which would otherwise look for a default library and
    // abort. The CUDA libraries are opened by the provider only when a
    // session registers it, later.
    preload_cuda(config)?;
    let environment = builder
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
