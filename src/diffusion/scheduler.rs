//! DDIM and DPM-Solver++ (multistep) samplers with diffusers' numerics, one state per chain.
//!
//! The timestep grid of a run is shared by every chain of a batch; a chain at level r joins the
//! grid at index `N − ⌊N·r⌋` (diffusers' img2img `get_timesteps`) with an empty solver history,
//! as diffusers' `set_begin_index` does. Scalars are computed in f64 from the float32
//! `alphas_cumprod` that diffusers itself uses, then applied to f32 latents.

use std::path::Path;

use candle_core::Tensor;
use serde_json::Value;

use super::config::{ConfigError, ConfigReader};

/// Which sampler runs the denoising steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    /// DDIM with η = 0 (deterministic).
    Ddim,
    /// DPM-Solver++ multistep (the official GeNIe code's choice).
    DpmSolverPp,
}

impl SchedulerKind {
    /// The short name the command line and fingerprints use ("ddim", "dpm").
    pub fn name(self) -> &'static str {
        match self {
            SchedulerKind::Ddim => "ddim",
            SchedulerKind::DpmSolverPp => "dpm",
        }
    }
}

impl std::str::FromStr for SchedulerKind {
    type Err = SchedulerError;
    fn from_str(s: &str) -> Result<Self, SchedulerError> {
        match s.to_ascii_lowercase().as_str() {
            "ddim" => Ok(SchedulerKind::Ddim),
            "dpm" | "dpm++" | "dpmsolver++" | "dpm-solver++" | "dpmsolvermultistep" => {
                Ok(SchedulerKind::DpmSolverPp)
            }
            _ => Err(SchedulerError::UnknownKind(s.to_string())),
        }
    }
}

/// What the UNet predicts (`prediction_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PredictionType {
    /// The added noise ε (SD 1.5).
    Epsilon,
    /// The velocity v = α·ε − σ·x₀ (SD 2.x at 768 px).
    VPrediction,
    /// The clean sample x₀.
    Sample,
}

/// How the inference timesteps are spread over the training ones (`timestep_spacing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimestepSpacing {
    /// Evenly from the last training timestep to 0, rounded.
    Linspace,
    /// Multiples of `train / steps` from 0, plus `steps_offset` (SD 1.5).
    Leading,
    /// Multiples of `train / steps` counted down from the last training timestep.
    Trailing,
}

/// DPM-Solver++ second-order update (`solver_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SolverType {
    /// diffusers' default.
    Midpoint,
    /// Heun's.
    Heun,
}

/// The σ the last DPM-Solver++ step lands on (`final_sigmas_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FinalSigmas {
    /// 0: a fully denoised sample (diffusers' default).
    Zero,
    /// The schedule's smallest σ.
    SigmaMin,
}

/// A sampler fully parameterised from `scheduler_config.json`, the way diffusers'
/// `DDIMScheduler.from_config` / `DPMSolverMultistepScheduler.from_config` would build it.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerConfig {
    /// The sampler.
    pub kind: SchedulerKind,
    /// Training timesteps (1000 for SD 1.5).
    pub num_train_timesteps: usize,
    /// `alphas_cumprod` as diffusers computes it (float32), one per training timestep.
    pub alphas_cumprod: Vec<f32>,
    /// What the UNet predicts.
    pub prediction_type: PredictionType,
    /// How inference timesteps are chosen.
    pub timestep_spacing: TimestepSpacing,
    /// Added to every `Leading` timestep (1 for SD 1.5).
    pub steps_offset: usize,
    /// DDIM: use ᾱ = 1 for the step after the last one instead of ᾱ₀.
    pub set_alpha_to_one: bool,
    /// DDIM: clip the predicted x₀ to ±`clip_sample_range`.
    pub clip_sample: Option<f64>,
    /// DPM-Solver++: 1 or 2.
    pub solver_order: usize,
    /// DPM-Solver++: the second-order update.
    pub solver_type: SolverType,
    /// DPM-Solver++: first order for the last steps of short runs (diffusers' stabiliser).
    pub lower_order_final: bool,
    /// DPM-Solver++: a first-order (Euler) last step.
    pub euler_at_final: bool,
    /// DPM-Solver++: where the last step lands.
    pub final_sigmas: FinalSigmas,
    /// A short canonical description of every parameter, for engine fingerprints.
    pub canonical: String,
}

