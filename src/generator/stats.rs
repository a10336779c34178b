//! Counters of everything the generator did, readable as a snapshot at any time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

crate::counters::live_counters! {
    /// What happened to the levels requested: every level lands in one of `queued`, `cached`,
    /// `deduplicated`, `dropped` or `backing_off`.
    pub(crate) struct LevelCounters => GeneratorStats {
        queued, deduplicated, cached, dropped, backing_off, in_flight, done, failed, panics,
        engine_calls,
    }
}

/// Live counters (shared by the service and its workers).
#[derive(Debug)]
pub(crate) struct Counters {
    pub levels: LevelCounters,
    /// One per worker, in the order of the configured devices.
    pub devices: Vec<DeviceCounters>,
    pub started: Instant,
}

/// What one worker (one device) did.
#[derive(Debug, Default)]
pub(crate) struct DeviceCounters {
    pub device: String,
    /// 1 while the worker holds a working engine.
    pub loaded: AtomicU64,
    pub done: AtomicU64,
    pub failed: AtomicU64,
    pub engine_calls: AtomicU64,
}

impl Counters {
    pub fn new(devices: &[String]) -> Self {
        Counters {
            devices: devices
                .iter()
                .map(|d| DeviceCounters {
                    device: d.clone(),
                    ..DeviceCounters::default()
                })
                .collect(),
            levels: LevelCounters::default(),
            started: Instant::now(),
        }
    }

    pub fn snapshot(&self, queue_len: usize) -> GeneratorStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let elapsed = self.started.elapsed().as_secs_f64();
        let mut stats = self.levels.snapshot_into(GeneratorStats {
            queue_len: queue_len as u64,
            devices: self
                .devices
                .iter()
                .map(|d| DeviceStats {
                    device: d.device.clone(),
                    engine_loaded: get(&d.loaded) > 0,
                    done: get(&d.done),
                    failed: get(&d.failed),
                    engine_calls: get(&d.engine_calls),
                })
                .collect(),
            ..GeneratorStats::default()
        });
        if elapsed > 0.0 {
            stats.images_per_second = stats.done as f64 / elapsed;
        }
        stats
    }
}

/// A snapshot of the generator's counters. Every requested level lands in exactly one of
/// `queued`, `cached`, `deduplicated`, `dropped` or `backing_off`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GeneratorStats {
    /// Levels accepted into the queue since start.
    pub queued: u64,
    /// Levels waiting in the queue now.
    pub queue_len: u64,
    /// Levels being generated now.
    pub in_flight: u64,
    /// Levels generated and stored.
    pub done: u64,
    /// Levels already in the cache when requested.
    pub cached: u64,
    /// Levels already queued or in flight when requested.
    pub deduplicated: u64,
    /// Levels refused because the queue was full (or the service was shutting down).
    pub dropped: u64,
    /// Levels refused because their key failed recently and is backing off.
    pub backing_off: u64,
    /// Levels whose generation or storage failed.
    pub failed: u64,
    /// Engine panics caught (each restarts the worker's engine).
    pub panics: u64,
    /// Engine calls made (each serves a batch of jobs).
    pub engine_calls: u64,
    /// Per worker, in the order of the configured devices.
    pub devices: Vec<DeviceStats>,
    /// `done` per second since the service started.
    pub images_per_second: f64,
}

impl GeneratorStats {
    /// Workers holding a working engine now.
    pub fn engines_loaded(&self) -> usize {
        self.devices.iter().filter(|d| d.engine_loaded).count()
    }
}

/// A snapshot of one worker's counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeviceStats {
    /// The device (`cpu`, `cuda:0`, …).
    pub device: String,
    /// Whether the worker holds a working engine now.
    pub engine_loaded: bool,
    /// Levels this worker generated and stored.
    pub done: u64,
    /// Levels whose generation or storage failed on this worker.
    pub failed: u64,
    /// Engine calls made.
    pub engine_calls: u64,
}
