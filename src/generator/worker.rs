//! One worker thread per device: takes batches from the queues (online first), runs them on its
//! own engine, writes the images to the cache, and survives its engine's panics.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver};

use crate::cache::EntryMeta;
use crate::engine::{Job, JobOutput};
use crate::sync::lock;

use super::shared::{Shared, WorkItem, CANCELLING, DRAINING, RUNNING};
use super::types::{DynEngine, EngineFactory, GenerationFailure};

pub(super) struct Worker {
    /// Which of the configured devices (and of the per-device counters) this is.
    pub(super) index: usize,
    pub(super) shared: Arc<Shared>,
    pub(super) factory: Arc<dyn EngineFactory>,
    pub(super) device: String,
    pub(super) online: Receiver<WorkItem>,
    pub(super) prewarm: Receiver<WorkItem>,
    pub(super) wake: Receiver<()>,
}

impl Worker {
    fn mode(&self) -> u8 {
        self.shared.mode.load(Ordering::Acquire)
    }

    fn device_counters(&self) -> &super::stats::DeviceCounters {
        &self.shared.counters.devices[self.index]
    }

    /// Up to `max_batch` items, online first; `None` when it is time to stop.
    fn next_batch(&self) -> Option<Vec<WorkItem>> {
        loop {
            let mode = self.mode();
            if mode == CANCELLING {
                return None;
            }
            let held = mode == RUNNING && self.shared.held.load(Ordering::Acquire);
            let mut batch = Vec::new();
            while !held && batch.len() < self.shared.config.max_batch {
                let taken = match self.online.try_recv() {
                    Ok(item) => Some((true, item)),
                    Err(_) => self.prewarm.try_recv().ok().map(|item| (false, item)),
                };
                match taken {
                    Some((online, item)) => {
                        self.shared.taken(online, &item);
                        batch.push(item);
                    }
                    None => break,
                }
            }
            if !batch.is_empty() {
                return Some(batch);
            }
            if mode == DRAINING {
                return None;
            }
            match self.wake.recv_timeout(Duration::from_millis(200)) {
                Ok(()) | Err(channel::RecvTimeoutError::Timeout) => {}
                Err(channel::RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// One attempt at making this worker's engine.
    fn create_engine(&self) -> Result<Box<dyn DynEngine>, String> {
        let made = self.try_create_engine();
        if made.is_ok() {
            self.device_counters().loaded.store(1, Ordering::Relaxed);
        }
        made
    }

    fn try_create_engine(&self) -> Result<Box<dyn DynEngine>, String> {
        match catch_unwind(AssertUnwindSafe(|| self.factory.create(&self.device))) {
            Ok(Ok(mut engine)) if engine.fingerprint() == &self.shared.fingerprint => {
                engine.set_cancel(self.shared.cancel.clone());
                Ok(engine)
            }
            Ok(Ok(_)) => Err("the engine's fingerprint differs from the factory's".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => {
                crate::counters::add(&self.shared.counters.levels.panics, 1);
                Err("the engine factory panicked".into())
            }
        }
    }

    pub(super) fn run(self) {
        // Made lazily and remade after a panic. While it cannot be made, batches fail with the
        // reason (so waiters learn it instead of hanging) and creation is retried after a backoff.
        let mut engine: Option<Box<dyn DynEngine>> = None;
        let mut creation_error: Option<(String, Instant, Duration)> = None;
        if self.shared.config.load_at_start {
            match self.create_engine() {
                Ok(e) => engine = Some(e),
                Err(msg) => {
                    tracing::error!(device = %self.device, error = %msg, "cannot create engine");
                    let delay = self.shared.config.failure_backoff;
                    creation_error = Some((msg, Instant::now() + delay, delay));
                }
            }
        }
        while let Some(mut batch) = self.next_batch() {
            self.skip_cached(&mut batch);
            if batch.is_empty() {
                continue;
            }
            if engine.is_none() {
                let retry_due = creation_error
                    .as_ref()
                    .is_none_or(|(_, at, _)| Instant::now() >= *at);
                if retry_due {
                    match self.create_engine() {
                        Ok(e) => {
                            engine = Some(e);
                            creation_error = None;
                        }
                        Err(msg) => {
                            let delay = creation_error
                                .as_ref()
                                .map_or(self.shared.config.failure_backoff, |(_, _, d)| {
                                    (*d * 2).min(self.shared.config.max_backoff)
                                });
                            tracing::error!(device = %self.device, error = %msg, "cannot create engine");
                            creation_error = Some((msg, Instant::now() + delay, delay));
                        }
                    }
                }
            }
            let Some(active) = engine.as_mut() else {
                let msg = creation_error
                    .as_ref()
                    .map_or("no engine", |(m, _, _)| m.as_str());
                let failure = GenerationFailure::EngineCreation {
                    device: self.device.clone(),
                    message: msg.to_string(),
                };
                self.fail_all(&batch, &failure);
                batch.iter().for_each(|item| self.shared.forget(item));
                continue;
            };
            let levels: u64 = batch.iter().map(|i| i.levels.len() as u64).sum();
            let c = &self.shared.counters.levels;
            crate::counters::add(&c.in_flight, levels);
            let jobs: Vec<Job> = batch
                .iter()
                .map(|item| Job {
                    source: item.source.as_ref().map(|s| s.pixels.clone()),
                    prompt: item.prompt.clone(),
                    levels: item.levels.iter().map(|(l, _)| *l).collect(),
                    seed: item.seed,
                    noise: None,
                })
                .collect();
            let _span =
                tracing::debug_span!("generate", device = %self.device, jobs = jobs.len(), levels)
                    .entered();
            crate::counters::add(&c.engine_calls, 1);
            crate::counters::add(&self.device_counters().engine_calls, 1);
            let result = catch_unwind(AssertUnwindSafe(|| active.generate(&jobs)));
            match result {
                Ok(Ok(outputs)) if outputs.len() == batch.len() => {
                    for (item, output) in batch.iter().zip(outputs) {
                        self.store(item, output);
                    }
                }
                Ok(Ok(outputs)) => {
                    let failure = GenerationFailure::WrongCount {
                        what: "outputs".into(),
                        got: outputs.len(),
                        expected: batch.len(),
                    };
                    self.fail_all(&batch, &failure);
                }
                Ok(Err(_)) if self.shared.cancel.is_cancelled() => {
                    // Stopped by a cancelling shutdown: nothing failed, nothing to back off from.
                    crate::counters::add(&c.dropped, levels);
                }
                Ok(Err(e)) => {
                    let failure = GenerationFailure::Engine {
                        message: e.to_string(),
                    };
                    self.fail_all(&batch, &failure);
                }
                Err(panic) => {
                    crate::counters::add(&c.panics, 1);
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(a payload that is not text)".into());
                    tracing::error!(device = %self.device, panic = %msg, "engine panicked; restarting it");
                    let failure = GenerationFailure::Panic { message: msg };
                    self.fail_all(&batch, &failure);
                    // The next batch builds a fresh engine.
                    engine = None;
                    self.device_counters().loaded.store(0, Ordering::Relaxed);
                }
            }
            c.in_flight.fetch_sub(levels, Ordering::Relaxed);
            batch.iter().for_each(|item| self.shared.forget(item));
        }
    }

    /// Records `failure` for every level of `batch`; each backs off before it may be asked again.
    fn fail_all(&self, batch: &[WorkItem], failure: &GenerationFailure) {
        batch
            .iter()
            .for_each(|item| self.shared.fail(self.index, item, failure));
    }

    /// Drops levels that reached the cache after they were queued (another process, or a race
    /// with a request that looked just before a store), so no image is generated twice here.
    fn skip_cached(&self, batch: &mut Vec<WorkItem>) {
        for item in batch.iter_mut() {
            let mut cached = Vec::new();
            item.levels.retain(|(_, key)| {
                let hit = self.shared.cache.contains(key).unwrap_or(false);
                if hit {
                    cached.push(*key);
                }
                !hit
            });
            if !cached.is_empty() {
                let mut pending = lock(&self.shared.pending);
                cached.iter().for_each(|k| {
                    pending.remove(k);
                });
                drop(pending);
                self.shared.notify_settled();
            }
        }
        batch.retain(|item| !item.levels.is_empty());
    }

    fn store(&self, item: &WorkItem, output: JobOutput) {
        if output.images.len() != item.levels.len() {
            let failure = GenerationFailure::WrongCount {
                what: "images".into(),
                got: output.images.len(),
                expected: item.levels.len(),
            };
            self.shared.fail(self.index, item, &failure);
            return;
        }
        for ((level, key), image) in item.levels.iter().zip(output.images) {
            let meta = EntryMeta {
                target: item.target.clone(),
                prompt: item.prompt.clone(),
                level: *level,
                seed: item.seed,
                source: item
                    .source
                    .as_ref()
                    .map(|s| blake3::Hash::from(s.hash).to_hex().to_string()),
                fingerprint: self.shared.fingerprint.clone(),
                width: image.image.width(),
                height: image.image.height(),
            };
            match self.shared.cache.put_image(key, &image.image, meta) {
                Ok(_) => {
                    crate::counters::add(&self.shared.counters.levels.done, 1);
                    crate::counters::add(&self.device_counters().done, 1);
                    lock(&self.shared.failures).remove(key);
                }
                Err(e) => {
                    let single = WorkItem {
                        source: None,
                        target: item.target.clone(),
                        prompt: String::new(),
                        seed: item.seed,
                        levels: vec![(*level, *key)],
                    };
                    let failure = GenerationFailure::Store {
                        message: e.to_string(),
                    };
                    self.shared.fail(self.index, &single, &failure);
                }
            }
        }
    }
}
