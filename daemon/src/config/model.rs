//! One `[[model]]` table: what it serves, where and how, with its defaults
//! and limits.

use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use deepseek_integrity::store::layout::ACTIVE;
use serde::Deserialize;
use toml::Spanned;

/// One `[[model]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name clients use in `/v2/models/{name}` (tensor models) or in
    /// the `model` field of `/v1` requests (causal LMs).
    pub name: Spanned<ModelName>,
    /// What the model is and which API serves it.
    #[serde(default)]
    pub kind: ModelKind,
    /// The `.onnx` file of a tensor model; the directory of a causal LM
    /// (Hugging Face Optimum's layout, docs/guide/config.md). Exactly one of
    /// `path` and `store` is set.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The model store's root: the model is its active version there
    /// (`STORE/NAME/VERSION`), as the signed integrity database records it.
    #[serde(default)]
    pub store: Option<PathBuf>,
    /// The graph's file name inside the model's directory, such as
    /// onnx-community's `model_fp16.onnx`: causal LMs, and tensor models in
    /// a store.
    #[serde(default)]
    pub model_file: Option<String>,
    /// Causal LMs: the longest prompt plus completion, in tokens; default
    /// `max_position_embeddings` from `config.json` (or a smaller
    /// `model_max_length` from `tokenizer_config.json`).
    #[serde(default)]
    pub context_length: Option<NonZeroUsize>,
    /// Causal LMs: the most bytes of prompt text tokenized for one request
    /// (tokenizing costs some 200 bytes of memory per byte); unset is
    /// [`DEFAULT_MAX_PROMPT_BYTES`]. Text the context cannot hold is refused
    /// below this too.
    #[serde(default)]
    pub max_prompt_bytes: Option<NonZeroUsize>,
    #[serde(default)]
    pub device: Device,
    /// CUDA device ordinal when `device = "cuda"`.
    #[serde(default)]
    pub device_id: u32,
    /// Run on the CPU when the CUDA provider cannot be registered, instead of failing.
    #[serde(default)]
    pub allow_cpu_fallback: bool,
    /// Threads ONNX Runtime uses inside one operator; unset means its default
    /// (one per physical core).
    #[serde(default)]
    pub intra_op_threads: Option<NonZeroUsize>,
    /// How many requests run at once. A tensor model has one session (a
    /// copy of the weights) for each; a causal LM decodes this many
    /// sequences together in one batch over one session (or, with
    /// `batching = false` or a graph that cannot batch, has one session
    /// each).
    #[serde(default = "one")]
    pub sessions: NonZeroUsize,
    /// Causal LMs: decode the running requests together, one step for all
    /// of them, over one copy of the weights (continuous batching). Off
    /// gives each of the `sessions` its own session, as before.
    #[serde(default)]
    pub batching: Option<bool>,
    /// Causal LMs with batching: the KV cache pool, in positions (tokens)
    /// across all running requests, padding included; unset is `sessions ×
    /// context_length`. At least `context_length`. Requests that would not
    /// fit wait in the queue.
    #[serde(default)]
    pub kv_cache_tokens: Option<NonZeroUsize>,
    /// Requests that may wait for a free session; more get 503.
    #[serde(default = "default_queue_depth")]
    pub queue_depth: usize,
    /// Run each session once on zero-valued inputs at load, and refuse the
    /// model if that fails. Turn off for models whose inputs cannot be zeros
    /// (shape or index tensors).
    #[serde(default = "yes")]
    pub warm_up: bool,
    /// Tensor models: how long one inference may take, from admission to
    /// its outputs (the wait for a session included), before it is stopped
    /// and answered 504; unset is [`DEFAULT_INFER_TIMEOUT_MS`].
    #[serde(default)]
    pub infer_timeout_ms: Option<std::num::NonZeroU64>,
    /// A store model's active version, resolved once at start against the
    /// signed database: what is verified, granted and loaded from then on,
    /// whatever the link says later.
    #[serde(skip)]
    pub version: Option<String>,
}