/// The longest noise schedule accepted. Every Stable Diffusion trains on 1000 timesteps; the
/// schedule is computed into memory at load, so a file asking for 10¹¹ (found by fuzzing) must be
/// refused, not allocated.
const MAX_TRAIN_TIMESTEPS: usize = 100_000;

/// Keys written by other diffusers schedulers (PNDM for SD 1.5, Euler, LMS, …) that carry no
/// meaning for DDIM or DPM-Solver++; diffusers' `from_config` ignores them too.
const FOREIGN_KEYS: &[&str] = &[
    "skip_prk_steps",
    "interpolation_type",
    "timestep_type",
    "variance_type",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "sigma_min",
    "sigma_max",
    "final_sigmas_type",
    "predict_x0",
    "disable_corrector",
    "solver_p",
    "use_lu_lambdas",
    "use_flow_sigmas",
    "flow_shift",
    "shift",
    "use_dynamic_shifting",
    "time_shift_type",
];

impl SchedulerConfig {
    /// Reads `scheduler_config.json` and builds the `kind` sampler from it.
    pub fn from_file(path: &Path, kind: SchedulerKind) -> Result<Self, ConfigError> {
        let reader = ConfigReader::open(path)?;
        Self::from_reader(reader, kind)
    }

    /// SD 1.5's noise schedule (`scaled_linear`, β ∈ [0.00085, 0.012], 1000 steps, offset 1).
    pub fn sd15(kind: SchedulerKind) -> Self {
        let json = serde_json::json!({
            "_class_name": "PNDMScheduler",
            "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
            "num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true,
            "steps_offset": 1, "trained_betas": null, "clip_sample": false
        });
        let Value::Object(map) = json else {
            unreachable!()
        };
        Self::from_reader(ConfigReader::from_map(map, "<sd15 scheduler>"), kind)
            .expect("built-in SD 1.5 scheduler config is valid")
    }

