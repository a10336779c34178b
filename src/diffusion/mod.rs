//! The Stable Diffusion img2img engine (GeNIe's STDiff) on candle: the only module that knows candle.
//!
//! [`SdEngine`] loads a diffusers-layout model through [`model`], builds each network from its
//! `config.json` ([`config`]), and runs batches of jobs as chains over one shared timestep grid:
//! at every grid step a single UNet call evaluates every active chain (twice, for classifier-free
//! guidance), while each chain keeps its own sampler state ([`scheduler`]).

pub mod config;
pub mod conv;
pub mod fused;
mod hash_memo;
pub mod model;
pub mod parity;
pub mod resnet;
pub mod scheduler;
pub mod shapes;
pub mod tiny;
pub mod tokenizer;
pub mod unet;
pub mod vae;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::clip::text_model::ClipTextTransformer;
use image::RgbImage;

pub use config::ConfigError;
pub use model::{Component, ModelFiles, ModelSource};
pub use scheduler::{SchedulerConfig, SchedulerError, SchedulerKind};
pub use tokenizer::{ClipTokenizer, TokenizerError};

use crate::engine::{
    CancelToken, Engine, EngineFingerprint, Job, JobOutput, LevelImage, NoiseLevel,
};
use crate::image_io::pixel_hash;
use config::{ConfigReader, TextSpec, VaeSpec};
use scheduler::{ChainState, TimestepGrid};
use unet::{UNet, UNetConfig};
use vae::Vae;

/// Bumped whenever a change to this engine changes the pixels it produces for the same inputs.
/// 2: the UNet's timestep sinusoids are computed in f32 in every dtype (f16/bf16 pixels changed).
/// Not bumped for changes of float rounding only, within the parity tolerance of diffusers (the
/// fused group norm, genie's CPU convolution, keys and values computed once): cached images stay
/// as close to what this code makes as to what diffusers makes.
pub const ALGORITHM_VERSION: u32 = 2;

/// Largest image side an engine accepts. Attention memory grows with the fourth power of the
/// side (SD 1.5 at 1024 px already needs ~17 GB for one guided chain's largest attention map);
/// a larger request is a typed error, not an allocation failure that aborts the process.
pub const MAX_SIZE: u32 = 1024;

/// Everything that can go wrong loading or running the engine.
#[derive(Debug, thiserror::Error)]
pub enum DiffusionError {
    #[error("missing {expected}: {path}")]
    MissingFile {
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{dir} holds only pickled weights (.bin/.ckpt); genie loads safetensors only")]
    PickleOnly { dir: PathBuf },
    #[error("bad weights file {file}: {message}")]
    BadWeights { file: PathBuf, message: String },
    #[error("cannot build the {component} from {files}: {message}")]
    Build {
        component: &'static str,
        files: String,
        message: String,
    },
    #[error("Hugging Face Hub ({repo}): {message}")]
    Hub { repo: String, message: String },
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error("invalid engine options: {0}")]
    Options(String),
    #[error("job {job}: {message}")]
    Job { job: usize, message: String },
    #[error("tensor computation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("cannot write the model: {0}")]
    Write(String),
    #[error("bad parity fixtures {path}: {message}")]
    Fixtures { path: PathBuf, message: String },
    #[error(
        "job {job}, level {level}: the {stage} produced non-finite values in {dtype} \
         (the model's weights or the options overflow; nothing was kept)"
    )]
    NonFinite {
        job: usize,
        level: String,
        stage: &'static str,
        dtype: &'static str,
    },
}

