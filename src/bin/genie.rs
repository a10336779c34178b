//! `genie`: generate GeNIe hard negatives from the command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use genie::diffusion::{self, tiny, EngineOptions, ModelSource, SchedulerKind, SdEngine};
use genie::{image_io, Job, NoiseLevel, PromptTemplate};

#[derive(Parser)]
#[command(
    name = "genie",
    version,
    about = "Generative hard negatives (GeNIe) with Stable Diffusion img2img"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Turn a source image into hard negatives of a target class, one PNG per noise level.
    Generate(GenerateArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum BuiltinModel {
    /// A tiny random model written on first use (fast, offline; its images are meaningless).
    Tiny,
    /// Stable Diffusion 1.5 from the Hugging Face Hub at a pinned revision (HF_HOME, HF_HUB_OFFLINE).
    Sd15,
}

#[derive(Args)]
struct ModelArgs {
    /// A Stable Diffusion model folder in the diffusers layout.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "model",
        required_unless_present = "model"
    )]
    weights: Option<PathBuf>,
    /// A built-in model instead of --weights.
    #[arg(long, value_enum)]
    model: Option<BuiltinModel>,
    /// Denoising steps N of the full schedule (r runs the last ⌊N·r⌋).
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Sampler: dpm (DPM-Solver++ 2M, as the GeNIe code) or ddim.
    #[arg(long, default_value = "dpm", value_parser = parse_scheduler)]
    scheduler: SchedulerKind,
    /// Classifier-free guidance scale (≤ 1 turns guidance off).
    #[arg(long, default_value_t = 7.5)]
    guidance: f64,
    /// Image side in pixels (default: the model's native size, 512 for SD 1.5, 64 for tiny).
    #[arg(long)]
    size: Option<u32>,
    /// cpu, or cuda:N with a CUDA build.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32, f16 or bf16 for the UNet and text encoder (the VAE runs in f32).
    #[arg(long, default_value = "f32")]
    dtype: String,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The source image (any common format; resized and center-cropped to the model's size).
    #[arg(long, value_name = "IMG")]
    source: PathBuf,
    /// The target class name, as it goes into the prompt.
    #[arg(long)]
    target: String,
    /// Optional superclass: "a photo of a {target}, a type of {superclass}."
    #[arg(long)]
    superclass: Option<String>,
    /// Noise levels r in (0, 1], comma-separated; 1 is text-to-image.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.6,0.7,0.8,0.9", value_parser = parse_level)]
    levels: Vec<NoiseLevel>,
    /// Seed of the initial noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Initial noise: a safetensors file with one tensor `noise` of shape [1, 4, size/8, size/8].
    #[arg(long, value_name = "FILE")]
    noise: Option<PathBuf>,
    /// Output folder (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

fn parse_level(s: &str) -> Result<NoiseLevel, String> {
    NoiseLevel::parse(s).map_err(|e| e.to_string())
}

fn parse_scheduler(s: &str) -> Result<SchedulerKind, String> {
    s.parse()
}

fn load_engine(args: &ModelArgs) -> Result<SdEngine> {
    let source = match (&args.weights, args.model) {
        (Some(dir), _) => ModelSource::Local(dir.clone()),
        (None, Some(BuiltinModel::Tiny)) => {
            let dir = tiny::ensure_tiny_model(&tiny::default_tiny_dir())?;
            eprintln!("note: the tiny model has random weights: its images are meaningless (use --weights for real ones)");
            ModelSource::Local(dir)
        }
        (None, Some(BuiltinModel::Sd15)) => ModelSource::sd15(),
        (None, None) => bail!("give --weights DIR or --model tiny|sd15"),
    };
    let opts = EngineOptions {
        scheduler: args.scheduler,
        steps: args.steps,
        guidance: args.guidance,
        size: args.size,
        dtype: diffusion::parse_dtype(&args.dtype)?,
        device: diffusion::parse_device(&args.device)?,
        ..EngineOptions::default()
    };
    SdEngine::load(&source, opts)
        .with_context(|| format!("cannot load model {}", source.describe()))
}

fn generate(args: GenerateArgs) -> Result<()> {
    if args.levels.is_empty() {
        bail!("--levels needs at least one level");
    }
    if args.target.trim().is_empty() {
        bail!("--target must not be empty");
    }
    if args.out.exists() && !args.out.is_dir() {
        bail!("--out {} exists and is not a folder", args.out.display());
    }
    // Everything that can fail on user input is checked before the first file is written.
    let raw = image_io::open_rgb(&args.source)?;
    let mut engine = load_engine(&args.model)?;
    let starts = args
        .levels
        .iter()
        .map(|&l| engine.level_start(l).map(|s| (l, s)))
        .collect::<Result<Vec<_>, _>>()?;
    let size = engine_size(&engine);
    let source = image_io::resize_center_crop(&raw, size)?;
    let noise = match &args.noise {
        Some(path) => Some(Arc::new(diffusion::load_noise_file(
            path,
            engine.noise_shape(),
        )?)),
        None => None,
    };
    let prompt = PromptTemplate::default().render(args.target.trim(), args.superclass.as_deref());
    eprintln!("prompt: {prompt:?}");
    let job = Job {
        source: Some(Arc::new(source)),
        prompt,
        levels: args.levels.clone(),
        seed: args.seed,
        noise,
    };
    let outputs = genie::Engine::generate(&mut engine, &[job])?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    println!("{:>6}  {:>10}  {:>5}  file", "r", "start_t", "steps");
    for (image, (level, start)) in outputs[0].images.iter().zip(&starts) {
        let path = output_path(&args.out, *level);
        image_io::save_png_atomic(&image.image, &path)?;
        println!(
            "{:>6}  {:>10}  {:>5}  {}",
            level.to_string(),
            start.timestep,
            start.steps_run,
            path.display()
        );
    }
    Ok(())
}

fn engine_size(engine: &SdEngine) -> u32 {
    genie::Engine::resolution(engine)
}

fn output_path(dir: &Path, level: NoiseLevel) -> PathBuf {
    dir.join(format!("r{:04}.png", level.thousandths()))
}

fn main() -> ExitCode {
    diffusion::pin_cpu_threads();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