    fn from_reader(mut r: ConfigReader, kind: SchedulerKind) -> Result<Self, ConfigError> {
        let num_train_timesteps = r.usize_or("num_train_timesteps", 1000)?;
        if !(2..=MAX_TRAIN_TIMESTEPS).contains(&num_train_timesteps) {
            return Err(r.bad(
                "num_train_timesteps",
                &format!("between 2 and {MAX_TRAIN_TIMESTEPS}"),
            ));
        }
        let beta_start = r.f64_or("beta_start", 0.0001)?;
        let beta_end = r.f64_or("beta_end", 0.02)?;
        let beta_schedule = r.string_or("beta_schedule", "linear")?;
        let trained_betas = r.take("trained_betas");
        let betas: Vec<f32> = match trained_betas {
            Some(Value::Array(values)) => {
                let betas: Option<Vec<f32>> = values
                    .iter()
                    .map(|v| v.as_f64().map(|b| b as f32))
                    .collect();
                match betas {
                    Some(b) if b.len() == num_train_timesteps => b,
                    _ => {
                        return Err(r.bad(
                            "trained_betas",
                            "null or an array of num_train_timesteps numbers",
                        ))
                    }
                }
            }
            None | Some(Value::Null) => match beta_schedule.as_str() {
                "linear" => torch_linspace_f32(beta_start, beta_end, num_train_timesteps),
                "scaled_linear" => {
                    torch_linspace_f32(beta_start.sqrt(), beta_end.sqrt(), num_train_timesteps)
                        .into_iter()
                        .map(|b| b * b)
                        .collect()
                }
                "squaredcos_cap_v2" => cosine_betas(num_train_timesteps),
                _ => {
                    return Err(r.bad(
                        "beta_schedule",
                        "linear, scaled_linear or squaredcos_cap_v2",
                    ))
                }
            },
            Some(_) => return Err(r.bad("trained_betas", "null or an array of numbers")),
        };
        // torch.cumprod accumulates float32 inputs in double on the CPU.
        let mut acc = 1.0f64;
        let alphas_cumprod: Vec<f32> = betas
            .iter()
            .map(|&b| {
                acc *= f64::from(1.0f32 - b);
                acc as f32
            })
            .collect();

        let prediction_type = match r.string_or("prediction_type", "epsilon")?.as_str() {
            "epsilon" => PredictionType::Epsilon,
            "v_prediction" => PredictionType::VPrediction,
            "sample" => PredictionType::Sample,
            _ => return Err(r.bad("prediction_type", "epsilon, v_prediction or sample")),
        };
        let default_spacing = match kind {
            SchedulerKind::Ddim => "leading",
            SchedulerKind::DpmSolverPp => "linspace",
        };
        let timestep_spacing = match r.string_or("timestep_spacing", default_spacing)?.as_str() {
            "linspace" => TimestepSpacing::Linspace,
            "leading" => TimestepSpacing::Leading,
            "trailing" => TimestepSpacing::Trailing,
            _ => return Err(r.bad("timestep_spacing", "linspace, leading or trailing")),
        };
        let steps_offset = r.usize_or("steps_offset", 0)?;
        let set_alpha_to_one = r.bool_or("set_alpha_to_one", true)?;
        let clip_sample_on = r.bool_or("clip_sample", kind == SchedulerKind::Ddim)?;
        let clip_range = r.f64_or("clip_sample_range", 1.0)?;
        r.require_default("thresholding", &Value::Bool(false))?;
        r.take("dynamic_thresholding_ratio");
        r.take("sample_max_value");
        r.require_default("rescale_betas_zero_snr", &Value::Bool(false))?;
        r.require_default_one_of("timestep_type", &[Value::Null, Value::from("discrete")])?;

        let solver_order = r.usize_or("solver_order", 2)?;
        let solver_type = match r.string_or("solver_type", "midpoint")?.as_str() {
            "midpoint" => SolverType::Midpoint,
            "heun" => SolverType::Heun,
            _ => return Err(r.bad("solver_type", "midpoint or heun")),
        };
        let algorithm = r.string_or("algorithm_type", "dpmsolver++")?;
        let lower_order_final = r.bool_or("lower_order_final", true)?;
        let euler_at_final = r.bool_or("euler_at_final", false)?;
        let final_sigmas = match r.string_or("final_sigmas_type", "zero")?.as_str() {
            "zero" => FinalSigmas::Zero,
            "sigma_min" => FinalSigmas::SigmaMin,
            _ => return Err(r.bad("final_sigmas_type", "zero or sigma_min")),
        };
        let lambda_min = r.take("lambda_min_clipped");
        let variance_type = r.take("variance_type");
        let karras = r.take("use_karras_sigmas");
        let lu = r.take("use_lu_lambdas");
        let exp_sigmas = r.take("use_exponential_sigmas");
        let beta_sigmas = r.take("use_beta_sigmas");
        if kind == SchedulerKind::DpmSolverPp {
            if !(1..=2).contains(&solver_order) {
                return Err(r.bad("solver_order", "1 or 2 (third order is not supported)"));
            }
            if algorithm != "dpmsolver++" {
                return Err(r.bad("algorithm_type", "dpmsolver++"));
            }
            let is_false = |v: &Option<Value>| {
                matches!(v, None | Some(Value::Null) | Some(Value::Bool(false)))
            };
            for (key, v) in [
                ("use_karras_sigmas", &karras),
                ("use_lu_lambdas", &lu),
                ("use_exponential_sigmas", &exp_sigmas),
                ("use_beta_sigmas", &beta_sigmas),
            ] {
                if !is_false(v) {
                    return Err(r.bad(key, "false"));
                }
            }
            if !matches!(&variance_type, None | Some(Value::Null)) {
                return Err(r.bad("variance_type", "null"));
            }
            let lambda_ok = match &lambda_min {
                None | Some(Value::Null) => true,
                Some(Value::String(s)) => s == "-inf" || s == "-Infinity",
                Some(v) => v
                    .as_f64()
                    .is_some_and(|x| x == f64::NEG_INFINITY || x <= -1e30),
            };
            if !lambda_ok {
                return Err(r.bad("lambda_min_clipped", "-inf"));
            }
        }
        r.ignore_private_and(FOREIGN_KEYS);
        r.finish()?;

        let clip_sample = (kind == SchedulerKind::Ddim && clip_sample_on).then_some(clip_range);
        let acp = {
            let mut h = blake3::Hasher::new();
            for a in &alphas_cumprod {
                h.update(&a.to_le_bytes());
            }
            h.finalize().to_hex()[..32].to_string()
        };
        // Part of every cache key: any change here moves every cached image.
        let canonical = format!(
            "{kind}|T{num_train_timesteps}|acp:{acp}|{prediction_type:?}|{timestep_spacing:?}|off{steps_offset}|a1{set_alpha_to_one}|clip{clip_sample:?}|o{solver_order}|{solver_type:?}|lof{lower_order_final}|eaf{euler_at_final}|{final_sigmas:?}",
            kind = kind.name(),
        );
        Ok(SchedulerConfig {
            kind,
            num_train_timesteps,
            alphas_cumprod,
            prediction_type,
            timestep_spacing,
            steps_offset,
            set_alpha_to_one,
            clip_sample,
            solver_order,
            solver_type,
            lower_order_final,
            euler_at_final,
            final_sigmas,
            canonical,
        })
    }