/// How the engine samples; everything here changes the pixels.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub scheduler: SchedulerKind,
    /// N: the length of the full timestep grid (r = 1 runs all of it).
    pub steps: usize,
    /// Classifier-free guidance scale; ≤ 1 disables guidance (one UNet branch).
    pub guidance: f64,
    /// Image side length; `None` uses the model's native size (UNet `sample_size` × VAE factor).
    pub size: Option<u32>,
    /// Weights and activations of the UNet and text encoder (the VAE always runs in f32).
    pub dtype: DType,
    pub device: Device,
    /// Most chains evaluated by one UNet call (each is two rows with guidance). `None` sizes it
    /// from the attention matrices one row needs (0.5 GiB at 512 px for SD 1.5) against a budget
    /// of 2 GiB on the CPU and 16 GiB on a GPU: 2 and 16 chains for SD 1.5 at 512 px.
    pub max_chains_per_call: Option<usize>,
    /// Prompt embeddings kept (one per target class is typical); least recently used go first.
    pub prompt_cache: usize,
    /// With an f16/bf16 `dtype`, rerun a chain whose latents come out non-finite (half-precision
    /// overflow) with an f32 UNet, built from the same files on first need, instead of failing
    /// the batch. Chains that stay finite are untouched, so this changes no cached pixels.
    pub half_fallback: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            scheduler: SchedulerKind::DpmSolverPp,
            steps: 50,
            guidance: 7.5,
            size: None,
            dtype: DType::F32,
            device: Device::Cpu,
            max_chains_per_call: None,
            prompt_cache: 256,
            half_fallback: true,
        }
    }
}

/// One finished chain, before conversion to 8-bit pixels.
#[derive(Debug)]
pub struct ChainOutput {
    pub level: NoiseLevel,
    pub start_timestep: usize,
    pub steps_run: usize,
    /// Final latents `[1, C, h, w]`, f32.
    pub latents: Tensor,
    /// Decoded image `[3, H, W]` in [0, 1], f32 (diffusers' `(x/2 + 0.5).clamp(0, 1)`).
    pub image: Tensor,
}

/// Where a level starts on a grid of N steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LevelStart {
    /// Index into the grid (`N − ⌊N·r⌋`).
    pub index: usize,
    /// Timestep at which noise is added (the first one run).
    pub timestep: usize,
    pub steps_run: usize,
}

/// Everything decided from a model's config files and the options, before any weight is read.
struct Plan {
    unet_spec: UNetConfig,
    vae_spec: VaeSpec,
    text_spec: TextSpec,
    size: u32,
    scheduler: SchedulerConfig,
    grid: TimestepGrid,
    fingerprint: EngineFingerprint,
}

