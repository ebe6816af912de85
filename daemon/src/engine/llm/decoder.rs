//! The decoder graph: what its inputs and outputs say about the KV cache,
//! and one forward pass with the cache fed back.
//!
//! Three ways to keep the cache ([`KvPlacement`]): on the CPU it goes in and
//! out as session values (`run`); on a GPU it is bound with ONNX Runtime's
//! I/O binding, the presents allocated on the device and bound as the next
//! step's past, so the cache never leaves the device; and for graphs whose
//! attention appends in place (GroupQueryAttention, `genai_config.json`'s
//! `past_present_share_buffer`), one buffer of the whole context per layer
//! is bound as both past and present, so nothing is copied or reallocated
//! per token.

use half::f16;
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::IoBinding;
use ort::session::{Session, SessionOutputs};
use ort::value::{DynValue, Outlet, Tensor, TensorElementType, ValueType};

use super::files::ArchConfig;

/// The element type of the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvType {
    F32,
    F16,
}

/// What the graph's inputs and outputs say, checked against `config.json`.
#[derive(Debug, Clone)]
pub struct GraphSpec {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub kv_type: KvType,
    /// Width of the logits (often padded beyond the tokenizer).
    pub vocab: usize,
    pub logits_f16: bool,
    pub position_ids: bool,
    /// `past_key_values.{i}.key`, `.value` for each layer, in that order.
    past: Vec<String>,
    /// `present.{i}.key`, `.value`, matching `past`.
    present: Vec<String>,
}

fn tensor_of(outlet: &Outlet) -> Option<(TensorElementType, Vec<i64>)> {
    match outlet.dtype() {
        ValueType::Tensor { ty, shape, .. } => Some((*ty, shape.to_vec())),
        _ => None,
    }
}

const LAYOUT: &str = "a causal-lm graph needs input_ids, attention_mask, optional position_ids and \
                      past_key_values.N.key/value in, logits and present.N.key/value out \
                      (Hugging Face Optimum's layout with a KV cache)";

/// The graph does not have the inputs and outputs of a decoder with a KV
/// cache that `config.json` describes; the message says what does not fit.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct GraphMismatch(String);

impl GraphSpec {
    /// Reads the spec from the session, or says what does not fit.
    pub fn read(session: &Session, arch: &ArchConfig) -> Result<Self, GraphMismatch> {
        Self::read_outlets(session, arch).map_err(GraphMismatch)
    }

