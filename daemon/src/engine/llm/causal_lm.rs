//! A loaded causal LM: its tokenizer, chat template, sampling defaults and
//! stop ids, and what runs its generations: a batch scheduler over one
//! ONNX Runtime session, or (graphs that cannot batch, `batching = false`)
//! slots with a session and KV cache each.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use ort::environment::Environment;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::batch::BatchSnapshot;
use super::batch::scheduler::{Batcher, Job, Limits, Setup, StartError};
use super::constraint::Grammars;
use super::decoder::{GraphSpec, KvPlacement, Slot};
use super::files::{self, ModelFiles};
use super::generate::{Delta, Finished, GenerateRequest};
use super::generation;
use super::sampling::SamplingParams;
use super::template::{ChatTemplate, TemplateError};
use super::tokenizer::Tokenizer;
use super::tools::{ToolFormat, ToolsError};
use crate::config::{Device, ModelConfig};
use crate::engine::error::{InferError, LoadError};
use crate::engine::pool::Pool;
use crate::engine::sessions::{Sessions, admit};

/// Prompts rendered and tokenized at once, for every causal LM of the
/// daemon together: one per CPU the daemon may use when the first model
/// loads (counted then, before seccomp). Tokenizing takes some 200 bytes
/// of memory per byte of text, so this and the byte bound of each prompt
/// ([`CausalLm::max_prompt_bytes`]) bound that memory.
pub(super) static PREPARING: OnceLock<Arc<Semaphore>> = OnceLock::new();

fn preparing() -> Arc<Semaphore> {
    Arc::clone(PREPARING.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Arc::new(Semaphore::new(cpus))
    }))
}

/// What the daemon knows about a loaded causal LM.
#[derive(Debug, Clone)]
pub struct LmInfo {
    pub name: String,
    /// The version served, for a model in the store.
    pub version: Option<String>,
    pub dir: PathBuf,
    pub graph: PathBuf,
    pub device: Device,
    pub cpu_fallback_reason: Option<String>,
    /// Requests generated at once (`sessions`).
    pub slots: usize,
    pub queue_depth: usize,
    /// Why the running requests are not decoded together in one batch;
    /// `None` when they are.
    pub batching_off: Option<String>,
    /// The batch's KV cache pool in positions (`kv_cache_tokens`); `None`
    /// without batching, where each slot holds up to `context_length`.
    pub kv_cache_tokens: Option<usize>,
    /// Prompt plus completion tokens, at most.
    pub context_length: usize,
    /// Longer prompt text is refused before it is tokenized: the smaller of
    /// what the context can hold and `max_prompt_bytes`.
    pub max_prompt_bytes: usize,
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Where the KV cache is kept between steps: `host` (fed back),
    /// `device` (I/O binding, never copied to the host) or `shared` (one
    /// buffer per layer, appended in place).
    pub kv_cache: &'static str,
}

/// What runs a model's generations.
#[derive(Debug)]
enum Runner {
    /// One session; every running request decoded in one batch.
    Batch(Batcher),
    /// A session and cache per slot, one request each.
    Slots(Arc<Pool<Slot>>),
}

/// Why a graph with a shared past/present buffer is served a slot per
/// request (docs/development/llm-serving.md).
const SHARED_BUFFER_CANNOT_BATCH: &str = "the graph shares its past/present buffer \
     (GroupQueryAttention), which this daemon does not batch: a prefilled sequence would \
     have to be copied into a row of the shared buffer, which ort does not expose; \
     each slot runs one request";

/// Why batching is off when the configuration turns it off.
const BATCHING_FALSE: &str = "batching = false in its [[model]] table";

/// Why a graph without `position_ids` is served a slot per request.
const NO_POSITION_IDS: &str = "the graph takes no position_ids: it counts positions from \
     the start of its cache, which the padding of a batch's shorter rows would shift; \
     each slot runs one request";

/// Why a GroupQueryAttention graph is served a slot per request.
const GROUP_QUERY_ATTENTION: &str = "the graph uses GroupQueryAttention, which reads each \
     row's past from the start of the cache, not the padded rows of a batch; \
     each slot runs one request";