impl Plan {
    fn new(files: &ModelFiles, opts: &EngineOptions) -> Result<Self, DiffusionError> {
        if !matches!(opts.dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(DiffusionError::Options(format!(
                "dtype {:?} (use f32, f16 or bf16)",
                opts.dtype
            )));
        }
        if opts.dtype == DType::BF16 && opts.device.is_cpu() {
            return Err(DiffusionError::Options(
                "bf16 needs a CUDA device: candle's CPU backend has no bf16 matrix multiply (use f16 or f32 on the CPU)".into(),
            ));
        }
        if opts.max_chains_per_call == Some(0) || opts.prompt_cache == 0 {
            return Err(DiffusionError::Options(
                "max_chains_per_call and prompt_cache must be at least 1".into(),
            ));
        }
        if !opts.guidance.is_finite() {
            return Err(DiffusionError::Options(format!(
                "guidance {} is not a finite number",
                opts.guidance
            )));
        }
        let unet_spec: UNetConfig = config::unet_spec(ConfigReader::open(&files.unet_config)?)?;
        let vae_spec: VaeSpec = config::vae_spec(ConfigReader::open(&files.vae_config)?)?;
        let text_spec: TextSpec = config::text_spec(ConfigReader::open(&files.text_config)?)?;
        if unet_spec.in_channels != vae_spec.latent_channels
            || unet_spec.out_channels != vae_spec.latent_channels
        {
            return Err(DiffusionError::Options(format!(
                "UNet in/out channels ({}/{}) differ from the VAE's latent_channels ({})",
                unet_spec.in_channels, unet_spec.out_channels, vae_spec.latent_channels
            )));
        }
        if unet_spec.cross_attention_dim != text_spec.candle.embed_dim {
            return Err(DiffusionError::Options(format!(
                "UNet cross_attention_dim {} differs from the text encoder's hidden_size {}",
                unet_spec.cross_attention_dim, text_spec.candle.embed_dim
            )));
        }
        let factor = vae_spec.scale_factor();
        let size = opts.size.unwrap_or((unet_spec.sample_size * factor) as u32);
        let down = factor * unet_spec.downsampling();
        if size == 0 || size as usize % down != 0 || size > MAX_SIZE {
            return Err(DiffusionError::Options(format!(
                "size {size} must be a positive multiple of {down}, at most {MAX_SIZE}, for this model"
            )));
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
    pub fingerprint: EngineFingerprint,
    /// Image side length in pixels.
    pub resolution: u32,
    grid: TimestepGrid,
}

impl EnginePlan {
    /// Where `level` starts on the plan's grid (the same answer as [`SdEngine::level_start`]).
    pub fn level_start(&self, level: NoiseLevel) -> Result<LevelStart, SchedulerError> {
        level_start_on(&self.grid, level)
    }
}

fn level_start_on(grid: &TimestepGrid, level: NoiseLevel) -> Result<LevelStart, SchedulerError> {
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

/// Stable Diffusion img2img on candle.
pub struct SdEngine {
    unet: UNet,
    /// The f32 UNet of the half-precision fallback, built on first need.
    unet_f32: Option<UNet>,
    unet_spec: UNetConfig,
    files: ModelFiles,
    vae: Vae,
    text: ClipTextTransformer,
    tokenizer: ClipTokenizer,
    scheduler: SchedulerConfig,
    grid: TimestepGrid,
    opts: EngineOptions,
    size: u32,
    latent_channels: usize,
    latent_size: usize,
    model_id: String,
    fingerprint: EngineFingerprint,
    embeddings: lru::LruCache<String, Tensor>,
    chains_per_call: usize,
    uncond: Tensor,
    source_latents: lru::LruCache<blake3::Hash, Tensor>,
    cancel: CancelToken,
}

fn build_err<'a>(
    component: &'static str,
    files: &'a [PathBuf],
) -> impl Fn(candle_core::Error) -> DiffusionError + 'a {
    move |e| DiffusionError::Build {
        component,
        files: files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        message: e.to_string(),
    }
}

impl SdEngine {
    /// Loads a model from a local folder or the Hub.
    pub fn load(source: &ModelSource, opts: EngineOptions) -> Result<Self, DiffusionError> {
        let half = matches!(opts.dtype, DType::F16 | DType::BF16);
        let files = ModelFiles::resolve(source, half)?;
        Self::from_files(&files, &source.describe(), opts)
    }

    /// Loads a model whose files are already resolved.
    pub fn from_files(
        files: &ModelFiles,
        model_id: &str,
        opts: EngineOptions,
    ) -> Result<Self, DiffusionError> {
        let Plan {
            unet_spec,
            vae_spec,
            text_spec,
            size,
            scheduler,
            grid,
            fingerprint,
        } = Plan::new(files, &opts)?;
        let tokenizer = ClipTokenizer::from_dir(
            &files.tokenizer_dir,
            text_spec.candle.max_position_embeddings,
        )?;

        let dev = &opts.device;
        let vb = model::var_builder(&files.text_weights, opts.dtype, dev)?;
        // transformers < 5 saves `text_model.`-prefixed names (as SD 1.5 ships); transformers 5 drops it.
        let vb = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            vb.pp("text_model")
        } else {
            vb
        };
        let text = ClipTextTransformer::new(vb, &text_spec.candle)
            .map_err(build_err("text encoder", &files.text_weights))?;
        let vb = model::var_builder(&files.vae_weights, DType::F32, dev)?;
        let vae = Vae::new(vb, &vae_spec).map_err(build_err("VAE", &files.vae_weights))?;
        let vb = model::var_builder(&files.unet_weights, opts.dtype, dev)?;
        let unet = UNet::new(vb, &unet_spec).map_err(build_err("UNet", &files.unet_weights))?;

