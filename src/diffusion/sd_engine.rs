//! [`SdEngine`]: the loaded networks, and jobs run as chains over one shared timestep grid.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::clip::text_model::ClipTextTransformer;
use image::RgbImage;

use super::options::dtype_name;
use super::plan::{level_start_on, LevelStart, Plan};
use super::scheduler::{ChainState, TimestepGrid};
use super::tensor_io::tensor_to_rgb;
use super::unet::{self, UNet, UNetConfig};
use super::vae::Vae;
use super::weights;
use super::JobError;
use super::{
    ClipTokenizer, DiffusionError, EngineOptions, ModelFiles, ModelSource, SchedulerConfig,
    SchedulerError,
};
use crate::engine::{
    CancelToken, Engine, EngineFingerprint, Job, JobOutput, LevelImage, NoiseLevel,
};
use crate::image_io::pixel_hash;

/// One finished chain, before conversion to 8-bit pixels.
#[derive(Debug)]
pub struct ChainOutput {
    /// The level it ran at.
    pub level: NoiseLevel,
    /// The timestep noise was added at.
    pub start_timestep: usize,
    /// Denoising steps run.
    pub steps_run: usize,
    /// Final latents `[1, C, h, w]`, f32.
    pub latents: Tensor,
    /// Decoded image `[3, H, W]` in [0, 1], f32 (diffusers' `(x/2 + 0.5).clamp(0, 1)`).
    pub image: Tensor,
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
    /// The engine's own CPU threads ([`EngineOptions::threads`]); `None`: the process's pool.
    pool: Option<rayon::ThreadPool>,
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
        let plan = Plan::new(files, &opts)?;
        let tokenizer = ClipTokenizer::from_dir(
            &files.tokenizer_dir,
            plan.text_spec.candle.max_position_embeddings,
        )?;

        let dev = &opts.device;
        let vb = weights::var_builder(&files.text_weights, opts.dtype, dev)?;
        // transformers < 5 saves `text_model.`-prefixed names (as SD 1.5 ships); transformers 5 drops it.
        let vb = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            vb.pp("text_model")
        } else {
            vb
        };
        let text = ClipTextTransformer::new(vb, &plan.text_spec.candle)
            .map_err(build_err("text encoder", &files.text_weights))?;
        let vb = weights::var_builder(&files.vae_weights, DType::F32, dev)?;
        let vae = Vae::new(vb, &plan.vae_spec).map_err(build_err("VAE", &files.vae_weights))?;
        let vb = weights::var_builder(&files.unet_weights, opts.dtype, dev)?;
        let unet =
            UNet::new(vb, &plan.unet_spec).map_err(build_err("UNet", &files.unet_weights))?;

        let pool = match opts.threads {
            Some(threads) if opts.device.is_cpu() => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("genie-engine-{i}"))
                    .build()
                    .map_err(|e| DiffusionError::Build {
                        component: "CPU thread pool",
                        files: "(none)".into(),
                        message: e.to_string(),
                    })?,
            ),
            _ => None,
        };
        let latent_size = plan.size as usize / plan.vae_spec.scale_factor();
        let mut engine = SdEngine {
            pool,
            fingerprint: plan.fingerprint,
            unet,
            unet_f32: None,
            files: files.clone(),
            vae,
            text,
            tokenizer,
            scheduler: plan.scheduler,
            grid: plan.grid,
            size: plan.size,
            latent_channels: plan.vae_spec.latent_channels,
            latent_size,
            model_id: model_id.to_string(),
            embeddings: lru::LruCache::new(
                NonZeroUsize::new(opts.prompt_cache).unwrap_or(NonZeroUsize::MIN),
            ),
            chains_per_call: opts.max_chains_per_call.unwrap_or_else(|| {
                auto_chains_per_call(latent_size, &plan.unet_spec, opts.device.is_cpu())
            }),
            uncond: Tensor::zeros(1, DType::F32, dev)?,
            source_latents: lru::LruCache::new(NonZeroUsize::new(64).expect("nonzero")),
            cancel: CancelToken::default(),
            unet_spec: plan.unet_spec,
            opts,
        };
        engine.uncond = engine.encode_prompt("")?;
        Ok(engine)
    }

    /// The options it was loaded with.
    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    /// Its sampler.
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
                    source: JobError::NoiseLength {
                        len: v.len(),
                        shape,
                        expected: len,
                    },
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
            let job_err = |source: JobError| DiffusionError::Job { job: j, source };
            if job.levels.is_empty() {
                return Err(job_err(JobError::NoLevels));
            }
            let context = self.prompt_embedding(&job.prompt)?;
            let noise = self.job_noise(j, job)?;
            let needs_source = job.levels.iter().any(|l| !l.is_text_to_image());
            let init = match (&job.source, needs_source) {
                (Some(img), true) => {
                    let s = self.size;
                    if img.dimensions() != (s, s) {
                        return Err(job_err(JobError::SourceSize {
                            width: img.width(),
                            height: img.height(),
                            expected: s,
                        }));
                    }
                    Some(self.source_latents(img)?)
                }
                (None, true) => return Err(job_err(JobError::MissingSource)),
                (_, false) => None,
            };
            for &level in &job.levels {
                let start = self.level_start(level).map_err(|e| job_err(e.into()))?;
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
                // One tensor of the group's chains, stacked on the batch axis.
                let stacked = |part: fn(&Chain) -> &Tensor| {
                    Tensor::cat(
                        &group.iter().map(|&c| part(&chains[c])).collect::<Vec<_>>(),
                        0,
                    )
                };
                let x = stacked(|chain| &chain.latents)?;
                let context = match prepared.remove(group) {
                    Some(context) => context,
                    None => {
                        let cond = stacked(|chain| &chain.context)?;
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
            let vb = weights::var_builder(files, DType::F32, &self.opts.device)?;
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

/// Chains per UNet call that keep the full-resolution self-attention scores (f32, the largest
/// activation) within a memory budget.
fn auto_chains_per_call(latent_size: usize, unet: &UNetConfig, cpu: bool) -> usize {
    let budget: usize = if cpu { 2 << 30 } else { 16 << 30 };
    let tokens = latent_size * latent_size;
    let heads = unet.heads.iter().copied().max().unwrap_or(1);
    let per_chain = 2 * tokens * tokens * heads * 4; // two guidance rows
    (budget / per_chain.max(1)).clamp(1, 64)
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
        match self.pool.take() {
            Some(pool) => {
                let outputs = pool.install(|| self.generate_here(jobs));
                self.pool = Some(pool);
                outputs
            }
            None => self.generate_here(jobs),
        }
    }
}

impl SdEngine {
    /// [`Engine::generate`] on the current thread pool.
    fn generate_here(&mut self, jobs: &[Job]) -> Result<Vec<JobOutput>, DiffusionError> {
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