    fn read_outlets(session: &Session, arch: &ArchConfig) -> Result<Self, String> {
        let find = |outlets: &[Outlet], name: &str| {
            outlets
                .iter()
                .find(|o| o.name() == name)
                .and_then(tensor_of)
        };
        for name in ["input_ids", "attention_mask"] {
            match find(session.inputs(), name) {
                Some((TensorElementType::Int64, shape)) if shape.len() == 2 => {}
                Some((ty, shape)) => {
                    return Err(format!(
                        "input {name:?} is {ty} {shape:?}, expected int64 [batch, sequence]"
                    ));
                }
                None => return Err(format!("the graph has no input {name:?}; {LAYOUT}")),
            }
        }
        let layers = session
            .inputs()
            .iter()
            .filter(|o| o.name().starts_with("past_key_values."))
            .count()
            / 2;
        if layers == 0 {
            return Err(format!(
                "the graph has no past_key_values.N.key/value inputs (exported without a KV cache?); {LAYOUT}"
            ));
        }
        if layers != arch.num_hidden_layers {
            return Err(format!(
                "the graph has {layers} layers of past_key_values, config.json says num_hidden_layers = {}",
                arch.num_hidden_layers
            ));
        }
        let mut past = Vec::with_capacity(2 * layers);
        let mut present = Vec::with_capacity(2 * layers);
        let mut kv = None;
        for layer in 0..layers {
            for part in ["key", "value"] {
                let input = format!("past_key_values.{layer}.{part}");
                let output = format!("present.{layer}.{part}");
                let (ty, shape) = find(session.inputs(), &input)
                    .ok_or_else(|| format!("the graph has no input {input:?}; {LAYOUT}"))?;
                if find(session.outputs(), &output).is_none() {
                    return Err(format!("the graph has no output {output:?}; {LAYOUT}"));
                }
                let kv_type = match ty {
                    TensorElementType::Float32 => KvType::F32,
                    TensorElementType::Float16 => KvType::F16,
                    other => {
                        return Err(format!(
                            "input {input:?} is {other}, expected float32 or float16"
                        ));
                    }
                };
                if shape.len() != 4 {
                    return Err(format!(
                        "input {input:?} has shape {shape:?}, expected [batch, kv_heads, past_sequence, head_dim]"
                    ));
                }
                kv.get_or_insert((kv_type, shape));
                past.push(input);
                present.push(output);
            }
        }
        let (kv_type, shape) = kv.ok_or_else(|| LAYOUT.to_owned())?;
        let dim = |d: i64, fallback: usize| {
            usize::try_from(d)
                .ok()
                .filter(|&d| d > 0)
                .unwrap_or(fallback)
        };
        let kv_heads = dim(shape[1], arch.kv_heads());
        let head_dim = dim(shape[3], arch.head_dim());
        let known = ["input_ids", "attention_mask", "position_ids"];
        if let Some(other) = session
            .inputs()
            .iter()
            .find(|o| !known.contains(&o.name()) && !past.iter().any(|p| p == o.name()))
        {
            return Err(format!(
                "the graph has an input {:?} this daemon does not know how to fill; {LAYOUT}",
                other.name()
            ));
        }
        let (logits_type, logits_shape) = find(session.outputs(), "logits")
            .ok_or_else(|| format!("the graph has no output \"logits\"; {LAYOUT}"))?;
        let logits_f16 = match logits_type {
            TensorElementType::Float32 => false,
            TensorElementType::Float16 => true,
            other => {
                return Err(format!(
                    "output \"logits\" is {other}, expected float32 or float16"
                ));
            }
        };
        if logits_shape.len() != 3 {
            return Err(format!(
                "output \"logits\" has shape {logits_shape:?}, expected [batch, sequence, vocab]"
            ));
        }
        Ok(Self {
            layers,
            kv_heads,
            head_dim,
            kv_type,
            vocab: dim(logits_shape[2], arch.vocab_size),
            logits_f16,
            position_ids: session.inputs().iter().any(|o| o.name() == "position_ids"),
            past,
            present,
        })
    }
}

/// Where a slot keeps its KV cache between steps.
#[derive(Debug, Clone)]
pub enum KvPlacement {
    /// Session values on the host, fed back each step.
    Host,
    /// Presents allocated in this (device) memory and bound as the next past.
    Device(MemoryInfo<'static>),
    /// One buffer of `capacity` positions per past/present pair, allocated
    /// once in this memory and bound as both.
    Shared {
        memory: MemoryInfo<'static>,
        capacity: usize,
    },
}

impl KvPlacement {
    pub fn name(&self) -> &'static str {
        match self {
            KvPlacement::Host => "host",
            KvPlacement::Device(_) => "device",
            KvPlacement::Shared { .. } => "shared",
        }
    }
}

/// How a slot runs a step.
#[derive(Debug)]
enum Mode {
    Run,
    Bind {
        binding: IoBinding,
        memory: MemoryInfo<'static>,
    },
    Shared {
        binding: IoBinding,
        /// One per `GraphSpec::past` name, `[1, kv_heads, capacity, head_dim]`.
        buffers: Vec<DynValue>,
        capacity: usize,
    },
}

/// One session with the state of the generation it is running (the
/// per-slot engine).
#[derive(Debug)]
pub struct Slot {
    session: Session,
    cache: SequenceCache,
}

impl Slot {
    /// A slot keeping its cache as `placement` says.
    pub fn new(
        session: Session,
        spec: &GraphSpec,
        placement: KvPlacement,
    ) -> Result<Self, ort::Error> {
        let cache = SequenceCache::new(&session, spec, placement)?;
        Ok(Self { session, cache })
    }

