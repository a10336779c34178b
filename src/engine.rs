//! The engine interface: what a hard-negative generator is asked for and what it returns.
//!
//! Plain Rust with no tensor library, so the generator and the cache can depend on it without
//! knowing candle. The candle implementation is [`crate::diffusion::SdEngine`].

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use image::RgbImage;

/// An img2img noise level r in thousandths: `NoiseLevel(800)` is r = 0.8.
///
/// Stored as an integer so that it can be hashed, compared and written into keys and file names
/// without float formatting surprises. Valid levels are 1..=1000; 1000 is text-to-image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NoiseLevel(u16);

impl NoiseLevel {
    /// r = 1.0: start from pure noise (the Txt2Img baseline).
    pub const TEXT_TO_IMAGE: NoiseLevel = NoiseLevel(1000);
    /// GeNIe's fixed level.
    pub const GENIE_DEFAULT: NoiseLevel = NoiseLevel(800);
    /// The GeNIe-Ada sweep r ∈ {0.5, 0.6, 0.7, 0.8, 0.9}.
    pub const ADA_SWEEP: [NoiseLevel; 5] = [
        NoiseLevel(500),
        NoiseLevel(600),
        NoiseLevel(700),
        NoiseLevel(800),
        NoiseLevel(900),
    ];

    /// A level from thousandths; `None` outside 1..=1000.
    pub fn from_thousandths(t: u16) -> Option<Self> {
        (1..=1000).contains(&t).then_some(NoiseLevel(t))
    }

    /// Parses `0.8`, `.8` or `1` (at most three decimals, in (0, 1]) without going through a float.
    pub fn parse(s: &str) -> Result<Self, LevelParseError> {
        let bad = || LevelParseError(s.to_string());
        let s_trim = s.trim();
        let (int, frac) = match s_trim.split_once('.') {
            Some((i, f)) => (i, f),
            None => (s_trim, ""),
        };
        if int.len() > 1
            || frac.len() > 3
            || (int.is_empty() && frac.is_empty())
            || !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit())
        {
            return Err(bad());
        }
        let int: u16 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad())?
        };
        let mut thousandths = int * 1000;
        for (i, c) in frac.chars().enumerate() {
            thousandths += (c as u16 - b'0' as u16) * [100, 10, 1][i];
        }
        Self::from_thousandths(thousandths).ok_or_else(bad)
    }

    /// r in thousandths (800 is r = 0.8): the exact form keys and the wire use.
    pub fn thousandths(self) -> u16 {
        self.0
    }

    /// r as a float, for display and plots only.
    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / 1000.0
    }

    /// Whether r = 1: pure noise, no source image (text-to-image).
    pub fn is_text_to_image(self) -> bool {
        self.0 == 1000
    }

    /// How many of `total_steps` denoising steps run at this level: ⌊N·r⌋, in exact integer
    /// arithmetic (diffusers computes `int(N * strength)` in floats, which agrees for every
    /// level with at most three decimals at N ≤ 1000 except where N·r is within 1e-12 of an integer
    /// from below, e.g. 0.29·100; the parity fixtures pin the levels we test).
    pub fn steps_to_run(self, total_steps: usize) -> usize {
        total_steps * usize::from(self.0) / 1000
    }

    /// Index into the scheduler's timestep grid where this level starts: `N − ⌊N·r⌋`.
    pub fn start_index(self, total_steps: usize) -> usize {
        total_steps - self.steps_to_run(total_steps)
    }
}

impl fmt::Display for NoiseLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.0;
        if t % 100 == 0 {
            write!(f, "{}.{}", t / 1000, (t % 1000) / 100)
        } else if t % 10 == 0 {
            write!(f, "{}.{:02}", t / 1000, (t % 1000) / 10)
        } else {
            write!(f, "{}.{:03}", t / 1000, t % 1000)
        }
    }
}

/// A noise level that could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid noise level {0:?}: expected a number in (0, 1] with at most three decimals, e.g. 0.8"
)]
pub struct LevelParseError(pub String);

/// Everything about an engine that changes the pixels it makes, besides the job itself.
///
/// Two engines with equal fingerprints turn equal jobs into equal images; any difference must
/// change the cache key. Floats are kept as canonical text so that equality is exact.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct EngineFingerprint {
    /// Model identity: a hash of the model's config and weight files, or `repo@revision`.
    pub model: String,
    /// Sampler kind and every parameter of it, as canonical text.
    pub scheduler: String,
    /// N, the length of the full timestep grid.
    pub steps: u32,
    /// Guidance scale as Rust's shortest round-trip decimal (`7.5`).
    pub guidance: String,
    /// Image side length in pixels.
    pub resolution: u32,
    /// Compute dtype of the UNet and text encoder (`f32`, `f16`, `bf16`).
    pub dtype: String,
    /// Bumped when the engine's code changes its output for the same inputs.
    pub algorithm_version: u32,
}