/// A loaded causal LM and what runs its generations.
#[derive(Debug)]
pub struct CausalLm {
    pub(super) info: LmInfo,
    pub(super) tokenizer: Arc<Tokenizer>,
    pub(super) template: ChatTemplate,
    pub(super) spec: GraphSpec,
    /// The sampling `generation_config.json` asks for when a request does
    /// not say.
    pub(super) defaults: SamplingParams,
    /// EOS from `generation_config.json`, `config.json` and the tokenizer.
    pub(super) stop_ids: HashSet<u32>,
    /// The tokenizer has `<think>` and `</think>`: split the reasoning.
    pub(super) reasoning: bool,
    /// Compiles the schemas of structured output.
    pub(super) grammars: Grammars,
    runner: Runner,
    pub(super) admission: Arc<Semaphore>,
    /// Shared by every causal LM ([`PREPARING`]).
    pub(super) preparing: Arc<Semaphore>,
}

impl CausalLm {
    /// Loads the model directory; `verified` holds the bytes read (and, with
    /// a database, hashed) by path, the graph's among them; `external`, the
    /// external data the graph names.
    pub fn load(
        environment: &Environment,
        index: usize,
        config: &ModelConfig,
        verified: BTreeMap<PathBuf, Vec<u8>>,
        external: &[(PathBuf, Arc<[u8]>)],
    ) -> Result<Self, LoadError> {
        let name = config.name.get_ref().as_str().to_owned();
        let fail = |reason: String| LoadError::CausalLm {
            model: name.clone(),
            reason,
        };
        let graph_path = config.onnx();
        let (files, tokenizer, template) =
            read_files(config, verified).map_err(|e| fail(e.to_string()))?;
        let context_length =
            context_length(index, config, &files).map_err(|e| fail(e.to_string()))?;
        // `Engine::load` always passes the graph's bytes among `verified`.
        let files::Graph::Bytes(graph) = &files.graph else {
            return Err(fail(format!(
                "{}: the graph was not read with its directory",
                graph_path.display()
            )));
        };
        let batching_off = batching_off(config, &files);
        let cache_tokens = match batching_off {
            None => Some(
                kv_cache_tokens(index, config, context_length).map_err(|e| fail(e.to_string()))?,
            ),
            Some(reason) => {
                if config.kv_cache_tokens.is_some() {
                    tracing::warn!(
                        model = %name,
                        reason,
                        "kv_cache_tokens is ignored: the model is not batched"
                    );
                }
                None
            }
        };
        let count = if batching_off.is_none() {
            1
        } else {
            config.sessions.get()
        };
        let Sessions {
            mut sessions,
            device,
            cpu_fallback_reason,
        } = Sessions::build(environment, config, graph, external, count)?;
        let spec = GraphSpec::read(&sessions[0], &files.arch)
            .map_err(|e| fail(format!("{}: {e}", graph_path.display())))?;
        let mut batching_off = batching_off.map(str::to_owned);
        if batching_off.is_none() && !spec.position_ids {
            batching_off = Some(NO_POSITION_IDS.to_owned());
        }
        // The sessions the per-slot engine needs beyond the one built.
        let more_sessions = |sessions: &mut Vec<ort::session::Session>| {
            let missing = config.sessions.get().saturating_sub(sessions.len());
            Sessions::build(environment, config, graph, external, missing)
                .map(|built| sessions.extend(built.sessions))
        };
        let mut stop_ids: HashSet<u32> = [&files.generation.eos_token_id, &files.arch.eos_token_id]
            .into_iter()
            .flatten()
            .flat_map(files::TokenIds::ids)
            .collect();
        stop_ids.extend(
            files
                .tokenizer
                .eos_token
                .as_deref()
                .and_then(|t| tokenizer.token_to_id(t)),
        );
        let generation = &files.generation;
        let defaults = if generation.do_sample {
            SamplingParams {
                temperature: generation.temperature.unwrap_or(1.0),
                top_p: generation.top_p.unwrap_or(1.0),
                top_k: generation.top_k.unwrap_or(0),
                ..SamplingParams::greedy()
            }
        } else {
            SamplingParams::greedy()
        };
        let memory = match device {
            Device::Cuda => Slot::cuda_memory(config.device_id).map_err(|e| fail(e.to_string()))?,
            Device::Cpu => Slot::host_memory(),
        };
        let placement = match (files.share_kv_buffer, device) {
            (true, _) => KvPlacement::Shared {
                memory,
                capacity: context_length,
            },
            (false, Device::Cuda) => KvPlacement::Device(memory),
            (false, Device::Cpu) => KvPlacement::Host,
        };
        let kv_cache = placement.name();
        let bos = files
            .tokenizer
            .bos_token
            .as_deref()
            .and_then(|t| tokenizer.token_to_id(t))
            .unwrap_or(0);
        let tokenizer = Arc::new(tokenizer);
        let mut batched = None;
        if let (None, Some(cache_tokens)) = (&batching_off, cache_tokens) {
            let session = sessions
                .pop()
                .ok_or_else(|| fail("no session was built".to_owned()))?;
            let started = Batcher::start(Setup {
                session,
                spec: spec.clone(),
                tokenizer: Arc::clone(&tokenizer),
                placement: placement.clone(),
                limits: Limits {
                    sequences: config.sessions.get(),
                    cache_tokens,
                },
                warm_up: config.warm_up.then_some(bos),
            });
            match started {
                Ok(batcher) => batched = Some((batcher, cache_tokens)),
                // The warm-up's self-test: serve it a slot per request.
                Err(e @ StartError::Unbatchable { .. }) => {
                    tracing::warn!(model = %name, reason = %e, "not batched");
                    batching_off = Some(e.to_string());
                }
                Err(e) => return Err(fail(e.to_string())),
            }
        }
        let (runner, kv_cache_tokens) = match batched {
            Some((batcher, cache_tokens)) => (Runner::Batch(batcher), Some(cache_tokens)),
            None => {
                more_sessions(&mut sessions)?;
                let slots = load_slots(sessions, &spec, &placement, config.warm_up.then_some(bos))
                    .map_err(fail)?;
                (Runner::Slots(Arc::new(Pool::new(slots))), None)
            }
        };
        let think_end = tokenizer.token_to_id("</think>");
        let reasoning = tokenizer.token_to_id("<think>").is_some() && think_end.is_some();
        let grammars = Grammars::new(
            &files.tokenizer_json,
            tokenizer.vocab_size(),
            &stop_ids,
            think_end.filter(|_| reasoning),
        );
        let info = LmInfo {
            name,
            version: config.version.clone(),
            dir: config.dir(),
            graph: graph_path,
            device,
            cpu_fallback_reason,
            slots: config.sessions.get(),
            queue_depth: config.queue_depth,
            batching_off,
            kv_cache_tokens,
            context_length,
            max_prompt_bytes: tokenizer.max_text_bytes(context_length).min(
                config.max_prompt_bytes.map_or(
                    crate::config::DEFAULT_MAX_PROMPT_BYTES,
                    std::num::NonZeroUsize::get,
                ),
            ),
            layers: spec.layers,
            kv_heads: spec.kv_heads,
            head_dim: spec.head_dim,
            kv_cache,
        };
        Ok(Self {
            admission: Arc::new(Semaphore::new(config.sessions.get() + config.queue_depth)),
            preparing: preparing(),
            runner,
            info,
            tokenizer,
            template,
            spec,
            defaults,
            stop_ids,
            reasoning,
            grammars,
        })
    }