    /// The CUDA device's memory, for [`Slot::new`].
    pub fn cuda_memory(device_id: u32) -> Result<MemoryInfo<'static>, ort::Error> {
        MemoryInfo::new(
            AllocationDevice::CUDA,
            i32::try_from(device_id).unwrap_or(i32::MAX),
            AllocatorType::Device,
            MemoryType::Default,
        )
    }

    /// Host memory as the cache's "device": runs the I/O-binding path on the
    /// CPU, so that tests cover the GPU's code path.
    pub fn host_memory() -> MemoryInfo<'static> {
        MemoryInfo::default()
    }

    pub fn uses_binding(&self) -> bool {
        !matches!(self.cache.mode, Mode::Run)
    }

    /// See [`SequenceCache::reset`].
    pub fn reset(&mut self, spec: &GraphSpec) -> Result<(), ort::Error> {
        self.cache.reset(spec)
    }

    /// See [`SequenceCache::prefill`].
    pub fn prefill(
        &mut self,
        spec: &GraphSpec,
        ids: &[u32],
        chunk: usize,
        logits: &mut Vec<f32>,
    ) -> Result<(), ort::Error> {
        self.cache
            .prefill(&mut self.session, spec, ids, chunk, logits)
    }

    /// See [`SequenceCache::forward`].
    pub fn forward(
        &mut self,
        spec: &GraphSpec,
        ids: &[u32],
        logits: &mut Vec<f32>,
    ) -> Result<(), ort::Error> {
        self.cache.forward(&mut self.session, spec, ids, logits)
    }
}

/// The KV cache of one sequence, run through a session it does not own:
/// a slot's own session, or the one session a batch scheduler shares
/// between prefills and decode steps.
#[derive(Debug)]
pub struct SequenceCache {
    mode: Mode,
    /// The cache so far, one value per `GraphSpec::past` name (not used by
    /// shared buffers).
    past: Vec<DynValue>,
    /// Tokens in the cache.
    len: usize,
}

impl SequenceCache {
    /// An empty cache for `session`'s graph, kept as `placement` says;
    /// call [`SequenceCache::reset`] before the first forward pass.
    pub fn new(
        session: &Session,
        spec: &GraphSpec,
        placement: KvPlacement,
    ) -> Result<Self, ort::Error> {
        let mode = match placement {
            KvPlacement::Host => Mode::Run,
            KvPlacement::Device(memory) => Mode::Bind {
                binding: session.create_binding()?,
                memory,
            },
            KvPlacement::Shared { memory, capacity } => {
                let allocator = Allocator::new(session, memory)?;
                let shape = [1, spec.kv_heads, capacity, spec.head_dim];
                let buffers = (0..spec.past.len())
                    .map(|_| {
                        Ok(match spec.kv_type {
                            KvType::F32 => Tensor::<f32>::new(&allocator, shape)?.into_dyn(),
                            KvType::F16 => Tensor::<f16>::new(&allocator, shape)?.into_dyn(),
                        })
                    })
                    .collect::<Result<Vec<_>, ort::Error>>()?;
                Mode::Shared {
                    binding: session.create_binding()?,
                    buffers,
                    capacity,
                }
            }
        };
        Ok(Self {
            mode,
            past: Vec::new(),
            len: 0,
        })
    }

    /// Tokens in the cache.
    pub fn cached(&self) -> usize {
        self.len
    }

    /// Hands over the growing cache (one value per `GraphSpec::past` name,
    /// `[1, kv_heads, len, head_dim]`), leaving this one empty and holding
    /// nothing (a binding lets go of the last step's values too).
    pub fn take(&mut self) -> Vec<DynValue> {
        self.len = 0;
        if let Mode::Bind { binding, .. } = &mut self.mode {
            binding.clear();
        }
        std::mem::take(&mut self.past)
    }

