//! What an engine will be, decided from the model's config files and the options before any
//! weight is read: the networks' specs, the image size, the timestep grid and the fingerprint.

use candle_core::DType;

use super::config::{self, ConfigReader, TextSpec, VaeSpec};
use super::options::{dtype_name, MAX_SIZE};
use super::scheduler::TimestepGrid;
use super::unet::UNetConfig;
use super::OptionsError;
use super::{
    DiffusionError, EngineOptions, ModelFiles, ModelSource, SchedulerConfig, SchedulerError,
};
use crate::engine::{EngineFingerprint, NoiseLevel};

/// Bumped whenever a change to this engine changes the pixels it produces for the same inputs.
/// 2: the UNet's timestep sinusoids are computed in f32 in every dtype (f16/bf16 pixels changed).
/// Not bumped for changes of float rounding only, within the parity tolerance of diffusers (the
/// fused group norm, genie's CPU convolution, keys and values computed once): cached images stay
/// as close to what this code makes as to what diffusers makes.
pub const ALGORITHM_VERSION: u32 = 2;

/// Where a level starts on a grid of N steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LevelStart {
    /// Index into the grid (`N − ⌊N·r⌋`).
    pub index: usize,
    /// Timestep at which noise is added (the first one run).
    pub timestep: usize,
    /// Steps the level runs (`⌊N·r⌋`).
    pub steps_run: usize,
}

/// Everything decided from a model's config files and the options, before any weight is read.
pub(super) struct Plan {
    pub(super) unet_spec: UNetConfig,
    pub(super) vae_spec: VaeSpec,
    pub(super) text_spec: TextSpec,
    pub(super) size: u32,
    pub(super) scheduler: SchedulerConfig,
    pub(super) grid: TimestepGrid,
    pub(super) fingerprint: EngineFingerprint,
}

impl Plan {
    pub(super) fn new(files: &ModelFiles, opts: &EngineOptions) -> Result<Self, DiffusionError> {
        opts.validate()?;
        let unet_spec: UNetConfig = config::unet_spec(ConfigReader::open(&files.unet_config)?)?;
        let vae_spec: VaeSpec = config::vae_spec(ConfigReader::open(&files.vae_config)?)?;
        let text_spec: TextSpec = config::text_spec(ConfigReader::open(&files.text_config)?)?;
        for (what, unet) in [
            ("in_channels", unet_spec.in_channels),
            ("out_channels", unet_spec.out_channels),
        ] {
            if unet != vae_spec.latent_channels {
                return Err(DiffusionError::Incompatible {
                    what,
                    unet,
                    other_component: "VAE's latent_channels",
                    other: vae_spec.latent_channels,
                });
            }
        }
        if unet_spec.cross_attention_dim != text_spec.candle.embed_dim {
            return Err(DiffusionError::Incompatible {
                what: "cross_attention_dim",
                unet: unet_spec.cross_attention_dim,
                other_component: "text encoder's hidden_size",
                other: text_spec.candle.embed_dim,
            });
        }
        let factor = vae_spec.scale_factor();
        let size = opts.size.unwrap_or((unet_spec.sample_size * factor) as u32);
        let down = factor * unet_spec.downsampling();
        if size == 0 || size as usize % down != 0 || size > MAX_SIZE {
            return Err(OptionsError::Size {
                size,
                multiple: down,
                max: MAX_SIZE,
            }
            .into());
        }
        let scheduler = SchedulerConfig::from_file(&files.scheduler_config, opts.scheduler)?;
        let grid = scheduler.grid(opts.steps)?;
        let fingerprint = EngineFingerprint {
            model: files.identity()?,
            scheduler: scheduler.canonical.clone(),
            steps: opts.steps as u32,
            guidance: format!("{}", opts.guidance),
            resolution: size,
            dtype: dtype_name(opts.dtype).to_string(),
            algorithm_version: ALGORITHM_VERSION,
        };
        Ok(Plan {
            unet_spec,
            vae_spec,
            text_spec,
            size,
            scheduler,
            grid,
            fingerprint,
        })
    }
}

/// What an engine would be, decided from config files alone.
#[derive(Clone, Debug)]
pub struct EnginePlan {
    /// The engine's identity in cache keys.
    pub fingerprint: EngineFingerprint,
    /// Image side length in pixels.
    pub resolution: u32,
    grid: TimestepGrid,
}

impl EnginePlan {
    /// Where `level` starts on the plan's grid (the same answer as [`SdEngine::level_start`](super::SdEngine::level_start)).
    pub fn level_start(&self, level: NoiseLevel) -> Result<LevelStart, SchedulerError> {
        level_start_on(&self.grid, level)
    }
}

pub(super) fn level_start_on(
    grid: &TimestepGrid,
    level: NoiseLevel,
) -> Result<LevelStart, SchedulerError> {
    let n = grid.len();
    if level.is_text_to_image() {
        return Ok(LevelStart {
            index: 0,
            timestep: grid.timesteps[0],
            steps_run: n,
        });
    }
    let steps_run = level.steps_to_run(n);
    if steps_run == 0 {
        return Err(SchedulerError::NoStepsAtLevel {
            level: level.to_string(),
            steps: n,
        });
    }
    let index = level.start_index(n);
    Ok(LevelStart {
        index,
        timestep: grid.timesteps[index],
        steps_run,
    })
}

/// The fingerprint and resolution an engine loaded from `source` with `opts` would have, without
/// building any network (configs are parsed, weight files hashed): enough to look jobs up in a
/// cache before paying for a model load.
pub fn plan_engine(
    source: &ModelSource,
    opts: &EngineOptions,
) -> Result<EnginePlan, DiffusionError> {
    let half = matches!(opts.dtype, DType::F16 | DType::BF16);
    let files = ModelFiles::resolve(source, half)?;
    let plan = Plan::new(&files, opts)?;
    Ok(EnginePlan {
        fingerprint: plan.fingerprint,
        resolution: plan.size,
        grid: plan.grid,
    })
}
