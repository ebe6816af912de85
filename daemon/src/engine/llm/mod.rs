//! Causal language models (DeepSeek-R1 distills and the like): a directory
//! in Hugging Face Optimum's layout, served over the OpenAI API. The
//! tokenizer, chat template and sampling live here; the KV cache stays with
//! the slot (one ONNX Runtime session each) that runs a generation.

pub mod batch;
mod causal_lm;
pub mod constraint;
pub mod decoder;
pub mod files;
pub mod generate;
pub mod generation;
pub mod logprobs;
pub(crate) mod prepare;
pub(crate) mod reasoning;
pub mod sampling;
pub(crate) mod stop;
pub mod template;
pub mod tokenizer;
pub(crate) mod tool_parser;
pub mod tools;

#[cfg(test)]
pub(crate) mod test_support;

pub use causal_lm::{
    CausalLm, DirectoryError, LmInfo, batching_off, context_length, kv_cache_tokens, read_files,
};
