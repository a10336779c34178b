//! The model arguments every generating command takes, the engine they make, and the same
//! arguments written back for a command line.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use genie::diffusion::{self, tiny, EngineOptions, ModelSource, SchedulerKind};

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum BuiltinModel {
    /// genie's shapes model: a small Stable Diffusion trained on the drawn-shapes dataset (64 px,
    /// prompts "a photo of a {circle|square|triangle|cross|ring|diamond|star|crescent|heart|arrow}.").
    Shapes,
    /// A tiny random model written on first use (fast, offline; its images are meaningless).
    Tiny,
    /// Stable Diffusion 1.5 from the Hugging Face Hub at a pinned revision (HF_HOME, HF_HUB_OFFLINE).
    Sd15,
}

#[derive(Args)]
pub(crate) struct ModelArgs {
    /// A Stable Diffusion model folder in the diffusers layout.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "model",
        required_unless_present = "model"
    )]
    pub(crate) weights: Option<PathBuf>,
    /// A built-in model instead of --weights (`shapes` shows the method; `tiny` is fast noise).
    #[arg(long, value_enum)]
    pub(crate) model: Option<BuiltinModel>,
    /// Denoising steps N of the full schedule (r runs the last ⌊N·r⌋).
    #[arg(long, default_value_t = 50)]
    pub(crate) steps: usize,
    /// Sampler: dpm (DPM-Solver++ 2M, as the GeNIe code) or ddim.
    #[arg(long, default_value = "dpm", value_parser = parse_scheduler)]
    pub(crate) scheduler: SchedulerKind,
    /// Classifier-free guidance scale (≤ 1 turns guidance off).
    #[arg(long, default_value_t = 7.5)]
    pub(crate) guidance: f64,
    /// Image side in pixels (default: the model's native size, 512 for SD 1.5, 64 for tiny).
    #[arg(long)]
    pub(crate) size: Option<u32>,
    /// Devices, one engine each: cpu, or cuda:N with a CUDA build (comma-separated).
    #[arg(long, alias = "devices", value_delimiter = ',', default_value = "cpu")]
    pub(crate) device: Vec<String>,
    /// f32, f16 or bf16 for the UNet and text encoder (the VAE runs in f32).
    #[arg(long, default_value = "f32")]
    pub(crate) dtype: String,
    /// With f16/bf16: fail when a chain's latents overflow instead of running it again in f32.
    #[arg(long)]
    pub(crate) no_f32_fallback: bool,
    /// CPU threads of each engine, in a pool of its own (default: all cores, shared). With
    /// `--device cpu,cpu --engine-threads 1` two engines generate side by side, faster on small
    /// models; the images are the same.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) engine_threads: Option<u16>,
}

pub(crate) fn parse_scheduler(s: &str) -> Result<SchedulerKind, String> {
    s.parse()
        .map_err(|e: diffusion::SchedulerError| e.to_string())
}

pub(crate) fn model_source(args: &ModelArgs) -> Result<ModelSource> {
    Ok(match (&args.weights, args.model) {
        (Some(dir), _) => ModelSource::Local(dir.clone()),
        (None, Some(BuiltinModel::Tiny)) => {
            let dir = tiny::ensure_tiny_model(&tiny::default_tiny_dir())?;
            eprintln!("note: the tiny model has random weights: its images are meaningless (use --weights for real ones)");
            ModelSource::Local(dir)
        }
        (None, Some(BuiltinModel::Shapes)) => diffusion::shapes::source()?,
        (None, Some(BuiltinModel::Sd15)) => ModelSource::sd15(),
        (None, None) => bail!("give --weights DIR or --model shapes|tiny|sd15"),
    })
}

pub(crate) fn engine_options(args: &ModelArgs) -> Result<EngineOptions> {
    let first = args.device.first().map_or("cpu", String::as_str);
    Ok({
        let mut options = EngineOptions::default();
        options.scheduler = args.scheduler;
        options.steps = args.steps;
        options.guidance = args.guidance;
        options.size = args.size;
        options.dtype = diffusion::parse_dtype(&args.dtype)?;
        options.device = diffusion::parse_device(first)?;
        options.half_fallback = !args.no_f32_fallback;
        options.threads = args.engine_threads.map(usize::from);
        options
    })
}

/// The engine options as command-line arguments, so that `warm status` can print a complete
/// resubmit command (the device is left out: it belongs to the machine, not the plan).
pub(crate) fn model_args(m: &ModelArgs) -> Vec<String> {
    let mut args = Vec::new();
    match (&m.weights, m.model) {
        (Some(dir), _) => args.extend(["--weights".into(), dir.display().to_string()]),
        (None, Some(BuiltinModel::Tiny)) => args.extend(["--model".into(), "tiny".into()]),
        (None, Some(BuiltinModel::Shapes)) => args.extend(["--model".into(), "shapes".into()]),
        (None, Some(BuiltinModel::Sd15)) => args.extend(["--model".into(), "sd15".into()]),
        (None, None) => {}
    }
    args.extend(["--steps".into(), m.steps.to_string()]);
    args.extend(["--scheduler".into(), m.scheduler.name().into()]);
    args.extend(["--guidance".into(), m.guidance.to_string()]);
    if let Some(size) = m.size {
        args.extend(["--size".into(), size.to_string()]);
    }
    args.extend(["--dtype".into(), m.dtype.clone()]);
    if m.no_f32_fallback {
        args.push("--no-f32-fallback".into());
    }
    args
}