        let mut engine = SdEngine {
            fingerprint,
            unet,
            unet_f32: None,
            files: files.clone(),
            vae,
            text,
            tokenizer,
            scheduler,
            grid,
            size,
            latent_channels: vae_spec.latent_channels,
            latent_size: size as usize / vae_spec.scale_factor(),
            model_id: model_id.to_string(),
            embeddings: lru::LruCache::new(
                NonZeroUsize::new(opts.prompt_cache).unwrap_or(NonZeroUsize::MIN),
            ),
            chains_per_call: opts.max_chains_per_call.unwrap_or_else(|| {
                auto_chains_per_call(
                    size as usize / vae_spec.scale_factor(),
                    &unet_spec,
                    opts.device.is_cpu(),
                )
            }),
            uncond: Tensor::zeros(1, DType::F32, dev)?,
            source_latents: lru::LruCache::new(NonZeroUsize::new(64).expect("nonzero")),
            cancel: CancelToken::default(),
            unet_spec,
            opts,
        };
        engine.uncond = engine.encode_prompt("")?;
        Ok(engine)
    }

    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    pub fn scheduler(&self) -> &SchedulerConfig {
        &self.scheduler
    }

    /// The model's identity as given at load time (folder or repo@revision).
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// Shape of the initial noise: `[1, C, size/f, size/f]`.
    pub fn noise_shape(&self) -> [usize; 4] {
        [1, self.latent_channels, self.latent_size, self.latent_size]
    }

    /// Where `level` starts on this engine's grid; an error if it would run no step.
    pub fn level_start(&self, level: NoiseLevel) -> Result<LevelStart, SchedulerError> {
        level_start_on(&self.grid, level)
    }

    /// The CLIP embedding of a prompt (cached; prompts are one per class).
    pub fn prompt_embedding(&mut self, prompt: &str) -> Result<Tensor, DiffusionError> {
        if let Some(t) = self.embeddings.get(prompt) {
            return Ok(t.clone());
        }
        let t = self.encode_prompt(prompt)?;
        self.embeddings.put(prompt.to_string(), t.clone());
        Ok(t)
    }

    fn encode_prompt(&self, prompt: &str) -> Result<Tensor, DiffusionError> {
        let tokens = self.tokenizer.encode(prompt)?;
        if tokens.truncated {
            tracing::warn!(
                prompt,
                max_tokens = self.tokenizer.max_len(),
                "prompt is longer than the text encoder's context and was truncated"
            );
        }
        let ids = Tensor::new(tokens.ids.as_slice(), &self.opts.device)?.unsqueeze(0)?;
        Ok(self.text.forward_with_mask(&ids, usize::MAX)?)
    }

    /// One raw UNet evaluation (noise prediction) of f32 latents at timestep `t`, for inspection
    /// and parity checks; `context` holds one text embedding per row.
    pub fn predict_noise(
        &self,
        latents: &Tensor,
        t: usize,
        context: &Tensor,
    ) -> Result<Tensor, DiffusionError> {
        let out = self.unet.forward(
            &latents.to_dtype(self.opts.dtype)?,
            t as f64,
            &context.to_dtype(self.opts.dtype)?,
        )?;
        Ok(out.to_dtype(DType::F32)?)
    }

