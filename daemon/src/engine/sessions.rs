//! Building a model's ONNX Runtime sessions, on CUDA or the CPU, and
//! admitting requests to them: shared by tensor models and causal LMs.

use std::path::PathBuf;
use std::sync::Arc;

use ort::environment::Environment;
use ort::ep;
use ort::session::Session;
use ort::session::builder::SessionBuilder;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::{InferError, LoadError};
use crate::config::{Device, ModelConfig};

/// Admits one more running or queued request, or refuses at once when the
/// model's queue is full.
pub(crate) fn admit(
    admission: &Arc<Semaphore>,
    model: &str,
) -> Result<OwnedSemaphorePermit, InferError> {
    Arc::clone(admission)
        .try_acquire_owned()
        .map_err(|_| InferError::QueueFull(model.to_owned()))
}

/// A model's ONNX Runtime sessions, on the device they ended up on.
#[derive(Debug)]
pub(crate) struct Sessions {
    pub sessions: Vec<Session>,
    pub device: Device,
    pub cpu_fallback_reason: Option<String>,
}

impl Sessions {
    /// Builds `count` sessions from `graph` in memory, never from its path: the
    /// caller read it once (and hashed those bytes). The graph's external
    /// data comes from `external`, by the name the graph gives it; one it
    /// names that is not there is looked for in the model's directory,
    /// where only an unverified model (`integrity.enforce = false`) can
    /// have it, since a verified graph's named files are all in `external`.
    pub(super) fn build(
        environment: &Environment,
        config: &ModelConfig,
        graph: &[u8],
        external: &[(PathBuf, Arc<[u8]>)],
        count: usize,
    ) -> Result<Self, LoadError> {
        let name = config.name.get_ref().as_str();
        let path = config.onnx();
        let session_error = |e: ort::Error| LoadError::Session {
            model: name.to_owned(),
            path: path.clone(),
            reason: e.to_string(),
        };
        let mut builder = Session::builder(environment)
            .map_err(session_error)?
            .with_config_entry(
                "session.model_external_initializers_file_folder_path",
                config.dir().to_string_lossy(),
            )
            .map_err(|e| session_error(e.into()))?;
        for (file, bytes) in external {
            builder = builder
                .with_external_initializer_file_in_memory(file, Arc::clone(bytes))
                .map_err(|e| session_error(e.into()))?;
        }
        if let Some(threads) = config.intra_op_threads {
            builder = builder
                .with_intra_threads(threads.get())
                .map_err(|e| session_error(e.into()))?;
        }
        let (mut builder, device, cpu_fallback_reason) = match config.device {
            // Without ONNX Runtime's arena, which grows in powers of two and
            // never gives back: a batch's cache and activations return to
            // the system as requests leave (measured: no slower, and 6 %
            // less memory at 8 streams of SmolLM2; BENCHMARKS.md).
            Device::Cpu => (
                builder
                    .with_execution_providers([ep::CPU::default()
                        .with_arena_allocator(false)
                        .build()])
                    .map_err(|e| session_error(e.into()))?,
                Device::Cpu,
                None,
            ),
            Device::Cuda => register_cuda(builder, name, config)?,
        };
        let sessions = (0..count)
            .map(|_| builder.commit_from_memory(graph))
            .collect::<Result<Vec<_>, _>>()
            .map_err(session_error)?;
        Ok(Self {
            sessions,
            device,
            cpu_fallback_reason,
        })
    }
}

/// Registers the CUDA provider, or falls back to the CPU when allowed.
fn register_cuda(
    builder: SessionBuilder,
    name: &str,
    config: &ModelConfig,
) -> Result<(SessionBuilder, Device, Option<String>), LoadError> {
    let cuda = ep::CUDA::default()
        .with_device_id(i32::try_from(config.device_id).unwrap_or(i32::MAX))
        .build()
        .error_on_failure();
    match builder.with_execution_providers([cuda]) {
        Ok(builder) => Ok((builder, Device::Cuda, None)),
        Err(e) if config.allow_cpu_fallback => {
            let reason = e.to_string().trim_end().to_owned();
            tracing::warn!(
                model = name,
                reason = %reason,
                "CUDA execution provider unavailable; running on the CPU because allow_cpu_fallback = true"
            );
            Ok((e.recover(), Device::Cpu, Some(reason)))
        }
        Err(e) => Err(LoadError::Cuda {
            model: name.to_owned(),
            device_id: config.device_id,
            // ONNX Runtime ends its messages with a newline.
            reason: e.to_string().trim_end().to_owned(),
        }),
    }
}
