//! The generator service: bounded priority queues, deduplication by cache key, the shared
//! state its workers ([`super::worker`]) fill the cache from.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender, TrySendError};

use super::stats::{Counters, GeneratorStats};
use crate::cache::{Cache, CacheKey};
use crate::engine::{CancelToken, EngineFingerprint, NoiseLevel};
use crate::sync::lock;

use super::shared::{Shared, WorkItem, CANCELLING, DRAINING, RUNNING};
use super::types::{
    check_request, level_key, EngineFactory, GeneratorConfig, GeneratorError, LevelOutcome,
    Priority, Receipt, Request, Shutdown, SourceImage, WaitOutcome,
};
use super::worker::Worker;

/// The background generation service.
pub struct Generator {
    shared: Arc<Shared>,
    online: Sender<WorkItem>,
    prewarm: Sender<WorkItem>,
    online_rx: Receiver<WorkItem>,
    prewarm_rx: Receiver<WorkItem>,
    wake: Sender<()>,
    workers: Vec<JoinHandle<()>>,
}

impl Generator {
    /// Starts one worker per configured device.
    pub fn start(
        factory: Arc<dyn EngineFactory>,
        cache: Arc<Cache>,
        config: GeneratorConfig,
    ) -> Result<Self, GeneratorError> {
        if config.devices.is_empty() || config.queue_capacity == 0 || config.max_batch == 0 {
            return Err(GeneratorError::Config {
                devices: config.devices.len(),
                queue_capacity: config.queue_capacity,
                max_batch: config.max_batch,
            });
        }
        // Bounded by `Shared::waiting` (levels), not by the channels (items).
        let (online, online_rx) = channel::unbounded();
        let (prewarm, prewarm_rx) = channel::unbounded();
        // Workers sleep on this channel; closing it (dropping the sender) wakes them for shutdown.
        let (wake, wake_rx) = channel::unbounded::<()>();
        let shared = Arc::new(Shared {
            cache,
            fingerprint: factory.fingerprint().clone(),
            resolution: factory.resolution(),
            config: config.clone(),
            counters: Counters::new(&config.devices),
            pending: Mutex::new(HashSet::new()),
            failures: Mutex::new(HashMap::new()),
            settled: Condvar::new(),
            settle_epoch: AtomicU64::new(0),
            waiting: [AtomicUsize::new(0), AtomicUsize::new(0)],
            mode: AtomicU8::new(RUNNING),
            held: AtomicBool::new(false),
            cancel: CancelToken::new(),
        });
        let mut workers = Vec::with_capacity(config.devices.len());
        for (index, device) in config.devices.iter().enumerate() {
            let worker = Worker {
                index,
                shared: shared.clone(),
                factory: factory.clone(),
                device: device.clone(),
                online: online_rx.clone(),
                prewarm: prewarm_rx.clone(),
                wake: wake_rx.clone(),
            };
            let handle = std::thread::Builder::new()
                .name(format!("genie-gen-{device}"))
                .spawn(move || worker.run())
                .map_err(GeneratorError::Spawn)?;
            workers.push(handle);
        }
        Ok(Generator {
            shared,
            online,
            prewarm,
            online_rx,
            prewarm_rx,
            wake,
            workers,
        })
    }

    /// The engine its workers run: its images' keys are made for it.
    pub fn fingerprint(&self) -> &EngineFingerprint {
        &self.shared.fingerprint
    }

    /// The cache the workers store into.
    pub fn cache(&self) -> &Arc<Cache> {
        &self.shared.cache
    }

    /// Side length the sources of requests must have.
    pub fn resolution(&self) -> u32 {
        self.shared.resolution
    }

    /// The cache key of one level of a request.
    pub fn key(
        &self,
        source: Option<&SourceImage>,
        prompt: &str,
        level: NoiseLevel,
        seed: u64,
    ) -> CacheKey {
        level_key(&self.shared.fingerprint, source, prompt, level, seed)
    }

    /// Workers take no new batch until [`release`](Self::release); what is in flight finishes.
    /// Queue a whole run while held and each worker then takes its batches in queue order, so
    /// the same requests are grouped into the same engine calls on every run: batched and single
    /// chains differ in the last bits, which can move a pixel by one step, and `genie generate`
    /// promises the same pixels for the same inputs. Shutting down releases the hold.
    pub fn hold(&self) {
        self.shared.held.store(true, Ordering::Release);
    }

    /// Lets workers take batches again after [`hold`](Self::hold).
    pub fn release(&self) {
        self.shared.held.store(false, Ordering::Release);
        for _ in 0..self.shared.config.devices.len() {
            let _ = self.wake.try_send(());
        }
    }