    /// Decodes scaled latents `[B, C, h, w]` into images `[B, 3, H, W]` in [0, 1].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor, DiffusionError> {
        Ok(
            ((self.vae.decode_scaled(&latents.to_dtype(DType::F32)?)? / 2.0)? + 0.5)?
                .clamp(0f32, 1f32)?,
        )
    }

    /// Token ids of a prompt as the text encoder sees them (for inspection and tests).
    pub fn tokenize(&self, prompt: &str) -> Result<Vec<u32>, DiffusionError> {
        Ok(self.tokenizer.encode(prompt)?.ids)
    }

    /// Scaled VAE latents (the distribution's mean) of a preprocessed source image, cached by pixels.
    pub fn source_latents(&mut self, img: &RgbImage) -> Result<Tensor, DiffusionError> {
        let key = pixel_hash(img);
        if let Some(t) = self.source_latents.get(&key) {
            return Ok(t.clone());
        }
        let (w, h) = img.dimensions();
        let pixels = Tensor::from_vec(
            img.as_raw().clone(),
            (h as usize, w as usize, 3),
            &Device::Cpu,
        )?
        .permute((2, 0, 1))?
        .to_dtype(DType::F32)?;
        // diffusers' VaeImageProcessor: x / 255 * 2 − 1.
        let x = ((pixels / 127.5)? - 1.0)?
            .unsqueeze(0)?
            .to_device(&self.opts.device)?;
        let latents = self.vae.encode_mode_scaled(&x)?;
        self.source_latents.put(key, latents.clone());
        Ok(latents)
    }

    fn job_noise(&self, job_index: usize, job: &Job) -> Result<Tensor, DiffusionError> {
        let shape = self.noise_shape();
        let len: usize = shape.iter().product();
        let values = match &job.noise {
            Some(v) if v.len() == len => v.as_ref().clone(),
            Some(v) => {
                return Err(DiffusionError::Job {
                    job: job_index,
                    message: format!("noise has {} values; expected {shape:?} = {len}", v.len()),
                })
            }
            None => crate::noise::gaussian(job.seed, len),
        };
        // Drawn on the CPU, then moved: the same seed gives the same noise on every device.
        Ok(Tensor::from_vec(values, shape.to_vec(), &Device::Cpu)?.to_device(&self.opts.device)?)
    }

    /// Runs jobs as chains over the shared grid and returns f32 latents and images, in job and
    /// level order. This is the whole img2img pipeline; [`Engine::generate`] only quantises.
    pub fn run_chains(&mut self, jobs: &[Job]) -> Result<Vec<Vec<ChainOutput>>, DiffusionError> {
        let mut chains: Vec<Chain> = Vec::new();
        for (j, job) in jobs.iter().enumerate() {
            let job_err = |message: String| DiffusionError::Job { job: j, message };
            if job.levels.is_empty() {
                return Err(job_err("no noise levels".into()));
            }
            let context = self.prompt_embedding(&job.prompt)?;
            let noise = self.job_noise(j, job)?;
            let needs_source = job.levels.iter().any(|l| !l.is_text_to_image());
            let init = match (&job.source, needs_source) {
                (Some(img), true) => {
                    let s = self.size;
                    if img.dimensions() != (s, s) {
                        return Err(job_err(format!(
                            "source is {}x{}; the engine expects {s}x{s} (preprocess with image_io::resize_center_crop)",
                            img.width(),
                            img.height()
                        )));
                    }
                    Some(self.source_latents(img)?)
                }
                (None, true) => return Err(job_err("levels below 1.0 need a source image".into())),
                (_, false) => None,
            };
            for &level in &job.levels {
                let start = self
                    .level_start(level)
                    .map_err(|e| job_err(e.to_string()))?;
                let latents = match &init {
                    Some(x0) if !level.is_text_to_image() => {
                        self.scheduler
                            .add_noise(&self.grid, start.index, x0, &noise)?
                    }
                    _ => (&noise * self.scheduler.init_noise_sigma())?,
                };
                chains.push(Chain {
                    job: j,
                    level,
                    start,
                    initial: latents.clone(),
                    latents,
                    state: ChainState::default(),
                    context: context.clone(),
                });
            }
        }

        self.denoise(&self.unet, self.opts.dtype, &mut chains)?;
        self.rescue_non_finite(&mut chains)?;

        let mut outputs: Vec<Vec<ChainOutput>> = jobs.iter().map(|_| Vec::new()).collect();
        for group in chains.chunks(self.chains_per_call) {
            let latents = Tensor::cat(&group.iter().map(|c| &c.latents).collect::<Vec<_>>(), 0)?;
            let images = self.decode(&latents)?;
            let finite = finite_rows(&images)?;
            for (row, chain) in group.iter().enumerate() {
                if !finite[row] {
                    return Err(chain.non_finite("VAE decoder", DType::F32));
                }
                outputs[chain.job].push(ChainOutput {
                    level: chain.level,
                    start_timestep: chain.start.timestep,
                    steps_run: chain.start.steps_run,
                    latents: chain.latents.clone(),
                    image: images.get(row)?,
                });
            }
        }
        Ok(outputs)
    }

    /// Runs every chain over the shared grid: at each step one UNet call (per `chains_per_call`
    /// group) evaluates all chains that have started.
    fn denoise(&self, unet: &UNet, dt: DType, chains: &mut [Chain]) -> Result<(), DiffusionError> {
        let guided = self.opts.guidance > 1.0;
        // The cross-attention keys and values of each group's prompts, kept while the group is
        // unchanged (a group changes only when a chain of another level starts).
        let mut prepared: HashMap<Vec<usize>, unet::PreparedContext> = HashMap::new();
        for i in 0..self.grid.len() {
            if self.cancel.is_cancelled() {
                return Err(DiffusionError::Cancelled);
            }
            let t = self.grid.timesteps[i];
            let active: Vec<usize> = (0..chains.len())
                .filter(|&c| chains[c].start.index <= i)
                .collect();
            let mut still_used = HashMap::new();
            for group in active.chunks(self.chains_per_call) {
                let k = group.len();
                let x = Tensor::cat(
                    &group
                        .iter()
                        .map(|&c| &chains[c].latents)
                        .collect::<Vec<_>>(),
                    0,
                )?;
                let context = match prepared.remove(group) {
                    Some(context) => context,
                    None => {
                        let cond = Tensor::cat(
                            &group
                                .iter()
                                .map(|&c| &chains[c].context)
                                .collect::<Vec<_>>(),
                            0,
                        )?;
                        let context = if guided {
                            Tensor::cat(&[&self.uncond.repeat((k, 1, 1))?, &cond], 0)?
                        } else {
                            cond
                        };
                        unet.prepare_context(&context.to_dtype(dt)?)?
                    }
                };
                let input = if guided {
                    Tensor::cat(&[&x, &x], 0)?
                } else {
                    x
                };
                let out = unet
                    .forward_prepared(&input.to_dtype(dt)?, t as f64, &context)?
                    .to_dtype(DType::F32)?;
                still_used.insert(group.to_vec(), context);
                let eps = if guided {
                    let u = out.narrow(0, 0, k)?;
                    let c = out.narrow(0, k, k)?;
                    (&u + ((c - &u)? * self.opts.guidance)?)?
                } else {
                    out
                };
                for (row, &c) in group.iter().enumerate() {
                    let chain = &mut chains[c];
                    chain.latents = self.scheduler.step(
                        &self.grid,
                        i,
                        &eps.narrow(0, row, 1)?,
                        &chain.latents,
                        &mut chain.state,
                    )?;
                }
            }
            prepared = still_used;
        }
        Ok(())
    }

    /// Checks every chain's final latents. In half precision, chains that overflowed are run again
    /// from their start with an f32 UNet (when `half_fallback` allows); any chain still non-finite
    /// is an error, so no garbage image reaches a cache.
    fn rescue_non_finite(&mut self, chains: &mut [Chain]) -> Result<(), DiffusionError> {
        let bad: Vec<usize> = non_finite_chains(chains)?;
        let Some(&first) = bad.first() else {
            return Ok(());
        };
        let dt = self.opts.dtype;
        if dt == DType::F32 || !self.opts.half_fallback {
            return Err(chains[first].non_finite("UNet", dt));
        }
        tracing::warn!(
            chains = bad.len(),
            dtype = dtype_name(dt),
            "non-finite latents in half precision; running those chains again in f32"
        );
        if self.unet_f32.is_none() {
            let files = &self.files.unet_weights;
            let vb = model::var_builder(files, DType::F32, &self.opts.device)?;
            let unet = UNet::new(vb, &self.unet_spec).map_err(build_err("f32 UNet", files))?;
            self.unet_f32 = Some(unet);
        }
        let mut retry: Vec<Chain> = bad.iter().map(|&c| chains[c].restarted()).collect();
        let unet = self.unet_f32.as_ref().expect("built above");
        self.denoise(unet, DType::F32, &mut retry)?;
        if let Some(&still) = non_finite_chains(&retry)?.first() {
            return Err(retry[still].non_finite("UNet", DType::F32));
        }
        for (chain, &c) in retry.into_iter().zip(&bad) {
            chains[c] = chain;
        }
        Ok(())
    }
}

