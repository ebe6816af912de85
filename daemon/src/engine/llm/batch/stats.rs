//! The scheduler's counters: written by its thread, read by `/v1/models`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// What the scheduler is doing, for `/v1/models`.
#[derive(Debug, Default)]
pub(super) struct BatchStats {
    pub(super) running: AtomicUsize,
    pub(super) queued: AtomicUsize,
    pub(super) last_batch: AtomicUsize,
    pub(super) steps: AtomicU64,
    pub(super) cache_positions: AtomicUsize,
    pub(super) cache_reserved: AtomicUsize,
}

/// A moment's copy of [`BatchStats`].
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct BatchSnapshot {
    /// Requests in the batch or having their prompt prefilled.
    pub running: usize,
    /// Admitted requests waiting for a row or for room in the cache.
    pub queued: usize,
    /// Rows of the last decode step; 0 once the batch is empty.
    pub last_batch: usize,
    /// Decode steps run since the start.
    pub steps: u64,
    /// Cache positions held now, padding included.
    pub cache_positions: usize,
    /// What the running requests may grow to (`rows × longest reservation`).
    pub cache_reserved: usize,
}

impl BatchStats {
    pub(super) fn snapshot(&self) -> BatchSnapshot {
        BatchSnapshot {
            running: self.running.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            last_batch: self.last_batch.load(Ordering::Relaxed),
            steps: self.steps.load(Ordering::Relaxed),
            cache_positions: self.cache_positions.load(Ordering::Relaxed),
            cache_reserved: self.cache_reserved.load(Ordering::Relaxed),
        }
    }
}