    /// The grid of `steps` timesteps every chain of a run shares (diffusers' `set_timesteps`).
    pub fn grid(&self, steps: usize) -> Result<TimestepGrid, SchedulerError> {
        if steps == 0 {
            return Err(SchedulerError::ZeroSteps);
        }
        if steps > self.num_train_timesteps {
            return Err(SchedulerError::TooManySteps {
                steps,
                train: self.num_train_timesteps,
            });
        }
        let t = self.num_train_timesteps;
        // DPM-Solver++ lays out one point more than it runs and drops the last (t = 0).
        let extra = usize::from(self.kind == SchedulerKind::DpmSolverPp);
        let timesteps: Vec<usize> = match self.timestep_spacing {
            TimestepSpacing::Linspace => np_linspace(0.0, (t - 1) as f64, steps + extra)
                .into_iter()
                .rev()
                .take(steps)
                .map(|x| x.round_ties_even() as usize)
                .collect(),
            TimestepSpacing::Leading => {
                let ratio = t / (steps + extra);
                (extra..steps + extra)
                    .rev()
                    .map(|i| i * ratio + self.steps_offset)
                    .collect()
            }
            TimestepSpacing::Trailing => np_arange_down(t as f64, t as f64 / steps as f64)
                .into_iter()
                .map(|x| (x.round_ties_even() as usize).saturating_sub(1))
                .collect(),
        };
        if timesteps.iter().any(|&ts| ts >= t) {
            return Err(SchedulerError::TimestepOutOfRange {
                steps,
                max: *timesteps.iter().max().unwrap_or(&0),
            });
        }
        let sigmas = match self.kind {
            SchedulerKind::Ddim => Vec::new(),
            SchedulerKind::DpmSolverPp => {
                let mut s: Vec<f32> = timesteps.iter().map(|&ts| self.sigma_at(ts)).collect();
                s.push(match self.final_sigmas {
                    FinalSigmas::Zero => 0.0,
                    FinalSigmas::SigmaMin => self.sigma_at(0),
                });
                s
            }
        };
        Ok(TimestepGrid {
            timesteps,
            sigmas,
            steps,
        })
    }

    /// σ(t) = √((1 − ᾱ)/ᾱ) in float32, as diffusers computes it.
    fn sigma_at(&self, t: usize) -> f32 {
        let a = self.alphas_cumprod[t];
        ((1.0f32 - a) / a).sqrt()
    }

    fn alpha_cumprod(&self, t: usize) -> f64 {
        f64::from(self.alphas_cumprod[t])
    }
}