/// One (job, level) denoising chain in flight.
struct Chain {
    job: usize,
    level: NoiseLevel,
    start: LevelStart,
    /// The noised latents it started from, kept for a rerun.
    initial: Tensor,
    latents: Tensor,
    state: ChainState,
    context: Tensor,
}

impl Chain {
    fn restarted(&self) -> Chain {
        Chain {
            job: self.job,
            level: self.level,
            start: self.start,
            initial: self.initial.clone(),
            latents: self.initial.clone(),
            state: ChainState::default(),
            context: self.context.clone(),
        }
    }

    fn non_finite(&self, stage: &'static str, dtype: DType) -> DiffusionError {
        DiffusionError::NonFinite {
            job: self.job,
            level: self.level.to_string(),
            stage,
            dtype: dtype_name(dtype),
        }
    }
}

/// Which rows of a `[N, …]` tensor hold no NaN or infinity: one reduction and one copy to the host
/// for the whole batch (a NaN or an infinity makes its row's sum of magnitudes non-finite).
fn finite_rows(t: &Tensor) -> Result<Vec<bool>, DiffusionError> {
    let sums = t
        .to_dtype(DType::F32)?
        .abs()?
        .flatten_from(1)?
        .sum(1)?
        .to_vec1::<f32>()?;
    Ok(sums.into_iter().map(f32::is_finite).collect())
}