/// A causal LM's `max_prompt_bytes` when unset: 32 bytes for each token of
/// a 128k context (natural text averages about 4), some 800 MB of
/// tokenizer memory at most.
pub const DEFAULT_MAX_PROMPT_BYTES: usize = 4 << 20;

/// A tensor model's inference deadline when `infer_timeout_ms` is not set:
/// long enough for any sensible model, short enough that a runaway request
/// frees its session.
pub const DEFAULT_INFER_TIMEOUT_MS: u64 = 60_000;

/// What a `[[model]]` table serves.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// Any ONNX graph, over KServe v2 (`/v2/models/{name}/infer`).
    #[default]
    Tensor,
    /// A decoder-only language model with a KV cache, over the OpenAI API
    /// (`/v1/chat/completions`, `/v1/completions`).
    CausalLm,
}

/// The graph file of a causal LM or a store model when `model_file` is not
/// set.
pub const DEFAULT_MODEL_FILE: &str = "model.onnx";

impl ModelConfig {
    pub fn is_causal_lm(&self) -> bool {
        self.kind == ModelKind::CausalLm
    }

    /// `batching`, on unless set to `false`.
    pub fn batching(&self) -> bool {
        self.batching.unwrap_or(true)
    }

    /// The inference deadline of a tensor model (`infer_timeout_ms`).
    pub fn infer_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.infer_timeout_ms
                .map_or(DEFAULT_INFER_TIMEOUT_MS, std::num::NonZeroU64::get),
        )
    }

    /// The key naming where the model is, for errors: `path` or `store`.
    pub fn location_key(&self) -> &'static str {
        if self.store.is_some() {
            "store"
        } else {
            "path"
        }
    }

    /// The directory holding the model's files: verified as a whole against
    /// the integrity database and granted (read-only) by Landlock. For a
    /// store model, its resolved version's directory; before the daemon
    /// resolves it (`check-config`, `print-policy`), its `active` link.
    pub fn dir(&self) -> PathBuf {
        if let Some(root) = &self.store {
            let model = root.join(self.name.get_ref().as_str());
            return model.join(self.version.as_deref().unwrap_or(ACTIVE));
        }
        // Validation leaves exactly one of `path` and `store`.
        let path = self.path.as_deref().unwrap_or(Path::new("/"));
        if self.is_causal_lm() {
            path.to_owned()
        } else {
            path.parent().unwrap_or(Path::new("/")).to_owned()
        }
    }

    /// The ONNX graph file: a tensor model's `path`, else `model_file` in
    /// the model's directory.
    pub fn onnx(&self) -> PathBuf {
        match &self.path {
            Some(file) if !self.is_causal_lm() => file.clone(),
            _ => self
                .dir()
                .join(self.model_file.as_deref().unwrap_or(DEFAULT_MODEL_FILE)),
        }
    }
}

fn yes() -> bool {
    true
}

fn one() -> NonZeroUsize {
    NonZeroUsize::MIN
}

fn default_queue_depth() -> usize {
    64
}

/// The most `sessions` a model may have: each is a copy of the weights (and
/// for a causal LM a KV cache), loaded and warmed up at start, so a typo
/// such as 100000 would exhaust memory or stall the start instead of
/// failing `check-config`.
pub const MAX_SESSIONS: usize = 256;

/// The most `queue_depth` a model may have: far beyond any useful queue,
/// and well within what a semaphore can count.
pub const MAX_QUEUE_DEPTH: usize = 65_536;

/// Where a model runs.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        })
    }
}

/// A model name that is safe in a URL path segment and a log line.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq, PartialOrd, Ord)]
#[serde(try_from = "String")]
pub struct ModelName(String);

impl ModelName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ModelName {
    type Error = String;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && !name.starts_with('.');
        if valid {
            Ok(Self(name))
        } else {
            Err(format!(
                "invalid model name {name:?}: expected 1 to 64 characters from [A-Za-z0-9._-], not starting with '.'"
            ))
        }
    }
}