/// torch.linspace(start, end, n, dtype=float32): float32 step, symmetric halves.
fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (s, e) = (start as f32, end as f32);
    if n == 1 {
        return vec![s];
    }
    let step = (e - s) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                s + step * i as f32
            } else {
                e - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

/// diffusers' `betas_for_alpha_bar` with the cosine transform (float64, then float32).
fn cosine_betas(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// numpy.linspace(start, stop, num) with endpoint.
fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

/// numpy.arange(start, 0, -step) for a positive float step.
fn np_arange_down(start: f64, step: f64) -> Vec<f64> {
    let n = (start / step).ceil() as usize;
    (0..n).map(|i| start + i as f64 * -step).collect()
}

/// Errors of the timestep arithmetic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchedulerError {
    /// A scheduler name that is neither DDIM nor DPM-Solver++.
    #[error("unknown scheduler {0:?} (expected ddim or dpm)")]
    UnknownKind(String),
    /// Zero denoising steps.
    #[error("the number of denoising steps must be at least 1")]
    ZeroSteps,
    /// More inference steps than training timesteps.
    #[error("{steps} denoising steps is more than the {train} training timesteps")]
    TooManySteps {
        /// Asked for.
        steps: usize,
        /// The schedule's training timesteps.
        train: usize,
    },
    /// The spacing (with `steps_offset`) puts a timestep past the schedule's end.
    #[error("timestep spacing with {steps} steps gives timestep {max}, outside the schedule")]
    TimestepOutOfRange {
        /// Inference steps.
        steps: usize,
        /// The largest timestep it gives.
        max: usize,
    },
    /// A noise level so low that no step of the grid runs.
    #[error("level r = {level} runs no denoising step with {steps} steps (needs ⌊steps·r⌋ ≥ 1)")]
    NoStepsAtLevel {
        /// The level, as written in keys.
        level: String,
        /// Inference steps.
        steps: usize,
    },
    /// A tensor operation of a step failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

/// The shared timestep grid of one run.
#[derive(Clone, Debug)]
pub struct TimestepGrid {
    /// Timesteps in the order they are run (descending).
    pub timesteps: Vec<usize>,
    /// DPM-Solver++ only: σ at each grid point plus the final σ (length N + 1).
    sigmas: Vec<f32>,
    steps: usize,
}

impl TimestepGrid {
    /// Inference steps of a full (r = 1) chain.
    pub fn len(&self) -> usize {
        self.steps
    }

    /// Whether the grid has no step (never, for a grid built by [`SchedulerConfig::grid`]).
    pub fn is_empty(&self) -> bool {
        self.steps == 0
    }
}

/// What a chain remembers between steps (DPM-Solver++'s multistep history).
#[derive(Debug, Default)]
pub struct ChainState {
    /// The previous step's x₀ prediction (only second order uses it).
    previous_x0: Option<Tensor>,
    /// Steps taken so far (diffusers' `lower_order_nums`, capped at the solver order).
    lower_order_nums: usize,
}

fn alpha_sigma(sigma: f64) -> (f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

impl SchedulerConfig {
    /// Noise the clean latents `x0` for a chain that starts at grid index `start`
    /// (diffusers' `add_noise` with `begin_index = start`).
    pub fn add_noise(
        &self,
        grid: &TimestepGrid,
        start: usize,
        x0: &Tensor,
        noise: &Tensor,
    ) -> Result<Tensor, SchedulerError> {
        let (a, s) = match self.kind {
            SchedulerKind::Ddim => {
                let acp = self.alphas_cumprod[grid.timesteps[start]];
                (f64::from(acp.sqrt()), f64::from((1.0f32 - acp).sqrt()))
            }
            SchedulerKind::DpmSolverPp => alpha_sigma(f64::from(grid.sigmas[start])),
        };
        Ok(((x0 * a)? + (noise * s)?)?)
    }

    /// Scale of the initial noise for text-to-image (`init_noise_sigma`; 1 for both samplers).
    pub fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// One denoising step at grid index `index` for one chain: returns x_{t-1}.
    pub fn step(
        &self,
        grid: &TimestepGrid,
        index: usize,
        model_output: &Tensor,
        sample: &Tensor,
        state: &mut ChainState,
    ) -> Result<Tensor, SchedulerError> {
        match self.kind {
            SchedulerKind::Ddim => self.ddim_step(grid, index, model_output, sample),
            SchedulerKind::DpmSolverPp => self.dpm_step(grid, index, model_output, sample, state),
        }
    }

    fn ddim_step(
        &self,
        grid: &TimestepGrid,
        index: usize,
        eps_or_v: &Tensor,
        sample: &Tensor,
    ) -> Result<Tensor, SchedulerError> {
        let t = grid.timesteps[index];
        // diffusers uses the fixed stride, whatever the spacing.
        let prev_t = t as i64 - (self.num_train_timesteps / grid.steps) as i64;
        let a_t = self.alpha_cumprod(t);
        let a_prev = if prev_t >= 0 {
            self.alpha_cumprod(prev_t as usize)
        } else if self.set_alpha_to_one {
            1.0
        } else {
            self.alpha_cumprod(0)
        };
        let b_t = 1.0 - a_t;
        let (mut x0, eps) = match self.prediction_type {
            PredictionType::Epsilon => {
                let x0 = ((sample - (eps_or_v * b_t.sqrt())?)? / a_t.sqrt())?;
                (x0, eps_or_v.clone())
            }
            PredictionType::Sample => {
                let eps = ((sample - (eps_or_v * a_t.sqrt())?)? / b_t.sqrt())?;
                (eps_or_v.clone(), eps)
            }
            PredictionType::VPrediction => {
                let x0 = ((sample * a_t.sqrt())? - (eps_or_v * b_t.sqrt())?)?;
                let eps = ((eps_or_v * a_t.sqrt())? + (sample * b_t.sqrt())?)?;
                (x0, eps)
            }
        };
        if let Some(range) = self.clip_sample {
            x0 = x0.clamp(-range, range)?;
        }
        Ok(((x0 * a_prev.sqrt())? + (eps * (1.0 - a_prev).sqrt())?)?)
    }

    fn dpm_step(
        &self,
        grid: &TimestepGrid,
        index: usize,
        model_output: &Tensor,
        sample: &Tensor,
        state: &mut ChainState,
    ) -> Result<Tensor, SchedulerError> {
        // diffusers: the last step is first order when the final σ is 0, with `euler_at_final`,
        // or for short schedules with `lower_order_final`.
        let n = grid.steps;
        let lower_order_final = index == n - 1
            && (self.euler_at_final
                || (self.lower_order_final && n < 15)
                || self.final_sigmas == FinalSigmas::Zero);
        let sigma_s0 = f64::from(grid.sigmas[index]);
        let sigma_t = f64::from(grid.sigmas[index + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(sigma_s0);
        let (alpha_t, sigma_t) = alpha_sigma(sigma_t);
        // x₀ prediction (dpmsolver++ works on the data prediction).
        let x0 = match self.prediction_type {
            PredictionType::Epsilon => ((sample - (model_output * sigma_s0)?)? / alpha_s0)?,
            PredictionType::Sample => model_output.clone(),
            PredictionType::VPrediction => ((sample * alpha_s0)? - (model_output * sigma_s0)?)?,
        };
        let lambda_t = alpha_t.ln() - sigma_t.ln();
        let lambda_s0 = alpha_s0.ln() - sigma_s0.ln();
        let h = lambda_t - lambda_s0;
        let phi = (-h).exp() - 1.0; // e^{-h} − 1; equals −1 when σ_t = 0 (h = +∞)
        let first_order = self.solver_order == 1 || state.lower_order_nums < 1 || lower_order_final;
        let first = |x0: &Tensor| (sample * (sigma_t / sigma_s0))? - (x0 * (alpha_t * phi))?;
        let prev = match (&state.previous_x0, first_order) {
            (Some(m1), false) => {
                let sigma_s1 = f64::from(grid.sigmas[index - 1]);
                let (alpha_s1, sigma_s1) = alpha_sigma(sigma_s1);
                let lambda_s1 = alpha_s1.ln() - sigma_s1.ln();
                let r0 = (lambda_s0 - lambda_s1) / h;
                let d1 = ((&x0 - m1)? * (1.0 / r0))?;
                match self.solver_type {
                    SolverType::Midpoint => (first(&x0)? - (d1 * (0.5 * alpha_t * phi))?)?,
                    SolverType::Heun => (first(&x0)? + (d1 * (alpha_t * (phi / h + 1.0)))?)?,
                }
            }
            _ => first(&x0)?,
        };
        if state.lower_order_nums < self.solver_order {
            state.lower_order_nums += 1;
        }
        state.previous_x0 = Some(x0);
        Ok(prev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_names_parse_or_are_typed_errors() {
        assert_eq!(
            "DPM++".parse::<SchedulerKind>().unwrap(),
            SchedulerKind::DpmSolverPp
        );
        assert_eq!(
            "ddim".parse::<SchedulerKind>().unwrap(),
            SchedulerKind::Ddim
        );
        assert!(matches!(
            "Euler".parse::<SchedulerKind>(),
            Err(SchedulerError::UnknownKind(name)) if name == "Euler"
        ));
    }
    use crate::engine::NoiseLevel;

    #[test]
    fn a_schedule_too_long_to_hold_is_refused_not_allocated() {
        // fuzz/artifacts/model_configs/crash-56ccf857…: 10¹¹ timesteps made the load allocate
        // 400 GB.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scheduler_config.json");
        std::fs::write(
            &path,
            r#"{"num_train_timesteps": 100000000000, "beta_schedule": "scaled_linear", "~%ta_start": 0.0002}"#,
        )
        .unwrap();
        let err = SchedulerConfig::from_file(&path, SchedulerKind::Ddim).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Unsupported { key, .. } if key == "num_train_timesteps"),
            "{err}"
        );
        // The longest accepted still loads.
        std::fs::write(
            &path,
            format!(r#"{{"num_train_timesteps": {MAX_TRAIN_TIMESTEPS}}}"#),
        )
        .unwrap();
        let ok = SchedulerConfig::from_file(&path, SchedulerKind::Ddim).unwrap();
        assert_eq!(ok.alphas_cumprod.len(), MAX_TRAIN_TIMESTEPS);
    }

    /// What diffusers 0.42's `DPMSolverMultistepScheduler.save_pretrained` writes, `-Infinity`
    /// (Python's JSON) included.
    const DIFFUSERS_DPM_CONFIG: &str = r#"{
  "_class_name": "DPMSolverMultistepScheduler",
  "_diffusers_version": "0.42.1",
  "algorithm_type": "dpmsolver++",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "dynamic_thresholding_ratio": 0.995,
  "euler_at_final": false,
  "final_sigmas_type": "zero",
  "flow_shift": 1.0,
  "lambda_min_clipped": -Infinity,
  "lower_order_final": true,
  "num_train_timesteps": 1000,
  "prediction_type": "epsilon",
  "rescale_betas_zero_snr": false,
  "sample_max_value": 1.0,
  "solver_order": 2,
  "solver_type": "midpoint",
  "steps_offset": 1,
  "thresholding": false,
  "time_shift_type": "exponential",
  "timestep_spacing": "linspace",
  "trained_betas": null,
  "use_beta_sigmas": false,
  "use_dynamic_shifting": false,
  "use_exponential_sigmas": false,
  "use_flow_sigmas": false,
  "use_karras_sigmas": false,
  "use_lu_lambdas": false,
  "variance_type": null
}"#;

    #[test]
    fn a_dpm_config_saved_by_diffusers_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scheduler_config.json");
        std::fs::write(&path, DIFFUSERS_DPM_CONFIG).unwrap();
        let saved = SchedulerConfig::from_file(&path, SchedulerKind::DpmSolverPp).unwrap();
        let sd15 = SchedulerConfig::sd15(SchedulerKind::DpmSolverPp);
        // The same noise schedule and grid as SD 1.5's own (PNDM) config gives the sampler.
        assert_eq!(
            saved.grid(50).unwrap().timesteps,
            sd15.grid(50).unwrap().timesteps
        );
        let acp = |c: &SchedulerConfig| c.canonical.split('|').nth(2).unwrap().to_string();
        assert_eq!(acp(&saved), acp(&sd15));
    }

    #[test]
    fn ddim_leading_grid_is_sd15s() {
        let s = SchedulerConfig::sd15(SchedulerKind::Ddim);
        let g = s.grid(50).unwrap();
        assert_eq!(g.timesteps.len(), 50);
        assert_eq!(g.timesteps[0], 981);
        assert_eq!(g.timesteps[49], 1);
        assert!(g.timesteps.windows(2).all(|w| w[0] - w[1] == 20));
    }

    #[test]
    fn dpm_linspace_grid_starts_at_999() {
        let s = SchedulerConfig::sd15(SchedulerKind::DpmSolverPp);
        let g = s.grid(50).unwrap();
        assert_eq!(g.timesteps[0], 999);
        assert_eq!(g.timesteps.len(), 50);
        assert_eq!(g.sigmas.len(), 51);
        assert_eq!(g.sigmas[50], 0.0);
        assert!(g.timesteps.windows(2).all(|w| w[0] > w[1]));
    }

    /// Each spacing of each scheduler at 10 steps, as diffusers' `set_timesteps` lays it out.
    #[test]
    fn every_spacing_lays_out_diffusers_grid() {
        let leading_ddim: Vec<usize> = (0..10).rev().map(|i| i * 100 + 1).collect();
        let leading_dpm: Vec<usize> = (1..=10).rev().map(|i| i * 90 + 1).collect();
        let trailing: Vec<usize> = (1..=10).rev().map(|i| i * 100 - 1).collect();
        let linspace_ddim: Vec<usize> = (0..10).rev().map(|i| i * 111).collect();
        for (kind, spacing, want) in [
            (
                SchedulerKind::Ddim,
                TimestepSpacing::Linspace,
                linspace_ddim,
            ),
            (SchedulerKind::Ddim, TimestepSpacing::Leading, leading_ddim),
            (
                SchedulerKind::Ddim,
                TimestepSpacing::Trailing,
                trailing.clone(),
            ),
            (
                SchedulerKind::DpmSolverPp,
                TimestepSpacing::Leading,
                leading_dpm,
            ),
            (
                SchedulerKind::DpmSolverPp,
                TimestepSpacing::Trailing,
                trailing,
            ),
        ] {
            let mut s = SchedulerConfig::sd15(kind);
            (s.timestep_spacing, s.steps_offset) = (spacing, 1);
            assert_eq!(s.grid(10).unwrap().timesteps, want, "{kind:?} {spacing:?}");
        }
    }

    /// The canonical form is part of every cache key: changing it moves every cached image.
    #[test]
    fn canonical_forms_are_pinned() {
        assert_eq!(SchedulerConfig::sd15(SchedulerKind::Ddim).canonical, "ddim|T1000|acp:9a725596c4fe6eebf96465e36cc8386a|Epsilon|Leading|off1|a1false|clipNone|o2|Midpoint|loftrue|eaffalse|Zero");
        assert_eq!(
            SchedulerConfig::sd15(SchedulerKind::DpmSolverPp).canonical,
            "dpm|T1000|acp:9a725596c4fe6eebf96465e36cc8386a|Epsilon|Linspace|off1|a1false|clipNone|o2|Midpoint|loftrue|eaffalse|Zero"
        );
    }

    #[test]
    fn sweep_step_counts_at_50() {
        let counts: Vec<usize> = NoiseLevel::ADA_SWEEP
            .iter()
            .map(|l| l.steps_to_run(50))
            .collect();
        assert_eq!(counts, [25, 30, 35, 40, 45]);
    }

    #[test]
    fn zero_and_too_many_steps_are_errors() {
        let s = SchedulerConfig::sd15(SchedulerKind::Ddim);
        assert!(matches!(s.grid(0), Err(SchedulerError::ZeroSteps)));
        assert!(matches!(
            s.grid(1001),
            Err(SchedulerError::TooManySteps { .. })
        ));
    }

    #[test]
    fn scaled_linear_alphas_match_known_values() {
        // diffusers: DDIMScheduler(beta_schedule="scaled_linear", ...).alphas_cumprod[[0, 999]]
        let s = SchedulerConfig::sd15(SchedulerKind::Ddim);
        assert!((s.alphas_cumprod[0] - 0.99915).abs() < 1e-6);
        assert!((s.alphas_cumprod[999] - 0.0046).abs() < 1e-4);
    }
}
