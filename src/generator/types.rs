//! What the generator's callers and engines see: requests and their receipts, the config, the
//! errors, and the engine traits the workers call.

use std::sync::Arc;
use std::time::Duration;

use image::RgbImage;

use crate::cache::{CacheError, CacheKey, KeyInputs};
use crate::engine::{CancelToken, Engine, EngineFingerprint, Job, JobOutput, NoiseLevel};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An engine behind a trait object, so workers of different engine types share one service.
pub trait DynEngine: Send {
    /// The cache-key identity of the engine (model, options, algorithm).
    fn fingerprint(&self) -> &EngineFingerprint;
    /// The side of the square sources it takes, in pixels.
    fn resolution(&self) -> u32;
    /// Runs a batch of jobs; one output per job, in order.
    fn generate(&mut self, jobs: &[Job]) -> Result<Vec<JobOutput>, BoxError>;
    /// The token a shutdown uses to stop a long call between steps.
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
    /// A training loop's request.
    Online,
    /// A pre-warm's request.
    Prewarm,
}

/// A preprocessed source image with its pixel hash, computed once so that requests stay cheap.
#[derive(Clone, Debug)]
pub struct SourceImage {
    /// The pixels at the engine's resolution.
    pub pixels: Arc<RgbImage>,
    /// blake3 of the pixels (the source's part of a cache key).
    pub hash: [u8; 32],
}

impl SourceImage {
    /// Hashes the pixels once.
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
    /// The full prompt ("a photo of a …").
    pub prompt: String,
    /// The levels r wanted.
    pub levels: Vec<NoiseLevel>,
    /// The noise seed (part of the key).
    pub seed: u64,
    /// Which queue it joins.
    pub priority: Priority,
}

/// What happened to one requested level, decided at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LevelOutcome {
    /// Queued for generation.
    Queued,
    /// Already queued or being generated.
    AlreadyPending,
    /// Already in the cache.
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
    /// (level, its cache key, what happened), in request order.
    pub levels: Vec<(NoiseLevel, CacheKey, LevelOutcome)>,
}

impl Receipt {
    /// Levels with this outcome.
    pub fn count(&self, outcome: LevelOutcome) -> usize {
        self.levels.iter().filter(|(_, _, o)| *o == outcome).count()
    }
}

/// Why generating a level failed, as a waiter (in this process or across `genie serve`) sees it.
///
/// The underlying errors (an engine's, the cache's) do not cross threads or the network, so each
/// kind keeps their message; the kind is what a caller matches on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum GenerationFailure {
    /// No engine could be made on the worker's device (e.g. unreadable weights); retried with
    /// backoff.
    #[error("cannot create the engine on {device}: {message}")]
    EngineCreation {
        /// The device (`cpu`, `cuda:0`, …).
        device: String,
        /// The factory's error.
        message: String,
    },
    /// The engine's call returned an error (e.g. non-finite values, a bad source).
    #[error("the engine failed: {message}")]
    Engine {
        /// The engine's error.
        message: String,
    },
    /// The engine panicked; the worker builds a fresh one for its next batch.
    #[error("engine panicked: {message}")]
    Panic {
        /// The panic's payload, when it was text.
        message: String,
    },
    /// The engine answered with another number of outputs than it was asked for.
    #[error("the engine returned {got} {what} for {expected}")]
    WrongCount {
        /// "outputs" (per job) or "images" (per level).
        what: String,
        /// Returned.
        got: usize,
        /// Asked for.
        expected: usize,
    },
    /// The image was made but cannot be stored in the cache.
    #[error("cannot store in the cache: {message}")]
    Store {
        /// The cache's error.
        message: String,
    },
    /// A `genie serve` older than this client reported a failure without its kind.
    #[error("{message}")]
    Remote {
        /// The server's message.
        message: String,
    },
}

/// What waiting on a key found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The image is in the cache.
    Ready,
    /// Generation failed (and is backing off before it may be requested again).
    Failed(GenerationFailure),
    /// Neither cached nor pending (never requested, or dropped).
    NotPending,
    /// Still pending when the wait ended.
    TimedOut,
}

impl std::fmt::Display for WaitOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitOutcome::Ready => f.write_str("ready"),
            WaitOutcome::Failed(failure) => write!(f, "failed: {failure}"),
            WaitOutcome::NotPending => f.write_str("neither cached nor pending (dropped?)"),
            WaitOutcome::TimedOut => f.write_str("timed out"),
        }
    }
}

/// How to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// Finish everything queued, then stop.
    Drain,
    /// Finish the batches in flight, drop the rest.
    Cancel,
}

/// How the generator service runs: devices, queue bounds, batching, retry backoff.
///
/// New settings may be added: start from [`GeneratorConfig::default`] and set fields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct GeneratorConfig {
    /// Devices, one worker thread (and engine) each.
    pub devices: Vec<String>,
    /// Most levels (images) waiting per priority; more are dropped.
    pub queue_capacity: usize,
    /// Most jobs one engine call runs together.
    pub max_batch: usize,
    /// First wait before a failed key may be requested again; doubles per failure.
    pub failure_backoff: Duration,
    /// The longest backoff.
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

/// Why the generator (in this process or remote) cannot start or take a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GeneratorError {
    /// A configuration value is zero.
    #[error(
        "generator config: {devices} devices, queue capacity {queue_capacity}, batch size \
         {max_batch}: each must be at least 1"
    )]
    Config {
        /// Devices given.
        devices: usize,
        /// Queue capacity given.
        queue_capacity: usize,
        /// Batch size given.
        max_batch: usize,
    },
    /// A source is not the engine's size.
    #[error("request: source is {width}x{height}; the engine expects {expected}x{expected}")]
    SourceSize {
        /// The source's width.
        width: u32,
        /// The source's height.
        height: u32,
        /// The engine's side.
        expected: u32,
    },
    /// An img2img level without a source image.
    #[error("request: levels below 1.0 need a source image")]
    MissingSource,
    /// The cache cannot be read or written.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A worker thread cannot be started.
    #[error("cannot start worker thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// A remote generator could not answer (unreachable, or it refused the call); the source is
    /// the client's typed error (`genie::remote::RemoteError` for genie's own client).
    #[error("remote generator: {0}")]
    Remote(#[source] Box<dyn std::error::Error + Send + Sync>),
}

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
            return Err(GeneratorError::SourceSize {
                width: w,
                height: h,
                expected: r,
            });
        }
    } else if req.levels.iter().any(|l| !l.is_text_to_image()) {
        return Err(GeneratorError::MissingSource);
    }
    Ok(())
}
