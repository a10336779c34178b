//! A stand-in engine for tests and benches (`testing` feature): instant, deterministic images
//! through the real generator, cache and batcher, a gate that holds its calls, a log of what it
//! made, and on request a long call that only cancellation ends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use image::{Rgb, RgbImage};

use crate::engine::{CancelToken, Engine, EngineFingerprint, Job, JobOutput, LevelImage};
use crate::generator::{DynEngine, EngineFactory};
use crate::NoiseLevel;

/// Holds every engine call until opened (closed when made).
#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    /// A closed gate: calls wait until [`Gate::open`].
    pub fn closed() -> Arc<Gate> {
        Arc::new(Gate::default())
    }

    /// Lets every call, waiting or later, through.
    pub fn open(&self) {
        *crate::sync::lock(&self.open) = true;
        self.cv.notify_all();
    }

    /// Waits until the gate is open.
    pub fn pass(&self) {
        let mut open = crate::sync::lock(&self.open);
        while !*open {
            open = self.cv.wait(open).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// How a [`FakeEngine`] colours the (flat) image of one job at one level.
pub type Paint = fn(&Job, NoiseLevel) -> Rgb<u8>;

/// What the engines of one [`FakeFactory`] made: `(prompt, level in thousandths, seed)` per
/// image, and the jobs per call.
#[derive(Debug, Default)]
pub struct FakeLog {
    /// One entry per image, in the order made.
    pub generated: Vec<(String, u16, u64)>,
    /// Jobs per engine call.
    pub batch_sizes: Vec<usize>,
}

/// Makes [`FakeEngine`]s: flat `side`×`side` images painted by `paint`.
///
/// A job whose prompt contains `panic` makes the engine panic, one with `fail` makes it return
/// an error: the generator's recovery paths, without a model.
#[derive(Clone)]
pub struct FakeFactory {
    /// The engines' fingerprint (what the cache keys hash).
    pub fingerprint: EngineFingerprint,
    /// Their image side.
    pub side: u32,
    /// Each image's colour.
    pub paint: Paint,
    /// Every call waits here first, when given.
    pub gate: Option<Arc<Gate>>,
    /// How long each call takes, unless cancelled (then it fails): a long UNet call.
    pub call_time: Duration,
    /// What the engines made.
    pub log: Arc<Mutex<FakeLog>>,
    /// Engines made so far.
    pub created: Arc<AtomicUsize>,
}

impl FakeFactory {
    /// Engines with this fingerprint and side, instant and ungated.
    pub fn new(fingerprint: EngineFingerprint, side: u32, paint: Paint) -> FakeFactory {
        FakeFactory {
            fingerprint,
            side,
            paint,
            gate: None,
            call_time: Duration::ZERO,
            log: Arc::default(),
            created: Arc::default(),
        }
    }

    /// Every call waits at `gate` first.
    pub fn with_gate(mut self, gate: Arc<Gate>) -> FakeFactory {
        self.gate = Some(gate);
        self
    }

    /// Every call takes `time` unless cancelled.
    pub fn with_call_time(mut self, time: Duration) -> FakeFactory {
        self.call_time = time;
        self
    }
}

impl EngineFactory for FakeFactory {
    fn fingerprint(&self) -> &EngineFingerprint {
        &self.fingerprint
    }

    fn resolution(&self) -> u32 {
        self.side
    }

    fn create(
        &self,
        _device: &str,
    ) -> Result<Box<dyn DynEngine>, Box<dyn std::error::Error + Send + Sync>> {
        self.created.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(FakeEngine {
            factory: self.clone(),
            cancel: CancelToken::default(),
        }))
    }
}

/// The engine a [`FakeFactory`] makes.
pub struct FakeEngine {
    factory: FakeFactory,
    cancel: CancelToken,
}

impl Engine for FakeEngine {
    type Error = std::io::Error;

    fn resolution(&self) -> u32 {
        self.factory.side
    }

    fn fingerprint(&self) -> &EngineFingerprint {
        &self.factory.fingerprint
    }

    fn set_cancel(&mut self, token: CancelToken) {
        self.cancel = token;
    }

    fn generate(&mut self, jobs: &[Job]) -> Result<Vec<JobOutput>, std::io::Error> {
        let f = &self.factory;
        if let Some(gate) = &f.gate {
            gate.pass();
        }
        let end = Instant::now() + f.call_time;
        while Instant::now() < end {
            if self.cancel.is_cancelled() {
                return Err(std::io::Error::other("cancelled"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut log = crate::sync::lock(&f.log);
        log.batch_sizes.push(jobs.len());
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            if job.prompt.contains("panic") {
                drop(log);
                panic!("the fake engine was asked to panic");
            }
            if job.prompt.contains("fail") {
                return Err(std::io::Error::other("the fake engine was asked to fail"));
            }
            let mut images = Vec::with_capacity(job.levels.len());
            for &level in &job.levels {
                log.generated
                    .push((job.prompt.clone(), level.thousandths(), job.seed));
                images.push(LevelImage {
                    level,
                    start_timestep: 0,
                    steps_run: 1,
                    image: RgbImage::from_pixel(f.side, f.side, (f.paint)(job, level)),
                });
            }
            out.push(JobOutput { images });
        }
        Ok(out)
    }
}
