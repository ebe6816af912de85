//! Continuous batching for graphs with a growing KV cache: one session per
//! model, one decode step for every running request at a time
//! ([`scheduler`]), over a cache that holds all their rows ([`cache`]).

pub(crate) mod cache;
pub mod scheduler;
pub mod stats;

pub use scheduler::{Job, Limits, Scheduler, StartError};
pub use stats::BatchSnapshot;
