//! Model execution on ONNX Runtime: the runtime itself, model sessions and
//! their pools, and the tensor types requests and responses carry.

pub mod runtime;
pub mod session;
pub mod tensor;

use std::collections::BTreeMap;
use std::sync::Arc;

use ort::environment::Environment;

pub use session::{InferError, LoadError, Model, ModelInfo, NamedTensor, TensorSpec};
pub use tensor::{DataType, TensorData};

use crate::config::ModelConfig;

/// Every configured model, loaded; built once at startup.
#[derive(Debug)]
pub struct Engine {
    models: BTreeMap<String, Arc<Model>>,
    runtime_version: String,
    /// Kept for the life of the sessions created in it.
    _environment: Environment,
}

impl Engine {
    /// Loads every model in configuration order; the first failure stops the
    /// daemon, which never serves a partial set of models.
    pub fn load(
        environment: Environment,
        runtime_version: String,
        configs: &[ModelConfig],
    ) -> Result<Self, LoadError> {
        let mut models = BTreeMap::new();
        for (index, config) in configs.iter().enumerate() {
            let started = std::time::Instant::now();
            let model = Model::load(&environment, index, config)?;
            let info = model.info();
            tracing::info!(
                model = %info.name,
                path = %info.path.display(),
                device = %info.device,
                sessions = info.sessions,
                elapsed_ms = started.elapsed().as_millis(),
                "model loaded and warmed up"
            );
            models.insert(info.name.clone(), Arc::new(model));
        }
        Ok(Self {
            models,
            runtime_version,
            _environment: environment,
        })
    }

    /// The version string ONNX Runtime reported, e.g. `1.31.1`.
    pub fn runtime_version(&self) -> &str {
        &self.runtime_version
    }

    pub fn model(&self, name: &str) -> Option<&Arc<Model>> {
        self.models.get(name)
    }

    /// The model names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }
}