    /// Asks for a request's levels; never waits for generation or for a lock held by a worker.
    pub fn request(&self, req: Request) -> Result<Receipt, GeneratorError> {
        check_request(&req, self.shared.resolution)?;
        let c = &self.shared.counters.levels;
        let running = self.shared.mode.load(Ordering::Acquire) == RUNNING;
        let now = Instant::now();
        let mut outcomes: Vec<(NoiseLevel, CacheKey, LevelOutcome)> = req
            .levels
            .iter()
            .map(|&l| {
                (
                    l,
                    self.key(req.source.as_ref(), &req.prompt, l, req.seed),
                    LevelOutcome::Queued,
                )
            })
            .collect();
        // Pending and backing-off keys first, under the locks; no I/O while they are held.
        {
            let pending = lock(&self.shared.pending);
            let failures = lock(&self.shared.failures);
            for (_, key, outcome) in outcomes.iter_mut() {
                if pending.contains(key) {
                    *outcome = LevelOutcome::AlreadyPending;
                } else if failures.get(key).is_some_and(|f| f.until > now) {
                    *outcome = LevelOutcome::BackingOff;
                }
            }
        }
        for (_, key, outcome) in outcomes.iter_mut().filter(|o| o.2 == LevelOutcome::Queued) {
            if self.shared.cache.contains(key)? {
                *outcome = LevelOutcome::AlreadyCached;
            } else if !running {
                *outcome = LevelOutcome::Dropped;
            }
        }
        let mut to_queue = Vec::new();
        {
            // Another request may have queued the same key since the first look.
            let mut pending = lock(&self.shared.pending);
            for (level, key, outcome) in outcomes.iter_mut().filter(|o| o.2 == LevelOutcome::Queued)
            {
                if pending.insert(*key) {
                    to_queue.push((*level, *key));
                } else {
                    *outcome = LevelOutcome::AlreadyPending;
                }
            }
        }
        if !to_queue.is_empty() {
            let levels = to_queue.len();
            let n = levels as u64;
            let item = WorkItem {
                source: req.source.clone(),
                target: req.target.clone(),
                prompt: req.prompt.clone(),
                seed: req.seed,
                levels: to_queue,
            };
            let queue = match req.priority {
                Priority::Online => &self.online,
                Priority::Prewarm => &self.prewarm,
            };
            let waiting = &self.shared.waiting[queue_index(req.priority)];
            let capacity = self.shared.config.queue_capacity;
            let room = waiting
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                    (w + levels <= capacity).then_some(w + levels)
                })
                .is_ok();
            let sent = if room {
                queue.try_send(item).inspect_err(|_| {
                    waiting.fetch_sub(levels, Ordering::AcqRel);
                })
            } else {
                Err(TrySendError::Full(item))
            };
            match sent {
                Ok(()) => {
                    // A worker may be asleep on the wake channel.
                    let _ = self.wake.try_send(());
                    crate::counters::add(&c.queued, n);
                }
                Err(TrySendError::Full(item)) | Err(TrySendError::Disconnected(item)) => {
                    let mut pending = lock(&self.shared.pending);
                    for (_, key) in &item.levels {
                        pending.remove(key);
                    }
                    for o in outcomes.iter_mut().filter(|o| o.2 == LevelOutcome::Queued) {
                        o.2 = LevelOutcome::Dropped;
                    }
                }
            }
        }
        for (_, _, o) in &outcomes {
            let counter = match o {
                LevelOutcome::Queued => continue,
                LevelOutcome::AlreadyPending => &c.deduplicated,
                LevelOutcome::AlreadyCached => &c.cached,
                LevelOutcome::BackingOff => &c.backing_off,
                LevelOutcome::Dropped => &c.dropped,
                LevelOutcome::Sent => continue,
            };
            crate::counters::add(counter, 1);
        }
        Ok(Receipt { levels: outcomes })
    }

    /// Waits until `key` is settled (cached or failed), at most `timeout`.
    pub fn wait(&self, key: &CacheKey, timeout: Duration) -> Result<WaitOutcome, GeneratorError> {
        let deadline = Instant::now() + timeout;
        let mut pending = lock(&self.shared.pending);
        while pending.contains(key) {
            let now = Instant::now();
            if now >= deadline {
                return Ok(WaitOutcome::TimedOut);
            }
            pending = self.shared.wait_settled(pending, deadline - now);
        }
        drop(pending);
        if let Some(f) = lock(&self.shared.failures).get(key) {
            return Ok(WaitOutcome::Failed(f.last.clone()));
        }
        Ok(if self.shared.cache.contains(key)? {
            WaitOutcome::Ready
        } else {
            WaitOutcome::NotPending
        })
    }

    /// Whether the queue of `priority` has room now. A hint for callers that would do work
    /// (hash a source, say) only to be refused: another caller may take the room first.
    pub fn has_room(&self, priority: Priority) -> bool {
        self.shared.waiting[queue_index(priority)].load(Ordering::Acquire)
            < self.shared.config.queue_capacity
    }

    /// Most levels each priority's queue holds ([`GeneratorConfig::queue_capacity`]).
    pub fn queue_capacity(&self) -> usize {
        self.shared.config.queue_capacity
    }

    /// Whether `key` is queued or being generated now (no I/O, one short lock).
    pub fn is_pending(&self, key: &CacheKey) -> bool {
        lock(&self.shared.pending).contains(key)
    }

    /// Whether the last generation of `key` failed (and it has not been made since).
    pub fn has_failed(&self, key: &CacheKey) -> bool {
        lock(&self.shared.failures).contains_key(key)
    }

    /// A counter that moves whenever keys stop being pending; see
    /// [`wait_for_settling`](Self::wait_for_settling).
    pub fn settle_epoch(&self) -> u64 {
        self.shared.settle_epoch.load(Ordering::Acquire)
    }

    /// Waits until some key stops being pending after the caller saw `seen` (a
    /// [`settle_epoch`](Self::settle_epoch)), at most `timeout`; returns the epoch now. One
    /// thread waiting here can wake any number of waiters that are not threads (a server's long
    /// polls).
    pub fn wait_for_settling(&self, seen: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut pending = lock(&self.shared.pending);
        loop {
            let epoch = self.settle_epoch();
            let now = Instant::now();
            if epoch != seen || now >= deadline {
                return epoch;
            }
            pending = self.shared.wait_settled(pending, deadline - now);
        }
    }

    /// Counters of the queues and workers so far.
    pub fn stats(&self) -> GeneratorStats {
        self.shared.counters.snapshot(
            self.shared
                .waiting
                .iter()
                .map(|w| w.load(Ordering::Relaxed))
                .sum(),
        )
    }

    /// Drains like [`Shutdown::Drain`] for at most `deadline`, then cancels like
    /// [`Shutdown::Cancel`]: a server told to stop must end within its grace period whatever
    /// is queued.
    pub fn shutdown_within(mut self, deadline: Duration) -> GeneratorStats {
        let until = Instant::now() + deadline;
        self.shared.mode.store(DRAINING, Ordering::Release);
        self.wake_workers();
        while self.workers.iter().any(|w| !w.is_finished()) {
            if Instant::now() >= until {
                tracing::warn!(
                    queued = self.stats().queue_len,
                    "the drain deadline passed: cancelling what is queued and in flight"
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop(Shutdown::Cancel);
        self.stats()
    }

    fn wake_workers(&self) {
        // Each sees the mode on its next look at the queues.
        for _ in 0..self.workers.len() {
            let _ = self.wake.try_send(());
        }
    }

    /// Stops the workers and joins them. With [`Shutdown::Cancel`] the queued work is dropped
    /// (and counted), and batches in flight stop within one denoising step (engines that watch
    /// their [`CancelToken`]) and are dropped too; with `Drain` everything queued is made.
    pub fn shutdown(mut self, mode: Shutdown) -> GeneratorStats {
        self.stop(mode);
        self.stats()
    }

    fn stop(&mut self, mode: Shutdown) {
        let code = match mode {
            Shutdown::Drain => DRAINING,
            Shutdown::Cancel => CANCELLING,
        };
        self.shared.mode.store(code, Ordering::Release);
        if code == CANCELLING {
            self.shared.cancel.cancel();
        }
        self.wake_workers();
        for handle in self.workers.drain(..) {
            if handle.join().is_err() {
                tracing::error!("a generator worker thread panicked outside an engine call");
            }
        }
        // Whatever is still queued (cancel, or nothing left to drain it) is dropped and counted.
        for (online, rx) in [(true, &self.online_rx), (false, &self.prewarm_rx)] {
            while let Ok(item) = rx.try_recv() {
                self.shared.taken(online, &item);
                self.shared.forget(&item);
                crate::counters::add(
                    &self.shared.counters.levels.dropped,
                    item.levels.len() as u64,
                );
            }
        }
    }
}

/// Which of [`Shared::waiting`] counts a priority's queue.
fn queue_index(priority: Priority) -> usize {
    match priority {
        Priority::Online => 0,
        Priority::Prewarm => 1,
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        if !self.workers.is_empty() {
            self.stop(Shutdown::Cancel);
        }
    }
}