/// Indices of the chains whose latents are not all finite.
fn non_finite_chains(chains: &[Chain]) -> Result<Vec<usize>, DiffusionError> {
    if chains.is_empty() {
        return Ok(Vec::new());
    }
    let latents = Tensor::cat(&chains.iter().map(|c| &c.latents).collect::<Vec<_>>(), 0)?;
    Ok(finite_rows(&latents)?
        .into_iter()
        .enumerate()
        .filter(|&(_, finite)| !finite)
        .map(|(c, _)| c)
        .collect())
}

/// `[3, H, W]` floats in [0, 1] → 8-bit RGB, rounding as diffusers' `numpy_to_pil` does.
pub fn tensor_to_rgb(image: &Tensor) -> Result<RgbImage, DiffusionError> {
    let (c, h, w) = image.dims3()?;
    if c != 3 {
        return Err(DiffusionError::Options(format!(
            "expected 3 channels, got {c}"
        )));
    }
    let bytes = (image.to_device(&Device::Cpu)?.to_dtype(DType::F32)? * 255.0)?
        .round()?
        .clamp(0f32, 255f32)?
        .to_dtype(DType::U8)?
        .permute((1, 2, 0))?
        .flatten_all()?
        .to_vec1::<u8>()?;
    RgbImage::from_raw(w as u32, h as u32, bytes)
        .ok_or_else(|| DiffusionError::Options("image buffer size mismatch".into()))
}

/// Chains per UNet call that keep the full-resolution self-attention scores (f32, the largest
/// activation) within a memory budget.
fn auto_chains_per_call(latent_size: usize, unet: &UNetConfig, cpu: bool) -> usize {
    let budget: usize = if cpu { 2 << 30 } else { 16 << 30 };
    let tokens = latent_size * latent_size;
    let heads = unet.heads.iter().copied().max().unwrap_or(1);
    let per_chain = 2 * tokens * tokens * heads * 4; // two guidance rows
    (budget / per_chain.max(1)).clamp(1, 64)
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "f32",
    }
}

impl Engine for SdEngine {
    type Error = DiffusionError;

    fn fingerprint(&self) -> &EngineFingerprint {
        &self.fingerprint
    }

    fn resolution(&self) -> u32 {
        self.size
    }

    fn set_cancel(&mut self, token: CancelToken) {
        self.cancel = token;
    }

