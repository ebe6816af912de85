//! The service's own metrics, written as a Prometheus exposition to
//! `metrics_file` every `metrics_interval_secs` (atomically: a reader sees
//! the last whole file), where `deepseek-audit metrics` picks it up for
//! node_exporter's textfile collector. docs/guide/metrics.md lists every
//! family.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::config::ServiceConfig;
use crate::entry::Event;
use crate::metrics::{Exposition, Histogram, Kind, SIZE_BUCKETS, replace_file};

/// Unix seconds now.
pub(super) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What the service has done since it started.
#[derive(Debug)]
pub(crate) struct Stats {
    started: f64,
    /// Entries appended, by event.
    events: Mutex<Vec<(Event, u64)>>,
    entries: AtomicU64,
    sealed: AtomicU64,
    /// Unix seconds of the last checkpoint, as `f64` bits.
    last_checkpoint: AtomicU64,
    free: AtomicU64,
    low_space: AtomicBool,
    refused_peers: AtomicU64,
    segment_bytes: AtomicU64,
    rotations: AtomicU64,
    batch: Histogram,
    append: Histogram,
    sync: Histogram,
}

impl Stats {
    /// A service whose log holds `entries`, sealed up to `sealed`.
    pub(super) fn new(entries: u64, sealed: u64) -> Self {
        Self {
            started: unix_now(),
            events: Mutex::default(),
            entries: AtomicU64::new(entries),
            sealed: AtomicU64::new(sealed),
            last_checkpoint: AtomicU64::new(0f64.to_bits()),
            free: AtomicU64::new(0),
            low_space: AtomicBool::new(false),
            refused_peers: AtomicU64::new(0),
            segment_bytes: AtomicU64::new(0),
            rotations: AtomicU64::new(0),
            batch: Histogram::new(SIZE_BUCKETS),
            append: Histogram::latency(),
            sync: Histogram::latency(),
        }
    }

    /// A batch on disk: its events, the whole append, and its `fdatasync`.
    pub(super) fn appended(
        &self,
        events: impl Iterator<Item = Event>,
        entries: u64,
        append: Duration,
        sync: Duration,
    ) {
        let mut counts = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        let mut batch = 0u32;
        for event in events {
            batch += 1;
            match counts.iter_mut().find(|(e, _)| *e == event) {
                Some((_, count)) => *count += 1,
                None => counts.push((event, 1)),
            }
        }
        drop(counts);
        self.entries.store(entries, Ordering::Relaxed);
        self.batch.observe(f64::from(batch));
        self.append.observe_duration(append);
        self.sync.observe_duration(sync);
    }

    pub(super) fn sealed(&self, size: u64) {
        self.sealed.store(size, Ordering::Relaxed);
        self.last_checkpoint
            .store(unix_now().to_bits(), Ordering::Relaxed);
    }

    pub(super) fn free(&self, free: u64, low: bool) {
        self.free.store(free, Ordering::Relaxed);
        self.low_space.store(low, Ordering::Relaxed);
    }

    /// The active segment's size, and whether it was just sealed.
    pub(super) fn segment(&self, bytes: u64, rotated: bool) {
        self.segment_bytes.store(bytes, Ordering::Relaxed);
        self.rotations
            .fetch_add(u64::from(rotated), Ordering::Relaxed);
    }

    pub(super) fn refused_peer(&self) {
        self.refused_peers.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition now.
    pub(super) fn exposition(&self, config: &ServiceConfig) -> String {
        let mut out = Exposition::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        out.single(
            "deepseek_audit_metrics_timestamp_seconds",
            Kind::Gauge,
            "When the audit service wrote these metrics (Unix seconds): older than a few intervals means it is stuck or stopped.",
            unix_now(),
        )
        .single(
            "deepseek_audit_start_time_seconds",
            Kind::Gauge,
            "When the audit service started (Unix seconds).",
            self.started,
        )
        .family(
            "deepseek_audit_entries_total",
            Kind::Counter,
            "Entries appended since the service started, by event.",
        );
        let mut events = self
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        events.sort_by_key(|(event, _)| event.as_str());
        for (event, count) in events {
            out.sample(
                "deepseek_audit_entries_total",
                &[("event", event.as_str())],
                count as f64,
            );
        }
        out.single(
            "deepseek_audit_log_entries",
            Kind::Gauge,
            "Entries in the log.",
            load(&self.entries),
        )
        .single(
            "deepseek_audit_sealed_entries",
            Kind::Gauge,
            "Entries covered by the last signed checkpoint.",
            load(&self.sealed),
        )
        .single(
            "deepseek_audit_last_checkpoint_timestamp_seconds",
            Kind::Gauge,
            "When the last checkpoint was signed (Unix seconds; 0 before the first since the start).",
            f64::from_bits(self.last_checkpoint.load(Ordering::Relaxed)),
        )
        .single(
            "deepseek_audit_segment_bytes",
            Kind::Gauge,
            "Bytes in the active segment (entries.log); it is sealed at segment_max_bytes.",
            load(&self.segment_bytes),
        )
        .single(
            "deepseek_audit_segments_sealed_total",
            Kind::Counter,
            "Segments sealed (rotations) since the service started.",
            load(&self.rotations),
        )
        .single(
            "deepseek_audit_log_free_bytes",
            Kind::Gauge,
            "Bytes free on the log's filesystem at the last append or check.",
            load(&self.free),
        )
        .single(
            "deepseek_audit_log_warn_free_bytes",
            Kind::Gauge,
            "The low-water mark (warn_free_bytes): under it the service warns.",
            config.warn_free_bytes as f64,
        )
        .single(
            "deepseek_audit_log_min_free_bytes",
            Kind::Gauge,
            "The floor (min_free_bytes): under it the service stops and the daemon refuses every request.",
            config.min_free_bytes as f64,
        )
        .single(
            "deepseek_audit_low_space",
            Kind::Gauge,
            "1 while free space is under warn_free_bytes.",
            f64::from(u8::from(self.low_space.load(Ordering::Relaxed))),
        )
        .single(
            "deepseek_audit_refused_peers_total",
            Kind::Counter,
            "Connections refused: peers not in allowed_uids or allowed_users.",
            load(&self.refused_peers),
        )
        .family(
            "deepseek_audit_batch_entries",
            Kind::Histogram,
            "Entries per group commit (one write and one fdatasync).",
        )
        .histogram("deepseek_audit_batch_entries", &[], &self.batch)
        .family(
            "deepseek_audit_append_seconds",
            Kind::Histogram,
            "Time to append one batch: the write and its fdatasync.",
        )
        .histogram("deepseek_audit_append_seconds", &[], &self.append)
        .family(
            "deepseek_audit_fdatasync_seconds",
            Kind::Histogram,
            "Time of each batch's fdatasync.",
        )
        .histogram("deepseek_audit_fdatasync_seconds", &[], &self.sync);
        out.finish()
    }

    /// Replaces `path` with the exposition.
    pub(super) fn write_file(&self, config: &ServiceConfig, path: &Path) -> std::io::Result<()> {
        replace_file(path, &self.exposition(config))
    }
}