impl std::fmt::Display for EngineFingerprint {
    /// `model (scheduler N steps, guidance G, Rpx, dtype, algorithm V)`: what an error says of
    /// two engines that differ.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} {} steps, guidance {}, {}px, {}, algorithm {})",
            self.model,
            self.scheduler,
            self.steps,
            self.guidance,
            self.resolution,
            self.dtype,
            self.algorithm_version
        )
    }
}

/// A fingerprint for unit tests: arbitrary fields, the given resolution.
#[cfg(test)]
pub(crate) fn test_fingerprint(resolution: u32) -> EngineFingerprint {
    EngineFingerprint {
        model: "m".into(),
        scheduler: "s".into(),
        steps: 10,
        guidance: "7.5".into(),
        resolution,
        dtype: "f32".into(),
        algorithm_version: 1,
    }
}

/// How a prompt is written for a target class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptTemplate {
    /// Template with `{target}` and optionally `{superclass}`.
    pub with_target: String,
    /// Template used when a superclass is given.
    pub with_superclass: String,
}

impl Default for PromptTemplate {
    /// The GeNIe paper's prompts: `a photo of a {target}.` and
    /// `a photo of a {target}, a type of {superclass}.`
    fn default() -> Self {
        PromptTemplate {
            with_target: "a photo of a {target}.".into(),
            with_superclass: "a photo of a {target}, a type of {superclass}.".into(),
        }
    }
}

impl PromptTemplate {
    /// The prompt for a target class, with its superclass when one is given.
    pub fn render(&self, target: &str, superclass: Option<&str>) -> String {
        match superclass {
            Some(sup) => self
                .with_superclass
                .replace("{target}", target)
                .replace("{superclass}", sup),
            None => self.with_target.replace("{target}", target),
        }
    }
}

/// One generation request: a source image, a prompt and one or more noise levels.
///
/// All levels of a job share the source's latents and the same initial noise, so the level is
/// the only thing that differs between its images (what GeNIe-Ada's sweep needs).
#[derive(Clone, Debug)]
pub struct Job {
    /// The preprocessed source image at the engine's resolution. `None` only when every level
    /// is text-to-image (r = 1).
    pub source: Option<Arc<RgbImage>>,
    /// The full prompt.
    pub prompt: String,
    /// The levels r to make, each one image.
    pub levels: Vec<NoiseLevel>,
    /// Seed of the initial noise; the same (seed, shape) gives the same noise on every device.
    pub seed: u64,
    /// Explicit initial noise (`[1, C, h, w]` row-major), overriding the seed.
    pub noise: Option<Arc<Vec<f32>>>,
}

/// One generated image and how it was made.
#[derive(Clone, Debug)]
pub struct LevelImage {
    /// The level it was made at.
    pub level: NoiseLevel,
    /// The timestep at which noise was added (the first timestep run).
    pub start_timestep: usize,
    /// Denoising steps run (UNet evaluations per guidance branch).
    pub steps_run: usize,
    /// The image.
    pub image: RgbImage,
}

/// The images of one job, in the order of its levels.
#[derive(Clone, Debug)]
pub struct JobOutput {
    /// One per requested level, in order.
    pub images: Vec<LevelImage>,
}

/// Asks running [`Engine::generate`] calls to stop early; clones share one flag.
///
/// A batch of 512 px chains takes minutes on a CPU: without this, shutting a generator down (or
/// a training program ending) would wait for it.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stops every engine watching this token at its next check; cannot be undone.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether `cancel` was called on it or a clone.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Anything that turns jobs into images. The real one is [`crate::diffusion::SdEngine`].
pub trait Engine {
    /// What a failed call reports.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Side length of the square images this engine makes and expects as sources.
    fn resolution(&self) -> u32;

    /// What, besides the job, determines this engine's pixels (part of every cache key).
    fn fingerprint(&self) -> &EngineFingerprint;

    /// Runs a batch of jobs; outputs are in job order.
    fn generate(&mut self, jobs: &[Job]) -> Result<Vec<JobOutput>, Self::Error>;

    /// Lets `token` stop this engine's `generate` calls early (between denoising steps, with an
    /// error). Engines whose calls are short may ignore it, as the default does.
    fn set_cancel(&mut self, token: CancelToken) {
        let _ = token;
    }
}