    fn generate(&mut self, jobs: &[Job]) -> Result<Vec<JobOutput>, DiffusionError> {
        self.run_chains(jobs)?
            .into_iter()
            .map(|chains| {
                let images = chains
                    .into_iter()
                    .map(|c| {
                        Ok(LevelImage {
                            level: c.level,
                            start_timestep: c.start_timestep,
                            steps_run: c.steps_run,
                            image: tensor_to_rgb(&c.image)?,
                        })
                    })
                    .collect::<Result<Vec<_>, DiffusionError>>()?;
                Ok(JobOutput { images })
            })
            .collect()
    }
}

/// Prepares this process for the engine on the CPU. Call it first thing in `main`, before any
/// thread starts:
///
/// - fixes candle's CPU thread count (`RAYON_NUM_THREADS`) to this machine's parallelism unless
///   the user set it: without it candle asks the OS for the CPU count on every tensor operation,
///   which costs about a third of a small UNet call;
/// - on glibc, makes `malloc` keep freed memory for reuse (no `mmap` below 32 MiB, no trimming
///   below 2 GiB, 64 MiB of padding) unless `GLIBC_TUNABLES` or a `MALLOC_*` variable says
///   otherwise or `GENIE_KEEP_FREED_MEMORY=0`: every tensor operation allocates a fresh output,
///   and with glibc's defaults those buffers go back to the kernel and are faulted in and zeroed
///   again, which cost 17 % of an SD 1.5 UNet step at 128 px on 2 cores (BENCHMARKS.md). The
///   price: the process keeps its peak heap until it exits.
pub fn tune_cpu_process() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    keep_freed_memory();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    let user_tuned = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("malloc"))
        || std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("MALLOC_"))
        || std::env::var_os("GENIE_KEEP_FREED_MEMORY").is_some_and(|v| v == "0");
    if user_tuned {
        return;
    }
    // SAFETY: mallopt only sets allocator parameters; called before other threads allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(spec: &str) -> Result<Device, DiffusionError> {
    match spec.trim() {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                None => 0,
                Some(n) => n.parse::<usize>().map_err(|_| {
                    DiffusionError::Options(format!("bad device {s:?}: expected cuda:N"))
                })?,
            };
            if cfg!(feature = "cuda") {
                Ok(Device::new_cuda(ordinal)?)
            } else {
                Err(DiffusionError::Options(format!(
                    "device {s:?} needs a build with the `cuda` feature (see scripts/build-cuda.sh)"
                )))
            }
        }
        other => Err(DiffusionError::Options(format!(
            "unknown device {other:?} (expected cpu or cuda:N)"
        ))),
    }
}

/// Parses `f32`, `f16` or `bf16`.
pub fn parse_dtype(spec: &str) -> Result<DType, DiffusionError> {
    match spec.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" | "fp16" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(DiffusionError::Options(format!(
            "unknown dtype {other:?} (expected f32, f16 or bf16)"
        ))),
    }
}

/// Reads initial noise from a safetensors file holding one tensor named `noise` of shape `shape`.
pub fn load_noise_file(
    path: &std::path::Path,
    shape: [usize; 4],
) -> Result<Vec<f32>, DiffusionError> {
    let bad = |message: String| DiffusionError::BadWeights {
        file: path.to_path_buf(),
        message,
    };
    let tensors =
        candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| bad(e.to_string()))?;
    let noise = tensors
        .get("noise")
        .ok_or_else(|| bad("no tensor named \"noise\"".into()))?;
    if noise.dims() != shape {
        return Err(bad(format!(
            "noise has shape {:?}; expected {shape:?}",
            noise.dims()
        )));
    }
    Ok(noise
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_batching_fits_sd15_at_512_in_the_budget() {
        let unet = UNetConfig {
            in_channels: 4,
            out_channels: 4,
            sample_size: 64,
            block_out_channels: vec![320, 640, 1280, 1280],
            cross_attention: vec![true, true, true, false],
            heads: vec![8; 4],
            transformer_layers: vec![1; 4],
            layers_per_block: 2,
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            cross_attention_dim: 768,
            use_linear_projection: false,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
        };
        assert_eq!(auto_chains_per_call(64, &unet, true), 2);
        assert_eq!(auto_chains_per_call(64, &unet, false), 16);
        assert_eq!(auto_chains_per_call(8, &unet, true), 64);
    }
}
