//! `genie bench` and `genie parity`: time the engine, and check a build against diffusers.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use genie::diffusion::{self, parity, EngineOptions, SdEngine};
use genie::{image_io, Job, NoiseLevel};

use crate::model_args::{engine_options, model_source, ModelArgs};
use crate::parse::parse_level;

#[derive(Args)]
pub(crate) struct ParityArgs {
    /// The fixtures folder written by tests/parity/make_fixtures.py.
    #[arg(long, value_name = "DIR", default_value = "tests/parity/fixtures")]
    fixtures: PathBuf,
    /// cpu, or cuda:N with a CUDA build.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32, f16 or bf16 for the UNet and text encoder.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Largest allowed error (default: max|genie − diffusers| / max|diffusers| ≤ 1e-4 in f32,
    /// ‖genie − diffusers‖₂ / ‖diffusers‖₂ ≤ 1e-2 in f16/bf16).
    #[arg(long)]
    tolerance: Option<f32>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The source image (default: the sample built into genie).
    #[arg(long, value_name = "IMG")]
    source: Option<PathBuf>,
    /// Levels each job generates: one (0.8, GeNIe) or a sweep (0.5,0.6,0.7,0.8,0.9, GeNIe-Ada).
    #[arg(long, value_delimiter = ',', default_value = "0.8", value_parser = parse_level)]
    levels: Vec<NoiseLevel>,
    /// Jobs per engine call, comma-separated: each is timed separately.
    #[arg(long, value_delimiter = ',', default_value = "1", value_parser = clap::value_parser!(u16).range(1..=256))]
    batch: Vec<u16>,
    /// Timed runs per batch size, after one untimed warm-up run.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=1000))]
    repeats: u16,
    /// Print one JSON object per batch size instead of a table.
    #[arg(long)]
    json: bool,
}

/// The sample source image, built in so that `genie bench` runs anywhere the binary is copied.
pub(crate) const SAMPLE_PNG: &[u8] = include_bytes!("../../../assets/sample.png");

pub(crate) fn bench(args: BenchArgs) -> Result<()> {
    use genie::Engine as _;

    let source = model_source(&args.model)?;
    let opts = engine_options(&args.model)?;
    let raw = match &args.source {
        Some(path) => image_io::open_rgb(path)?,
        None => image_io::decode_rgb(SAMPLE_PNG)?,
    };
    let loading = std::time::Instant::now();
    let mut engine = SdEngine::load(&source, opts.clone())
        .with_context(|| format!("cannot load model {}", source.describe()))?;
    let load_seconds = loading.elapsed().as_secs_f64();
    let img = Arc::new(image_io::resize_center_crop(&raw, engine.resolution())?);
    let levels: Vec<String> = args.levels.iter().map(ToString::to_string).collect();
    if !args.json {
        println!(
            "{} on {} ({}), {} px, {} steps {}, guidance {}, levels {} — loaded in {load_seconds:.1} s",
            source.describe(),
            args.model.device.first().map_or("cpu", String::as_str),
            args.model.dtype,
            engine.resolution(),
            args.model.steps,
            args.model.scheduler.name(),
            args.model.guidance,
            levels.join(",")
        );
        println!("  batch   images/call   s/call (median)   s/image   peak RSS");
    }
    for batch in args.batch.iter().map(|&b| usize::from(b)) {
        let jobs: Vec<Job> = (0..batch)
            .map(|i| Job {
                source: Some(Arc::clone(&img)),
                prompt: format!("a photo of a class {i}."),
                levels: args.levels.clone(),
                seed: i as u64,
                noise: None,
            })
            .collect();
        engine.generate(&jobs)?; // warm-up: kernels, allocator, caches
        let mut seconds = Vec::with_capacity(args.repeats.into());
        for _ in 0..args.repeats {
            let started = std::time::Instant::now();
            let out = engine.generate(&jobs)?;
            seconds.push(started.elapsed().as_secs_f64());
            debug_assert_eq!(out.len(), batch);
        }
        seconds.sort_by(f64::total_cmp);
        let median = seconds[seconds.len() / 2];
        let images = batch * args.levels.len();
        let per_image = median / images as f64;
        let peak_rss_mib = peak_rss_mib();
        if args.json {
            let row = serde_json::json!({
                "engine": "genie",
                "model": source.describe(),
                "device": args.model.device.first(),
                "dtype": args.model.dtype,
                "size": engine.resolution(),
                "steps": args.model.steps,
                "scheduler": args.model.scheduler.name(),
                "guidance": args.model.guidance,
                "levels": levels,
                "batch": batch,
                "images_per_call": images,
                "seconds_per_call": median,
                "seconds_per_call_all": seconds,
                "seconds_per_image": per_image,
                "load_seconds": load_seconds,
                "peak_rss_mib": peak_rss_mib,
            });
            println!("{row}");
        } else {
            println!(
                "  {batch:>5}   {images:>11}   {median:>15.3}   {per_image:>7.3}   {}",
                peak_rss_mib.map_or_else(|| "?".into(), |m| format!("{m:.0} MiB"))
            );
        }
    }
    Ok(())
}

pub(crate) fn parity(args: ParityArgs) -> Result<ExitCode> {
    if !args.fixtures.join("meta.json").is_file() {
        bail!(
            "no parity fixtures in {} (run from a genie checkout, or pass --fixtures DIR)",
            args.fixtures.display()
        );
    }
    let mut options = EngineOptions::default();
    options.dtype = diffusion::parse_dtype(&args.dtype)?;
    options.device = diffusion::parse_device(&args.device)?;
    // A fallback would hide exactly the overflow this check is for.
    options.half_fallback = false;
    let (metric, default_tolerance) = parity::Metric::for_dtype(options.dtype);
    let tolerance = args.tolerance.unwrap_or(default_tolerance);
    let report = parity::check(&args.fixtures, &options, (metric, tolerance))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "parity against diffusers on {} in {}: {metric:?} error ≤ {tolerance:.0e}",
            report.device, report.dtype
        );
        println!(
            "  {:<24} {:>12} {:>12}",
            "tensor", "max-relative", "L2-relative"
        );
        for check in &report.checks {
            let verdict = if check.error(metric) <= tolerance {
                "ok"
            } else {
                "FAIL"
            };
            println!(
                "  {:<24} {:>12.2e} {:>12.2e}  {verdict}",
                check.name, check.max_relative, check.l2_relative
            );
        }
        println!(
            "{}: worst {metric:?} error {:.2e}",
            if report.passed() { "passed" } else { "FAILED" },
            report.worst()
        );
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// The process's peak resident memory (Linux), in MiB.
pub(crate) fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