    /// Forgets the previous generation's cache and starts an empty one. A
    /// growing cache is dropped (no user's cache outlives their request); a
    /// shared buffer is kept, and what it holds beyond the new request's
    /// length is never read.
    pub fn reset(&mut self, spec: &GraphSpec) -> Result<(), ort::Error> {
        self.len = 0;
        match &mut self.mode {
            Mode::Run => {}
            Mode::Bind { binding, .. } => binding.clear(),
            Mode::Shared {
                binding, buffers, ..
            } => {
                binding.clear();
                for ((past, present), buffer) in spec.past.iter().zip(&spec.present).zip(buffers) {
                    binding.bind_input(past.as_str(), &*buffer)?;
                    binding.bind_output(present.as_str(), &mut *buffer)?;
                }
                self.past.clear();
                return Ok(());
            }
        }
        self.past = (0..spec.past.len())
            .map(|_| empty_past(spec))
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    /// Runs a prompt in pieces of at most `chunk` tokens, leaving the logits
    /// of its last position in `logits`. The graph returns logits for every
    /// position it is given, which for a 150k-token vocabulary is 600 KB per
    /// token: chunks bound that (512 tokens: 311 MB) whatever the prompt's
    /// length, and give the same cache as one run.
    pub fn prefill(
        &mut self,
        session: &mut Session,
        spec: &GraphSpec,
        ids: &[u32],
        chunk: usize,
        logits: &mut Vec<f32>,
    ) -> Result<(), ort::Error> {
        for piece in ids.chunks(chunk.max(1)) {
            self.forward(session, spec, piece, logits)?;
        }
        Ok(())
    }

    /// Runs `ids` after the cached tokens and writes the logits of the last
    /// position into `logits` (as f32).
    pub fn forward(
        &mut self,
        session: &mut Session,
        spec: &GraphSpec,
        ids: &[u32],
        logits: &mut Vec<f32>,
    ) -> Result<(), ort::Error> {
        let n = ids.len();
        let total = self.len + n;
        let input_ids = Tensor::from_array((
            [1, n],
            ids.iter().map(|&i| i64::from(i)).collect::<Vec<_>>(),
        ))?;
        let mask = Tensor::from_array(([1, total], vec![1i64; total]))?;
        let first = i64::try_from(self.len).unwrap_or(i64::MAX);
        let positions =
            Tensor::from_array(([1, n], (0..n as i64).map(|i| first + i).collect::<Vec<_>>()))?;
        let shared = matches!(self.mode, Mode::Shared { .. });
        let past = std::mem::take(&mut self.past);
        let mut outputs = match &mut self.mode {
            Mode::Run => run_values(session, spec, [input_ids, mask, positions], past)?,
            Mode::Shared {
                binding, capacity, ..
            } => {
                if total > *capacity {
                    return Err(ort::Error::new(format!(
                        "{total} tokens exceed the KV buffer of {capacity} positions"
                    )));
                }
                // The buffers stay bound as past and present (`reset`).
                run_bound(session, binding, spec, [&input_ids, &mask, &positions])?
            }
            Mode::Bind { binding, memory } => {
                bind_past_and_presents(binding, memory, spec, &past)?;
                run_bound(session, binding, spec, [&input_ids, &mask, &positions])?
            }
        };
        rows_logits(spec, &outputs, 1, n, logits)?;
        if !shared {
            self.past = take_presents(spec, &mut outputs)?;
        }
        self.len = total;
        Ok(())
    }
}

/// Runs a step with its inputs and past as session values (the host path).
pub(crate) fn run_values<'s>(
    session: &'s mut Session,
    spec: &GraphSpec,
    [input_ids, mask, positions]: [Tensor<i64>; 3],
    past: Vec<DynValue>,
) -> Result<SessionOutputs<'s>, ort::Error> {
    let mut inputs: Vec<(String, DynValue)> = Vec::with_capacity(3 + past.len());
    inputs.push(("input_ids".to_owned(), input_ids.into_dyn()));
    inputs.push(("attention_mask".to_owned(), mask.into_dyn()));
    if spec.position_ids {
        inputs.push(("position_ids".to_owned(), positions.into_dyn()));
    }
    inputs.extend(spec.past.iter().cloned().zip(past));
    session.run(inputs)
}