    pub fn info(&self) -> &LmInfo {
        &self.info
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The sampling a request gets for what it leaves out.
    pub fn defaults(&self) -> SamplingParams {
        self.defaults
    }

    /// The ids that end every generation.
    pub fn stop_ids(&self) -> &HashSet<u32> {
        &self.stop_ids
    }

    /// Whether the model reasons in `<think>` ... `</think>` first.
    pub fn reasons(&self) -> bool {
        self.reasoning
    }

    /// The format the model writes tool calls in, or why it takes no
    /// tools: its template does not use `tools`, or writes calls in a
    /// format this server does not parse.
    pub fn tool_format(&self) -> Result<ToolFormat, ToolsError> {
        match self.template.tool_support() {
            (false, _) => Err(ToolsError::NoToolSupport),
            (true, None) => Err(ToolsError::UnknownFormat),
            (true, Some(format)) => Ok(format),
        }
    }

    /// The most bytes of prompt text tokenized ([`LmInfo::max_prompt_bytes`]).
    pub fn max_prompt_bytes(&self) -> usize {
        self.info.max_prompt_bytes
    }

    /// A place among the running and queued generations, or
    /// [`InferError::QueueFull`] at once.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, InferError> {
        admit(&self.admission, &self.info.name)
    }

    /// Requests admitted now: running, waiting for room, or being prepared
    /// and audited (at most `sessions + queue_depth`).
    pub fn admitted(&self) -> usize {
        (self.info.slots + self.info.queue_depth).saturating_sub(self.admission.available_permits())
    }

