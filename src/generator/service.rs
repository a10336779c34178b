//! The generator service: bounded priority queues, deduplication by cache key, worker threads.

use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender, TrySendError};
use image::RgbImage;

use super::stats::{Counters, GeneratorStats};
use crate::cache::{Cache, CacheError, CacheKey, EntryMeta, KeyInputs};
use crate::engine::{CancelToken, Engine, EngineFingerprint, Job, JobOutput, NoiseLevel};
use crate::sync::lock;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An engine behind a trait object, so workers of different engine types share one service.
pub trait DynEngine: Send {
    fn fingerprint(&self) -> &EngineFingerprint;
    fn resolution(&self) -> u32;
    fn generate(&mut self, jobs: &[Job]) -> Result<Vec<JobOutput>, BoxError>;
    fn set_cancel(&mut self, token: CancelToken);
}

impl<E: Engine + Send> DynEngine for E {
    fn fingerprint(&self) -> &EngineFingerprint {
        Engine::fingerprint(self)
    }
    fn resolution(&self) -> u32 {
        Engine::resolution(self)
    }
    fn generate(&mut self, jobs: &[Job]) -> Result<Vec<JobOutput>, BoxError> {
        Engine::generate(self, jobs).map_err(|e| Box::new(e) as BoxError)
    }
    fn set_cancel(&mut self, token: CancelToken) {
        Engine::set_cancel(self, token);
    }
}

/// Makes engines for worker threads. Called on the worker's own thread, at start and again after
/// a panic, so an engine never crosses threads.
pub trait EngineFactory: Send + Sync + 'static {
    /// The fingerprint every engine this factory makes will have (it goes into cache keys).
    fn fingerprint(&self) -> &EngineFingerprint;
    /// The side length of the images its engines make and expect as sources.
    fn resolution(&self) -> u32;
    /// A fresh engine for `device` (`cpu`, `cuda:0`, …).
    fn create(&self, device: &str) -> Result<Box<dyn DynEngine>, BoxError>;
}

/// Who is asking: the training loop's requests go before pre-warm work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Priority {
    Online,
    Prewarm,
}

/// A preprocessed source image with its pixel hash, computed once so that requests stay cheap.
#[derive(Clone, Debug)]
pub struct SourceImage {
    pub pixels: Arc<RgbImage>,
    pub hash: [u8; 32],
}

impl SourceImage {
    pub fn new(pixels: RgbImage) -> Self {
        let hash = *crate::image_io::pixel_hash(&pixels).as_bytes();
        SourceImage {
            pixels: Arc::new(pixels),
            hash,
        }
    }
}

/// Hard negatives of one source for one target class, at one or more levels.
#[derive(Clone, Debug)]
pub struct Request {
    /// `None` only for text-to-image (every level 1.0).
    pub source: Option<SourceImage>,
    /// The target class label, recorded with each cached image.
    pub target: String,
    pub prompt: String,
    pub levels: Vec<NoiseLevel>,
    pub seed: u64,
    pub priority: Priority,
}

/// What happened to one requested level, decided at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LevelOutcome {
    Queued,
    /// Already queued or being generated.
    AlreadyPending,
    AlreadyCached,
    /// Failed recently; not retried until its backoff ends.
    BackingOff,
    /// The queue was full, the service is shutting down, or (remote) the server is unreachable.
    Dropped,
    /// Handed to a remote generator's sender; its real outcome comes later as a late receipt.
    Sent,
}

/// The answer to a request: the cache key and outcome of each level, in request order.
#[derive(Clone, Debug)]
pub struct Receipt {
    pub levels: Vec<(NoiseLevel, CacheKey, LevelOutcome)>,
}

impl Receipt {
    pub fn count(&self, outcome: LevelOutcome) -> usize {
        self.levels.iter().filter(|(_, _, o)| *o == outcome).count()
    }
}

/// What waiting on a key found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The image is in the cache.
    Ready,
    /// Generation failed; the message of the error.
    Failed(String),
    /// Neither cached nor pending (never requested, or dropped).
    NotPending,
    TimedOut,
}

/// How to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// Finish everything queued, then stop.
    Drain,
    /// Finish the batches in flight, drop the rest.
    Cancel,
}

