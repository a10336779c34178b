//! What the generator's threads share: the queues' work items, the pending and failed keys, the
//! mode and the counters — the one place [`super::service`] and [`super::worker`] both read.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::stats::Counters;
use super::types::{GenerationFailure, GeneratorConfig, SourceImage};
use crate::cache::{Cache, CacheKey};
use crate::engine::{CancelToken, EngineFingerprint, NoiseLevel};
use crate::sync::lock;

/// One unit of work: a source, a prompt and the levels of it not yet cached.
pub(super) struct WorkItem {
    pub(super) source: Option<SourceImage>,
    pub(super) target: String,
    pub(super) prompt: String,
    pub(super) seed: u64,
    pub(super) levels: Vec<(NoiseLevel, CacheKey)>,
}

pub(super) struct Failure {
    pub(super) until: Instant,
    pub(super) failures: u32,
    pub(super) last: GenerationFailure,
}

/// What every thread shares.
pub(super) struct Shared {
    pub(super) cache: Arc<Cache>,
    pub(super) fingerprint: EngineFingerprint,
    pub(super) resolution: u32,
    pub(super) config: GeneratorConfig,
    pub(super) counters: Counters,
    /// Keys queued or in flight.
    pub(super) pending: Mutex<HashSet<CacheKey>>,
    pub(super) failures: Mutex<HashMap<CacheKey, Failure>>,
    /// Signalled whenever keys leave `pending` (see [`Shared::notify_settled`]).
    pub(super) settled: Condvar,
    /// How many times keys have left `pending`: a waiter that is not watching one key (a server's
    /// long polls) wakes when it moves.
    pub(super) settle_epoch: AtomicU64,
    /// Levels waiting in each queue (online, prewarm): the queues are bounded in levels, as
    /// [`GeneratorConfig::queue_capacity`] says, not in work items of up to 32 levels each.
    pub(super) waiting: [AtomicUsize; 2],
    pub(super) mode: AtomicU8,
    /// Workers take no new batch while set (see [`Generator::hold`]).
    pub(super) held: AtomicBool,
    /// Every engine watches it; `Shutdown::Cancel` (and dropping the generator) sets it, so a
    /// batch in flight stops within one denoising step.
    pub(super) cancel: CancelToken,
}

pub(super) const RUNNING: u8 = 0;
pub(super) const DRAINING: u8 = 1;
pub(super) const CANCELLING: u8 = 2;

impl Shared {
    /// Removes an item's keys from the pending set and wakes waiters.
    pub(super) fn forget(&self, item: &WorkItem) {
        let mut pending = lock(&self.pending);
        for (_, key) in &item.levels {
            pending.remove(key);
        }
        drop(pending);
        self.notify_settled();
    }

    /// Sleeps on `settled` with the `pending` lock released, at most `timeout`.
    pub(super) fn wait_settled<'a>(
        &self,
        pending: std::sync::MutexGuard<'a, HashSet<CacheKey>>,
        timeout: Duration,
    ) -> std::sync::MutexGuard<'a, HashSet<CacheKey>> {
        self.settled
            .wait_timeout(pending, timeout)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
    }

    /// Wakes everyone waiting for keys to leave `pending` (call after removing some).
    pub(super) fn notify_settled(&self) {
        // Under the lock, so that `wait_for_settling` cannot miss the move between its look
        // at the epoch and its wait.
        let pending = lock(&self.pending);
        self.settle_epoch.fetch_add(1, Ordering::AcqRel);
        drop(pending);
        self.settled.notify_all();
    }

    /// Counts an item out of its queue's levels (`online`: which queue it left).
    pub(super) fn taken(&self, online: bool, item: &WorkItem) {
        let queue = if online { 0 } else { 1 };
        self.waiting[queue].fetch_sub(item.levels.len(), Ordering::AcqRel);
    }

    pub(super) fn fail(&self, device: usize, item: &WorkItem, failure: &GenerationFailure) {
        self.fail_levels(device, &item.target, &item.levels, failure);
    }

    pub(super) fn fail_levels(
        &self,
        device: usize,
        target: &str,
        levels: &[(NoiseLevel, CacheKey)],
        failure: &GenerationFailure,
    ) {
        let now = Instant::now();
        let mut failures = lock(&self.failures);
        for (level, key) in levels {
            let f = failures.entry(*key).or_insert_with(|| Failure {
                until: now,
                failures: 0,
                last: failure.clone(),
            });
            if f.failures == 0 {
                // Logged once per key; repeats go to debug so a broken input cannot flood the log.
                tracing::warn!(key = %key, target = %target, level = %level, error = %failure, "hard-negative generation failed");
            } else {
                tracing::debug!(key = %key, failures = f.failures + 1, error = %failure, "generation failed again");
            }
            f.failures += 1;
            let factor = 1u32 << (f.failures - 1).min(16);
            f.until = now + (self.config.failure_backoff * factor).min(self.config.max_backoff);
            f.last = failure.clone();
        }
        crate::counters::add(&self.counters.levels.failed, levels.len() as u64);
        crate::counters::add(&self.counters.devices[device].failed, levels.len() as u64);
    }
}