    /// What the batch scheduler is doing; `None` without batching.
    pub fn batch_stats(&self) -> Option<BatchSnapshot> {
        match &self.runner {
            Runner::Batch(batcher) => Some(batcher.stats()),
            Runner::Slots(_) => None,
        }
    }

    /// Runs one generation once there is room for it, sending its text to
    /// `events`. A closed `events` (the client left) cancels it, also while
    /// it waits.
    pub async fn generate(
        self: Arc<Self>,
        admitted: OwnedSemaphorePermit,
        request: GenerateRequest,
        events: mpsc::UnboundedSender<Delta>,
    ) -> Result<Finished, InferError> {
        let pool = match &self.runner {
            Runner::Slots(pool) => Arc::clone(pool),
            Runner::Batch(batcher) => {
                let (done, finished) = oneshot::channel();
                let job = Job {
                    request,
                    events,
                    done,
                    admitted,
                };
                batcher
                    .submit(job)
                    .map_err(|e| InferError::Runtime(e.to_string()))?;
                return finished
                    .await
                    .map_err(|_| {
                        InferError::Runtime("the batch scheduler dropped the request".to_owned())
                    })?
                    .map_err(|e| InferError::Runtime(e.to_string()));
            }
        };
        let mut slot = tokio::select! {
            lease = pool.acquire() => lease.map_err(|e| InferError::Runtime(e.to_string()))?,
            () = events.closed() => return Ok(Finished::cancelled_before_start()),
        };
        let model = Arc::clone(&self);
        tokio::task::spawn_blocking(move || {
            let _admitted = admitted;
            let result =
                generation::generate(&mut slot, &model.spec, &model.tokenizer, request, events);
            // The cache of this request is dropped before the slot is lent again.
            if let Err(e) = slot.reset(&model.spec) {
                tracing::warn!(error = %e, "cannot clear a slot's KV cache");
            }
            result
        })
        .await
        .map_err(|e| InferError::Runtime(format!("generation task failed: {e}")))?
        .map_err(|e| InferError::Runtime(e.to_string()))
    }
}

