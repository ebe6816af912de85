//! Model execution on ONNX Runtime: the runtime itself, tensor models and
//! causal LMs, their sessions and pools. The engine takes and returns
//! domain types (tensors, prompts, generation requests) and knows nothing
//! of HTTP or of any protocol's wire format.
#![forbid(unsafe_code)]

mod error;
pub mod llm;
mod pool;
pub mod runtime;
mod sessions;
pub(crate) mod tensor;
mod tensor_model;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ort::environment::Environment;

pub use error::{InferError, LoadError};
pub use llm::CausalLm;
pub(crate) use tensor::{DataType, TensorData};
pub(crate) use tensor_model::{Model, NamedTensor};

use deepseek_integrity::digest::hex;
use deepseek_integrity::entry::Entry;
use deepseek_integrity::verify::{VerifyError, verify_directory_with};

use crate::config::ModelConfig;

/// A model's graph and the external data files it names, read once: with
/// a database, exactly the bytes that were hashed. ONNX Runtime gets these
/// bytes, never a path, so a file swapped after the check is not loaded.
#[derive(Debug)]
pub struct ModelBytes {
    pub graph: Vec<u8>,
    /// External data files, by their path relative to the model's directory
    /// (as a graph names them); ONNX Runtime refuses a graph that names one
    /// not among them.
    pub external: Vec<(PathBuf, Arc<[u8]>)>,
    /// The graph's digest as `model_load` records it, computed from `graph`:
    /// the database's form (`sha256` in hex, or `chunked:` and the chunked
    /// digest when only that is recorded), plain SHA-256 without a database.
    pub digest: String,
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether `graph` may name `file` as external data: its path relative to
/// `dir` occurs in the graph's bytes (a protobuf string is stored as is).
/// A false positive only keeps a file in memory; a name written another
/// way (`./x.data`) makes ONNX Runtime refuse the graph.
fn names(graph: &[u8], dir: &Path, file: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    file.strip_prefix(dir)
        .is_ok_and(|relative| contains(graph, relative.as_os_str().as_bytes()))
}

/// The files a model's graph names as external data, taken out of `kept`.
fn external_files(
    kept: &mut BTreeMap<PathBuf, Vec<u8>>,
    dir: &Path,
    onnx: &Path,
    graph: &[u8],
) -> Vec<(PathBuf, Arc<[u8]>)> {
    let named: Vec<PathBuf> = kept
        .keys()
        .filter(|p| p.as_path() != onnx && names(graph, dir, p))
        .cloned()
        .collect();
    named
        .into_iter()
        .filter_map(|path| {
            let bytes = kept.remove(&path)?;
            let relative = path.strip_prefix(dir).ok()?.to_owned();
            Some((relative, Arc::from(bytes)))
        })
        .collect()
}

/// Verifies the model's directory against the database and keeps, read once
/// and hashed from memory, its graph, the external data files the graph
/// names and (causal LMs) the files parsed beside it. Returns the latter by
/// path, and the graph with its external data.
///
/// A directory shared by several models is verified for each of them, so
/// that each gets its own files from the bytes that were hashed.
fn verify(
    entries: &[Entry],
    config: &ModelConfig,
) -> Result<(BTreeMap<PathBuf, Vec<u8>>, ModelBytes), LoadError> {
    let started = std::time::Instant::now();
    let name = config.name.get_ref().as_str();
    let dir = &config.dir();
    let onnx = config.onnx();
    let metadata: Vec<PathBuf> = if config.is_causal_lm() {
        llm::files::METADATA_FILES
            .iter()
            .map(|f| dir.join(f))
            .filter(|p| entries.iter().any(|e| &e.path == p))
            .collect()
    } else {
        Vec::new()
    };
    let mut keep: Vec<&Path> = metadata.iter().map(PathBuf::as_path).collect();
    keep.push(&onnx);
    let external = |path: &Path, kept: &BTreeMap<PathBuf, Vec<u8>>| {
        !metadata.iter().any(|m| m == path)
            && kept.get(&onnx).is_some_and(|graph| names(graph, dir, path))
    };
    let integrity = |source| LoadError::Integrity {
        model: name.to_owned(),
        source,
    };
    let mut verified = verify_directory_with(entries, dir, &keep, &external).map_err(integrity)?;
    let (Some(graph), Some(digests)) = (
        verified.kept.remove(&onnx),
        verified.kept_digests.get(&onnx),
    ) else {
        return Err(integrity(VerifyError::Missing { path: onnx }));
    };
    let recorded = entries.iter().find(|e| e.path == onnx);
    let digest = match recorded.map(|e| (e.attrs.sha256, e.attrs.chunked)) {
        Some((None, Some(_))) => format!("chunked:{}", hex(&digests.chunked)),
        _ => hex(&digests.sha256),
    };
    let external = external_files(&mut verified.kept, dir, &onnx, &graph);
    tracing::info!(
        model = %name,
        files = verified.files,
        bytes = verified.bytes,
        external_data_files = external.len(),
        from_verified_bytes = true,
        elapsed_ms = started.elapsed().as_millis(),
        "model files match the signed integrity database"
    );
    Ok((
        verified.kept,
        ModelBytes {
            graph,
            external,
            digest,
        },
    ))
}

/// Reads a model's graph without a database (`integrity.enforce = false`):
/// from memory all the same, so that its digest is that of what is loaded.
/// External data is then read by ONNX Runtime from the model's directory.
fn read_unverified(index: usize, config: &ModelConfig) -> Result<ModelBytes, LoadError> {
    let onnx = config.onnx();
    let graph = std::fs::read(&onnx).map_err(|source| LoadError::Unreadable {
        model: config.name.get_ref().as_str().to_owned(),
        index,
        key: config.location_key(),
        path: onnx.clone(),
        source,
    })?;
    let digest = deepseek_integrity::digest::sha256_hex(&graph);
    Ok(ModelBytes {
        graph,
        external: Vec::new(),
        digest,
    })
}

/// Every configured model, loaded; built once at startup.
#[derive(Debug)]
pub(crate) struct Engine {
    models: BTreeMap<String, Arc<Model>>,
    causal_lms: BTreeMap<String, Arc<CausalLm>>,
    /// Each model's digest, of the bytes it was loaded from.
    digests: BTreeMap<String, String>,
    runtime_version: String,
    /// Kept for the life of the sessions created in it.
    _environment: Environment,
}

impl Engine {
    /// Loads every model in configuration order; the first failure stops the
    /// daemon, which never serves a partial set of models. With `database`,
    /// each model's directory is verified against it first.
    pub(crate) fn load(
        environment: Environment,
        runtime_version: String,
        configs: &[ModelConfig],
        database: Option<&[Entry]>,
    ) -> Result<Self, LoadError> {
        let mut models = BTreeMap::new();
        let mut causal_lms = BTreeMap::new();
        let mut digests = BTreeMap::new();
        for (index, config) in configs.iter().enumerate() {
            let started = std::time::Instant::now();
            let (mut kept, bytes) = match database {
                Some(entries) => verify(entries, config)?,
                None => (BTreeMap::new(), read_unverified(index, config)?),
            };
            digests.insert(config.name.get_ref().as_str().to_owned(), bytes.digest);
            if config.is_causal_lm() {
                kept.insert(config.onnx(), bytes.graph);
                let lm = CausalLm::load(&environment, index, config, kept, &bytes.external)?;
                let info = lm.info();
                tracing::info!(
                    model = %info.name,
                    version = info.version.as_ref().map(tracing::field::display),
                    dir = %info.dir.display(),
                    device = %info.device,
                    slots = info.slots,
                    context_length = info.context_length,
                    layers = info.layers,
                    kv_heads = info.kv_heads,
                    head_dim = info.head_dim,
                    kv_cache = info.kv_cache,
                    batching = info.batching_off.is_none(),
                    kv_cache_tokens = info.kv_cache_tokens,
                    batching_off = info.batching_off,
                    elapsed_ms = started.elapsed().as_millis(),
                    "causal LM loaded and warmed up"
                );
                causal_lms.insert(info.name.clone(), Arc::new(lm));
                continue;
            }
            let model = Model::load(&environment, config, &bytes.graph, &bytes.external)?;
            let info = model.info();
            tracing::info!(
                model = %info.name,
                version = info.version.as_ref().map(tracing::field::display),
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
            digests,
            runtime_version,
            _environment: environment,
        })
    }

    /// The version string ONNX Runtime reported, e.g. `1.31.1`.
    pub(crate) fn runtime_version(&self) -> &str {
        &self.runtime_version
    }

    /// Every model's digest by name, computed from the bytes it was loaded
    /// from: what `model_load` and each request's record carry.
    pub(crate) fn digests(&self) -> &BTreeMap<String, String> {
        &self.digests
    }

    pub(crate) fn model(&self, name: &str) -> Option<&Arc<Model>> {
        self.models.get(name)
    }

    pub(crate) fn causal_lm(&self, name: &str) -> Option<&Arc<CausalLm>> {
        self.causal_lms.get(name)
    }

    /// The tensor models' names, sorted.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    /// The tensor models, sorted by name.
    pub(crate) fn models(&self) -> impl Iterator<Item = &Arc<Model>> {
        self.models.values()
    }

    /// The causal LMs, sorted by name.
    pub(crate) fn causal_lms(&self) -> impl Iterator<Item = &Arc<CausalLm>> {
        self.causal_lms.values()
    }
}