#[derive(Clone, Debug)]
pub struct GeneratorConfig {
    /// Devices, one worker thread (and engine) each.
    pub devices: Vec<String>,
    /// Most levels waiting per priority; more are dropped.
    pub queue_capacity: usize,
    /// Most jobs one engine call runs together.
    pub max_batch: usize,
    /// First wait before a failed key may be requested again; doubles per failure.
    pub failure_backoff: Duration,
    pub max_backoff: Duration,
    /// Make each worker's engine when the service starts rather than at its first batch (a
    /// server wants to be ready, with its model loaded, before it says so).
    pub load_at_start: bool,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            devices: vec!["cpu".into()],
            queue_capacity: 1024,
            max_batch: 4,
            failure_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(600),
            load_at_start: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GeneratorError {
    #[error("generator config: {0}")]
    Config(String),
    #[error("request: {0}")]
    Request(String),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("cannot start worker thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// A remote generator could not answer (unreachable, or it refused the call).
    #[error("remote generator: {0}")]
    Remote(String),
}

/// One unit of work: a source, a prompt and the levels of it not yet cached.
struct WorkItem {
    source: Option<SourceImage>,
    target: String,
    prompt: String,
    seed: u64,
    levels: Vec<(NoiseLevel, CacheKey)>,
}

struct Failure {
    until: Instant,
    failures: u32,
    message: String,
}

/// What every thread shares.
struct Shared {
    cache: Arc<Cache>,
    fingerprint: EngineFingerprint,
    resolution: u32,
    config: GeneratorConfig,
    counters: Counters,
    /// Keys queued or in flight.
    pending: Mutex<HashSet<CacheKey>>,
    failures: Mutex<HashMap<CacheKey, Failure>>,
    /// Signalled whenever keys leave `pending`.
    settled: Condvar,
    mode: AtomicU8,
    /// Workers take no new batch while set (see [`Generator::hold`]).
    held: AtomicBool,
    /// Every engine watches it; `Shutdown::Cancel` (and dropping the generator) sets it, so a
    /// batch in flight stops within one denoising step.
    cancel: CancelToken,
}

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const CANCELLING: u8 = 2;

/// The cache key of one level of a request to an engine with `fingerprint` (what every
/// generator, in this process or remote, answers for it).
pub(crate) fn level_key(
    fingerprint: &EngineFingerprint,
    source: Option<&SourceImage>,
    prompt: &str,
    level: NoiseLevel,
    seed: u64,
) -> CacheKey {
    CacheKey::new(&KeyInputs {
        source: source.map(|s| s.hash),
        prompt,
        level,
        seed,
        fingerprint,
    })
}

/// Checks what every generator checks of a request: the source's size, and a source for every
/// level below 1.0.
pub(crate) fn check_request(req: &Request, resolution: u32) -> Result<(), GeneratorError> {
    if let Some(src) = &req.source {
        let (w, h) = src.pixels.dimensions();
        let r = resolution;
        if (w, h) != (r, r) {
            return Err(GeneratorError::Request(format!(
                "source is {w}x{h}; the engine expects {r}x{r}"
            )));
        }
    } else if req.levels.iter().any(|l| !l.is_text_to_image()) {
        return Err(GeneratorError::Request(
            "levels below 1.0 need a source image".into(),
        ));
    }
    Ok(())
}

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
            return Err(GeneratorError::Config(
                "need at least one device, a queue capacity and a batch size of at least 1".into(),
            ));
        }
        let (online, online_rx) = channel::bounded(config.queue_capacity);
        let (prewarm, prewarm_rx) = channel::bounded(config.queue_capacity);
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
        let c = &self.shared.counters;
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
            let n = to_queue.len() as u64;
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
            match queue.try_send(item) {
                Ok(()) => {
                    // A worker may be asleep on the wake channel.
                    let _ = self.wake.try_send(());
                    Counters::add(&c.queued, n);
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
            Counters::add(counter, 1);
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
            pending = self
                .shared
                .settled
                .wait_timeout(pending, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(pending);
        if let Some(f) = lock(&self.shared.failures).get(key) {
            return Ok(WaitOutcome::Failed(f.message.clone()));
        }
        Ok(if self.shared.cache.contains(key)? {
            WaitOutcome::Ready
        } else {
            WaitOutcome::NotPending
        })
    }

    /// Waits for each of `keys` in turn (at most `timeout` each), calling `progress(settled,
    /// total)` after each, and returns why those that did not become ready did not (for a
    /// progress bar or a log line: what every batch command does after queueing its run).
    pub fn wait_all(
        &self,
        keys: &[CacheKey],
        timeout: Duration,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Vec<String>, GeneratorError> {
        let mut failures = Vec::new();
        for (n, key) in keys.iter().enumerate() {
            match self.wait(key, timeout)? {
                WaitOutcome::Ready => {}
                WaitOutcome::Failed(message) => failures.push(message),
                other => failures.push(format!("{other:?}")),
            }
            progress(n + 1, keys.len());
        }
        Ok(failures)
    }

    /// Whether the queue of `priority` has room now. A hint for callers that would do work
    /// (hash a source, say) only to be refused: another caller may take the room first.
    pub fn has_room(&self, priority: Priority) -> bool {
        match priority {
            Priority::Online => !self.online.is_full(),
            Priority::Prewarm => !self.prewarm.is_full(),
        }
    }

    pub fn stats(&self) -> GeneratorStats {
        self.shared
            .counters
            .snapshot(self.online_rx.len() + self.prewarm_rx.len())
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
        // Wake every sleeping worker: each sees the mode on its next look at the queues.
        for _ in 0..self.workers.len() {
            let _ = self.wake.try_send(());
        }
        for handle in self.workers.drain(..) {
            if handle.join().is_err() {
                tracing::error!("a generator worker thread panicked outside an engine call");
            }
        }
        // Whatever is still queued (cancel, or nothing left to drain it) is dropped and counted.
        for rx in [&self.online_rx, &self.prewarm_rx] {
            while let Ok(item) = rx.try_recv() {
                self.shared.forget(&item);
                Counters::add(&self.shared.counters.dropped, item.levels.len() as u64);
            }
        }
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        if !self.workers.is_empty() {
            self.stop(Shutdown::Cancel);
        }
    }
}

impl Shared {
    /// Removes an item's keys from the pending set and wakes waiters.
    fn forget(&self, item: &WorkItem) {
        let mut pending = lock(&self.pending);
        for (_, key) in &item.levels {
            pending.remove(key);
        }
        drop(pending);
        self.settled.notify_all();
    }

    fn fail(&self, device: usize, item: &WorkItem, message: &str) {
        self.fail_levels(device, &item.target, &item.levels, message);
    }

    fn fail_levels(
        &self,
        device: usize,
        target: &str,
        levels: &[(NoiseLevel, CacheKey)],
        message: &str,
    ) {
        let now = Instant::now();
        let mut failures = lock(&self.failures);
        for (level, key) in levels {
            let f = failures.entry(*key).or_insert(Failure {
                until: now,
                failures: 0,
                message: String::new(),
            });
            if f.failures == 0 {
                // Logged once per key; repeats go to debug so a broken input cannot flood the log.
                tracing::warn!(key = %key, target = %target, level = %level, error = message, "hard-negative generation failed");
            } else {
                tracing::debug!(key = %key, failures = f.failures + 1, error = message, "generation failed again");
            }
            f.failures += 1;
            let factor = 1u32 << (f.failures - 1).min(16);
            f.until = now + (self.config.failure_backoff * factor).min(self.config.max_backoff);
            f.message = message.to_string();
        }
        Counters::add(&self.counters.failed, levels.len() as u64);
        Counters::add(&self.counters.devices[device].failed, levels.len() as u64);
    }
}

struct Worker {
    /// Which of the configured devices (and of the per-device counters) this is.
    index: usize,
    shared: Arc<Shared>,
    factory: Arc<dyn EngineFactory>,
    device: String,
    online: Receiver<WorkItem>,
    prewarm: Receiver<WorkItem>,
    wake: Receiver<()>,
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
                match self.online.try_recv().or_else(|_| self.prewarm.try_recv()) {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
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
                Counters::add(&self.shared.counters.panics, 1);
                Err("the engine factory panicked".into())
            }
        }
    }

    fn run(self) {
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
                let msg = format!("cannot create the engine on {}: {msg}", self.device);
                batch
                    .iter()
                    .for_each(|item| self.shared.fail(self.index, item, &msg));
                batch.iter().for_each(|item| self.shared.forget(item));
                continue;
            };
            let levels: u64 = batch.iter().map(|i| i.levels.len() as u64).sum();
            let c = &self.shared.counters;
            Counters::add(&c.in_flight, levels);
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
            Counters::add(&c.engine_calls, 1);
            Counters::add(&self.device_counters().engine_calls, 1);
            let result = catch_unwind(AssertUnwindSafe(|| active.generate(&jobs)));
            match result {
                Ok(Ok(outputs)) if outputs.len() == batch.len() => {
                    for (item, output) in batch.iter().zip(outputs) {
                        self.store(item, output);
                    }
                }
                Ok(Ok(outputs)) => {
                    let msg = format!(
                        "engine returned {} outputs for {} jobs",
                        outputs.len(),
                        batch.len()
                    );
                    batch
                        .iter()
                        .for_each(|item| self.shared.fail(self.index, item, &msg));
                }
                Ok(Err(_)) if self.shared.cancel.is_cancelled() => {
                    // Stopped by a cancelling shutdown: nothing failed, nothing to back off from.
                    Counters::add(&c.dropped, levels);
                }
                Ok(Err(e)) => {
                    let msg = e.to_string();
                    batch
                        .iter()
                        .for_each(|item| self.shared.fail(self.index, item, &msg));
                }
                Err(panic) => {
                    Counters::add(&c.panics, 1);
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "engine panicked".into());
                    tracing::error!(device = %self.device, panic = %msg, "engine panicked; restarting it");
                    batch.iter().for_each(|item| {
                        self.shared
                            .fail(self.index, item, &format!("engine panicked: {msg}"))
                    });
                    // The next batch builds a fresh engine.
                    engine = None;
                    self.device_counters().loaded.store(0, Ordering::Relaxed);
                }
            }
            c.in_flight.fetch_sub(levels, Ordering::Relaxed);
            batch.iter().for_each(|item| self.shared.forget(item));
        }
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
                self.shared.settled.notify_all();
            }
        }
        batch.retain(|item| !item.levels.is_empty());
    }

    fn store(&self, item: &WorkItem, output: JobOutput) {
        if output.images.len() != item.levels.len() {
            self.shared.fail(
                self.index,
                item,
                "engine returned the wrong number of images",
            );
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
                    Counters::add(&self.shared.counters.done, 1);
                    Counters::add(&self.device_counters().done, 1);
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
                    self.shared.fail(
                        self.index,
                        &single,
                        &format!("cannot store in the cache: {e}"),
                    );
                }
            }
        }
    }
}