/// The per-slot engine's slots, each warmed up on `warm_up` when given.
fn load_slots(
    sessions: Vec<ort::session::Session>,
    spec: &GraphSpec,
    placement: &KvPlacement,
    warm_up: Option<u32>,
) -> Result<Vec<Slot>, String> {
    let kv_cache = placement.name();
    let mut slots = sessions
        .into_iter()
        .map(|session| Slot::new(session, spec, placement.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot set up the KV cache ({kv_cache}): {e}"))?;
    if let Some(bos) = warm_up {
        let mut logits = Vec::new();
        for slot in &mut slots {
            slot.reset(spec)
                .and_then(|()| slot.forward(spec, &[bos], &mut logits))
                .and_then(|()| slot.forward(spec, &[bos], &mut logits))
                .map_err(|e| {
                    format!(
                        "the warm-up (prefill and one decode step) failed: {e}; \
                         set warm_up = false in its [[model]] table to load it anyway"
                    )
                })?;
            slot.reset(spec).map_err(|e| e.to_string())?;
        }
    }
    Ok(slots)
}

/// Why `config`'s model is not batched; `None` when it is. `deepseekd
/// check-config` runs it too.
pub fn batching_off(config: &ModelConfig, files: &ModelFiles) -> Option<&'static str> {
    let group_query_attention = match &files.graph {
        files::Graph::Bytes(graph) => memchr::memmem::find(graph, b"GroupQueryAttention").is_some(),
        files::Graph::Path(_) => false,
    };
    if !config.batching() {
        Some(BATCHING_FALSE)
    } else if files.share_kv_buffer {
        Some(SHARED_BUFFER_CANNOT_BATCH)
    } else if group_query_attention {
        Some(GROUP_QUERY_ATTENTION)
    } else {
        None
    }
}

/// The batch's KV cache pool `config` asks for (`kv_cache_tokens`, or
/// `sessions × context_length`), which must hold the longest request.
/// `deepseekd check-config` runs it too.
pub fn kv_cache_tokens(
    index: usize,
    config: &ModelConfig,
    context_length: usize,
) -> Result<usize, DirectoryError> {
    match config.kv_cache_tokens {
        Some(n) if n.get() < context_length => Err(DirectoryError::CachePool {
            index,
            asked: n.get(),
            context_length,
        }),
        Some(n) => Ok(n.get()),
        None => Ok(config.sessions.get().saturating_mul(context_length)),
    }
}

/// The context length `config` asks for, within what the model supports.
/// `deepseekd check-config` runs it too.
pub fn context_length(
    index: usize,
    config: &ModelConfig,
    files: &ModelFiles,
) -> Result<usize, DirectoryError> {
    let max_positions = files.arch.max_position_embeddings;
    match config.context_length {
        Some(n) if n.get() > max_positions => Err(DirectoryError::ContextLength {
            index,
            asked: n.get(),
            max_positions,
            file: files.dir.join("config.json"),
        }),
        Some(n) => Ok(n.get()),
        None => Ok(files
            .tokenizer
            .model_max_length
            .map_or(max_positions, |m| m.min(max_positions))),
    }
}

/// What is wrong with a causal LM's directory, naming the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error(transparent)]
    Files(#[from] files::FileError),
    #[error("{}: {source}", file.display())]
    Tokenizer {
        file: PathBuf,
        source: super::tokenizer::TokenizerError,
    },
    #[error("{}: {source}", file.display())]
    Template {
        file: PathBuf,
        source: TemplateError,
    },
    #[error(
        "model[{index}].context_length = {asked} exceeds max_position_embeddings = {max_positions} in {}",
        file.display()
    )]
    ContextLength {
        index: usize,
        asked: usize,
        max_positions: usize,
        file: PathBuf,
    },
    #[error(
        "model[{index}].kv_cache_tokens = {asked} is less than context_length = {context_length}: \
         the cache pool must hold the longest request"
    )]
    CachePool {
        index: usize,
        asked: usize,
        context_length: usize,
    },
}

/// Reads a causal LM's directory and builds its tokenizer and chat template,
/// each error naming the file at fault; `verified` as for
/// [`ModelFiles::read`]. `deepseekd check-config` runs it too.
pub fn read_files(
    config: &ModelConfig,
    verified: BTreeMap<PathBuf, Vec<u8>>,
) -> Result<(ModelFiles, Tokenizer, ChatTemplate), DirectoryError> {
    let files = ModelFiles::read(&config.dir(), &config.onnx(), verified)?;
    let tokenizer = Tokenizer::from_bytes(&files.tokenizer_json).map_err(|source| {
        DirectoryError::Tokenizer {
            file: files.dir.join("tokenizer.json"),
            source,
        }
    })?;
    let template = ChatTemplate::new(
        files.tokenizer.chat_template.clone(),
        files.tokenizer.bos_token.clone(),
        files.tokenizer.eos_token.clone(),
    )
    .map_err(|source| DirectoryError::Template {
        file: files.dir.join("tokenizer_config.json"),
        source,
    })?;
    Ok((files, tokenizer, template))
}
