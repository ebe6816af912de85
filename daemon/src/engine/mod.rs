//! Model execution on ONNX Runtime: the runtime itself, model sessions and
//! their pools, and the tensor types requests and responses carry.

pub mod runtime;
pub mod session;
pub mod tensor;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ort::environment::Environment;

pub use session::{InferError, LoadError, Model, ModelInfo, NamedTensor, TensorSpec};
pub use tensor::{DataType, TensorData};

use deepseek_integrity::entry::{Entry, Kind};
use deepseek_integrity::verify::{Verified, verify_directory};

use crate::config::ModelConfig;

/// Verifies the model's directory against the database. A model alone in its
/// directory is read once and loaded from the verified bytes; a model with
/// other files beside it (external data) is loaded from its path after they
/// are all verified (docs/integrity.md explains the remaining window).
///
/// A directory shared by several models is verified once, for the first.
fn verify(
    entries: &[Entry],
    config: &ModelConfig,
    done: &mut HashSet<PathBuf>,
) -> Result<Option<Verified>, LoadError> {
    let started = std::time::Instant::now();
    let name = config.name.get_ref().as_str();
    let dir = config.path.parent().unwrap_or(Path::new("/"));
    let alone = entries
        .iter()
        .filter(|e| e.path.starts_with(dir) && e.path != dir && e.kind != Kind::Dir)
        .count()
        == 1;
    if !done.insert(dir.to_owned()) && !alone {
        return Ok(None);
    }
    let keep = alone.then_some(config.path.as_path());
    let verified = verify_directory(entries, dir, keep).map_err(|source| LoadError::Integrity {
        model: name.to_owned(),
        source,
    })?;
    tracing::info!(
        model = %name,
        files = verified.files,
        bytes = verified.bytes,
        from_verified_bytes = verified.kept.is_some(),
        elapsed_ms = started.elapsed().as_millis(),
        "model files match the signed integrity database"
    );
    Ok(Some(verified))
}

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
    /// daemon, which never serves a partial set of models. With `database`,
    /// each model's directory is verified against it first.
    pub fn load(
        environment: Environment,
        runtime_version: String,
        configs: &[ModelConfig],
        database: Option<&[Entry]>,
    ) -> Result<Self, LoadError> {
        let mut models = BTreeMap::new();
        let mut verified_dirs = HashSet::new();
        for (index, config) in configs.iter().enumerate() {
            let started = std::time::Instant::now();
            let verified = match database {
                Some(entries) => verify(entries, config, &mut verified_dirs)?,
                None => None,
            };
            let bytes = verified.as_ref().and_then(|v| v.kept.as_deref());
            let model = Model::load(&environment, index, config, bytes)?;
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
