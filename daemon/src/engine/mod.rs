//! Model execution on ONNX Runtime: the runtime itself, model sessions and
//! their pools, and the tensor types requests and responses carry.

pub mod llm;
pub mod pool;
pub mod runtime;
pub mod session;
pub mod tensor;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ort::environment::Environment;

pub use llm::CausalLm;
pub use session::{InferError, LoadError, Model, ModelInfo, NamedTensor, TensorSpec};
pub use tensor::{DataType, TensorData};

use deepseek_integrity::entry::{Entry, Kind};
use deepseek_integrity::verify::{Verified, verify_directory};

use crate::config::ModelConfig;

/// Verifies the model's directory against the database. A model alone in its
/// directory is read once and loaded from the verified bytes; a model with
/// other files beside it (external data) is loaded from its path after they
/// are all verified (docs/integrity.md explains the remaining window). A
/// causal LM's tokenizer and configuration are always kept, and parsed from
/// the bytes that were hashed.
///
/// A directory shared by several tensor models is verified once, for the first.
fn verify(
    entries: &[Entry],
    config: &ModelConfig,
    done: &mut HashSet<PathBuf>,
) -> Result<Option<Verified>, LoadError> {
    let started = std::time::Instant::now();
    let name = config.name.get_ref().as_str();
    let dir = config.dir();
    let files: Vec<&Path> = entries
        .iter()
        .filter(|e| e.path.starts_with(dir) && e.path != dir && e.kind != Kind::Dir)
        .map(|e| e.path.as_path())
        .collect();
    let onnx = config.onnx();
    let metadata: Vec<PathBuf> = if config.is_causal_lm() {
        llm::files::METADATA_FILES
            .iter()
            .map(|f| dir.join(f))
            .filter(|p| files.contains(&p.as_path()))
            .collect()
    } else {
        Vec::new()
    };
    // The graph has no external data beside it: load it from memory.
    let alone = files.len() == metadata.len() + 1 && files.contains(&onnx.as_path());
    if !config.is_causal_lm() && !done.insert(dir.to_owned()) && !alone {
        return Ok(None);
    }
    let mut keep: Vec<&Path> = metadata.iter().map(PathBuf::as_path).collect();
    if alone {
        keep.push(&onnx);
    }
    let verified =
        verify_directory(entries, dir, &keep).map_err(|source| LoadError::Integrity {
            model: name.to_owned(),
            source,
        })?;
    tracing::info!(
        model = %name,
        files = verified.files,
        bytes = verified.bytes,
        from_verified_bytes = alone,
        elapsed_ms = started.elapsed().as_millis(),
        "model files match the signed integrity database"
    );
    Ok(Some(verified))
}

/// Every configured model, loaded; built once at startup.
#[derive(Debug)]
pub struct Engine {
    models: BTreeMap<String, Arc<Model>>,
    causal_lms: BTreeMap<String, Arc<CausalLm>>,
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
        let mut causal_lms = BTreeMap::new();
        let mut verified_dirs = HashSet::new();
        for (index, config) in configs.iter().enumerate() {
            let started = std::time::Instant::now();
            let verified = match database {
                Some(entries) => verify(entries, config, &mut verified_dirs)?,
                None => None,
            };
            let mut kept = verified.map(|v| v.kept).unwrap_or_default();
            if config.is_causal_lm() {
                let lm = CausalLm::load(&environment, index, config, kept)?;
                let info = lm.info();
                tracing::info!(
                    model = %info.name,
                    dir = %info.dir.display(),
                    device = %info.device,
                    slots = info.slots,
                    context_length = info.context_length,
                    layers = info.layers,
                    kv_heads = info.kv_heads,
                    head_dim = info.head_dim,
                    kv_cache = info.kv_cache,
                    elapsed_ms = started.elapsed().as_millis(),
                    "causal LM loaded and warmed up"
                );
                causal_lms.insert(info.name.clone(), Arc::new(lm));
                continue;
            }
            let bytes = kept.remove(&config.onnx());
            let model = Model::load(&environment, index, config, bytes.as_deref())?;
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
            causal_lms,
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

    pub fn causal_lm(&self, name: &str) -> Option<&Arc<CausalLm>> {
        self.causal_lms.get(name)
    }

    /// The tensor models' names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    /// The causal LMs, sorted by name.
    pub fn causal_lms(&self) -> impl Iterator<Item = &Arc<CausalLm>> {
        self.causal_lms.values()
    }
}