/// Binds `past` as the step's past, and the presents to be allocated in
/// `memory`. Output shapes grow every step, so outputs are bound anew each
/// time.
pub(crate) fn bind_past_and_presents(
    binding: &mut IoBinding,
    memory: &MemoryInfo<'static>,
    spec: &GraphSpec,
    past: &[DynValue],
) -> Result<(), ort::Error> {
    for (name, value) in spec.past.iter().zip(past) {
        binding.bind_input(name.as_str(), value)?;
    }
    for name in &spec.present {
        binding.bind_output_to_device(name.as_str(), memory)?;
    }
    Ok(())
}

/// Takes the presents out of a run, in `GraphSpec::present` order: the
/// next step's past.
pub(crate) fn take_presents(
    spec: &GraphSpec,
    outputs: &mut SessionOutputs<'_>,
) -> Result<Vec<DynValue>, ort::Error> {
    spec.present
        .iter()
        .map(|name| {
            outputs
                .remove(name)
                .ok_or_else(|| ort::Error::new(format!("output {name:?} missing from the run")))
        })
        .collect()
}

/// Binds a step's `[input_ids, attention_mask, position_ids]` (the last
/// only when the graph takes it) and the logits, on the host, then runs.
pub(crate) fn run_bound<'b>(
    session: &'b mut Session,
    binding: &'b mut IoBinding,
    spec: &GraphSpec,
    [input_ids, mask, positions]: [&Tensor<i64>; 3],
) -> Result<SessionOutputs<'b>, ort::Error> {
    binding.bind_input("input_ids", input_ids)?;
    binding.bind_input("attention_mask", mask)?;
    if spec.position_ids {
        binding.bind_input("position_ids", positions)?;
    }
    binding.bind_output_to_device("logits", &MemoryInfo::default())?;
    let outputs = session.run_binding(binding)?;
    binding.synchronize_outputs()?;
    Ok(outputs)
}

pub(crate) fn empty_past(spec: &GraphSpec) -> Result<DynValue, ort::Error> {
    let shape = [1, spec.kv_heads, 0, spec.head_dim];
    Ok(match spec.kv_type {
        KvType::F32 => Tensor::from_array((shape, Vec::<f32>::new()))?.into_dyn(),
        KvType::F16 => Tensor::from_array((shape, Vec::<f16>::new()))?.into_dyn(),
    })
}

/// Copies the last position's logits of each of `rows` rows of
/// `logits [rows, n, V]`, one after the other, into `into`.
pub(crate) fn rows_logits(
    spec: &GraphSpec,
    outputs: &SessionOutputs<'_>,
    rows: usize,
    n: usize,
    into: &mut Vec<f32>,
) -> Result<(), ort::Error> {
    let value = outputs
        .get("logits")
        .ok_or_else(|| ort::Error::new("output \"logits\" missing from the run"))?;
    into.clear();
    let v = spec.vocab;
    let bad = |len: usize| {
        ort::Error::new(format!(
            "output \"logits\" has {len} values, expected {}",
            rows * n * v
        ))
    };
    let last = |row: usize| (row * n + n - 1) * v..(row * n + n) * v;
    // Exactly `rows × n × vocab`: a graph whose logits are wider than
    // `config.json` says would otherwise shift every row after the first.
    if spec.logits_f16 {
        let (_, data) = value.try_extract_tensor::<f16>()?;
        if data.len() != rows * n * v {
            return Err(bad(data.len()));
        }
        for row in 0..rows {
            let slice = data.get(last(row)).ok_or_else(|| bad(data.len()))?;
            into.extend(slice.iter().map(|x| x.to_f32()));
        }
    } else {
        let (_, data) = value.try_extract_tensor::<f32>()?;
        if data.len() != rows * n * v {
            return Err(bad(data.len()));
        }
        for row in 0..rows {
            into.extend_from_slice(data.get(last(row)).ok_or_else(|| bad(data.len()))?);
        }
    }
    Ok(())
}
