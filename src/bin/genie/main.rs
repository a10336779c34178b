//! `genie`: generate GeNIe hard negatives and manage their cache from the command line.

mod eval;
mod long_tail;
mod serve;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use genie::cache::{Cache, CacheKey, DiskStore, GcPolicy, KeyInputs};
use genie::diffusion::{self, parity, tiny, EngineOptions, ModelSource, SchedulerKind, SdEngine};
use genie::factory::SdEngineFactory;
use genie::generator::{Generator, GeneratorConfig, Priority, Request, Shutdown, SourceImage};
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
    /// Turn source images into hard negatives of target classes, one PNG per noise level.
    Generate(Box<GenerateArgs>),
    /// Inspect and maintain a hard-negative cache.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Pre-warm a cache before training: plan, run in shards, and check progress.
    #[command(subcommand)]
    Warm(WarmCommand),
    /// Draw one source across noise levels from the cache (r* and d_m when GeNIe-Ada chose).
    Sheet(Box<SheetArgs>),
    /// Time the engine: seconds per image for batch sizes and levels (no cache involved).
    Bench(Box<BenchArgs>),
    /// Check this build on a device and dtype against the diffusers parity fixtures (exit 3 if
    /// any tensor is off by more than the tolerance).
    Parity(ParityArgs),
    /// Run the generator as a server for training jobs elsewhere (HTTP + JSON; needs the
    /// `serve` feature): they send requests, it fills the shared cache. SIGTERM drains the queue.
    Serve(Box<serve::ServeArgs>),
    /// The paper's evaluation protocols on your data: few-shot episodes on a frozen backbone,
    /// long-tail training per group of classes.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
}

#[derive(Args)]
struct ParityArgs {
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
struct BenchArgs {
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

#[derive(Subcommand)]
enum WarmCommand {
    /// Write the sorted, deterministic plan (one JSON line per hard negative) of a dataset.
    Plan(Box<WarmPlanArgs>),
    /// Generate this task's shard of a plan into a cache, skipping what is already cached.
    Run(Box<WarmRunArgs>),
    /// What is cached and missing per shard, and how to resubmit the missing shards.
    /// Exits 0 when complete, 3 when something is missing.
    Status(WarmStatusArgs),
}

#[derive(Args)]
struct WarmStatusArgs {
    /// The plan written by `genie warm plan`.
    #[arg(long, value_name = "FILE")]
    plan: PathBuf,
    /// The cache: a folder or s3://bucket/prefix.
    #[arg(long, value_name = "DIR_OR_URL")]
    cache: String,
    /// The shard count the plan runs with (default: the done markers', else 1).
    #[arg(long)]
    shards: Option<u32>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SheetArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The cache: a folder or s3://bucket/prefix.
    #[arg(long, value_name = "DIR_OR_URL")]
    cache: String,
    /// The source image, as it was given to generate or warm run.
    #[arg(long, value_name = "IMG")]
    source: PathBuf,
    /// The target class (with --class-names: its id).
    #[arg(long)]
    target: String,
    /// The class-name file the hard negatives were generated with.
    #[arg(long, value_name = "FILE")]
    class_names: Option<PathBuf>,
    #[arg(long)]
    superclass: Option<String>,
    /// Noise levels to show, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.6,0.7,0.8,0.9", value_parser = parse_level)]
    levels: Vec<NoiseLevel>,
    /// The run seed the hard negatives were generated with.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Which variant of the pair to show.
    #[arg(long, default_value_t = 0)]
    variant: u32,
    /// Tile side in pixels (16 to 1024).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(16..=1024))]
    tile: u32,
    /// The PNG to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Args)]
struct WarmRunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The plan written by `genie warm plan` (with the same engine options).
    #[arg(long, value_name = "FILE")]
    plan: PathBuf,
    /// The cache to fill: a folder or s3://bucket/prefix (with the `s3` feature).
    #[arg(long, value_name = "DIR_OR_URL")]
    cache: String,
    /// This task's shard, I/N; default: SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX.
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
    /// The shard count N when the index comes from the environment (default:
    /// SLURM_ARRAY_TASK_COUNT; 1 when there is neither flag nor environment).
    #[arg(long)]
    shards: Option<u32>,
}

#[derive(Clone, Copy, ValueEnum)]
enum WarmMode {
    /// The Few classes (< 20 images) are targets, 50 hard negatives each.
    LongTail,
    /// Every class is a target, 4·shots hard negatives each.
    FewShot,
    /// The (source class, target class) pairs of --pairs FILE.
    Pairs,
}

#[derive(Args)]
struct WarmPlanArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The dataset in the image-folder layout: DIR/<class>/<image>.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    #[arg(long, value_enum, default_value = "long-tail")]
    mode: WarmMode,
    /// With --mode pairs: one `source_class,target_class` per line (# starts a comment).
    #[arg(long, value_name = "FILE", required_if_eq("mode", "pairs"))]
    pairs: Option<PathBuf>,
    /// With --mode few-shot: real images per class in an episode (quota 4·shots).
    #[arg(long, default_value_t = 1)]
    shots: usize,
    /// Noise levels r in (0, 1], comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.6,0.7,0.8,0.9", value_parser = parse_level)]
    levels: Vec<NoiseLevel>,
    /// Source images per target (per pair with --mode pairs); default: the mode's quota.
    #[arg(long)]
    per_class: Option<usize>,
    /// Where each target's sources come from: `uniform` (every other class), or
    /// `confusion FILE` (the 4 classes a CSV confusion matrix confuses most with the target).
    #[arg(long, num_args = 1..=2, value_names = ["uniform|confusion", "FILE"], default_value = "uniform")]
    sources: Vec<String>,
    /// Optional superclass: "a photo of a {target}, a type of {superclass}."
    #[arg(long)]
    superclass: Option<String>,
    /// A class-name file (`n01440764 tench` lines, or CSV `folder,name[,superclass]`): folder
    /// names stay the labels, prompts say the names.
    #[arg(long, value_name = "FILE")]
    class_names: Option<PathBuf>,
    /// Hard negatives per (source, target), each from its own noise (they count towards the
    /// quota; 1 to 1000).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    variants: u32,
    /// The run seed; each (source, target, variant) draws its own noise from it.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The plan file to write (JSON Lines, sorted by key).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Entries and bytes, by target class and by noise level.
    Stats {
        /// A cache folder or s3://bucket/prefix.
        #[arg(value_name = "DIR_OR_URL")]
        location: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check every entry's content against its manifest; with --repair, quarantine bad ones.
    Verify {
        dir: PathBuf,
        #[arg(long)]
        repair: bool,
    },
    /// Write an HTML page of thumbnails per target class, with counts by r (opens with no server).
    Report {
        /// A cache folder or s3://bucket/prefix.
        #[arg(value_name = "DIR_OR_URL")]
        location: String,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Thumbnails per target class and level (0 to 1000).
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(0..=1000))]
        per_level: u16,
        /// Thumbnail side in pixels (16 to 512).
        #[arg(long, default_value_t = 96, value_parser = clap::value_parser!(u32).range(16..=512))]
        thumbnail: u32,
    },
    /// Remove entries older than --max-age, then the oldest until the cache fits --max-size.
    Gc {
        dir: PathBuf,
        /// e.g. 20GiB, 500MB, 1048576
        #[arg(long, value_parser = parse_size)]
        max_size: Option<u64>,
        /// e.g. 30d, 12h, 90m
        #[arg(long, value_parser = parse_age)]
        max_age: Option<Duration>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum BuiltinModel {
    /// genie's shapes model: a small Stable Diffusion trained on the drawn-shapes dataset (64 px,
    /// prompts "a photo of a {circle|square|triangle|cross|ring|diamond|star|crescent|heart|arrow}.").
    Shapes,
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
    /// A built-in model instead of --weights (`shapes` shows the method; `tiny` is fast noise).
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
    /// Devices, one engine each: cpu, or cuda:N with a CUDA build (comma-separated).
    #[arg(long, alias = "devices", value_delimiter = ',', default_value = "cpu")]
    device: Vec<String>,
    /// f32, f16 or bf16 for the UNet and text encoder (the VAE runs in f32).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// With f16/bf16: fail when a chain's latents overflow instead of running it again in f32.
    #[arg(long)]
    no_f32_fallback: bool,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A source image (any common format; resized and center-cropped to the model's size).
    /// Not needed when every level is 1 (text-to-image).
    #[arg(long, value_name = "IMG", conflicts_with = "source_dir")]
    source: Option<PathBuf>,
    /// Every image in this folder (not recursive) is a source.
    #[arg(long, value_name = "DIR")]
    source_dir: Option<PathBuf>,
    /// The target class, as it goes into the prompt (with --class-names: its id).
    #[arg(long, required_unless_present = "targets", conflicts_with = "targets")]
    target: Option<String>,
    /// Several target classes, comma-separated.
    #[arg(long, value_delimiter = ',')]
    targets: Option<Vec<String>>,
    /// A class-name file (`n01440764 tench` lines, or CSV `id,name[,superclass]`): the targets
    /// are ids, the prompts say their names.
    #[arg(long, value_name = "FILE")]
    class_names: Option<PathBuf>,
    /// Optional superclass: "a photo of a {target}, a type of {superclass}."
    #[arg(long)]
    superclass: Option<String>,
    /// Noise levels r in (0, 1], comma-separated; 1 is text-to-image.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.6,0.7,0.8,0.9", value_parser = parse_level)]
    levels: Vec<NoiseLevel>,
    /// Hard negatives per (source, target), each from its own noise: rNNNN-vK.png (1 to 1000).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    variants: u32,
    /// The run seed; each (source, target, variant) draws its own noise from it.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Initial noise: a safetensors file with one tensor `noise` of shape [1, 4, size/8, size/8]
    /// (one source and one target only; not with --cache, whose keys hold the seed).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["cache", "source_dir", "targets"])]
    noise: Option<PathBuf>,
    /// A hard-negative cache folder: levels found there are not generated again; new ones are stored.
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
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

/// `20GiB`, `500MB`, `64k`, `1048576` → bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?} (e.g. 20GiB, 500MB)"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "invalid size unit in {s:?} (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            ))
        }
    };
    let bytes = value * scale;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("size {s:?} is out of range"));
    }
    Ok(bytes as u64)
}

/// `30d`, `12h`, `90m`, `45s` → a duration.
fn parse_age(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid age {s:?} (e.g. 30d, 12h)"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" | "" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("invalid age unit in {s:?} (use s, m, h, d or w)")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("age {s:?} is out of range"))
}

fn model_source(args: &ModelArgs) -> Result<ModelSource> {
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

fn engine_options(args: &ModelArgs) -> Result<EngineOptions> {
    let first = args.device.first().map_or("cpu", String::as_str);
    Ok(EngineOptions {
        scheduler: args.scheduler,
        steps: args.steps,
        guidance: args.guidance,
        size: args.size,
        dtype: diffusion::parse_dtype(&args.dtype)?,
        device: diffusion::parse_device(first)?,
        half_fallback: !args.no_f32_fallback,
        ..EngineOptions::default()
    })
}

/// The image files of a folder, sorted by name.
fn images_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read --source-dir {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && image_io::has_image_extension(p))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("--source-dir {} holds no images", dir.display());
    }
    Ok(files)
}

/// A folder-name-safe form of a class or file name (the output folder is the user's; keys never use names).
fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.trim_matches('_').is_empty() {
        "x".into()
    } else if s.len() > MAX_SLUG_BYTES {
        // File systems refuse names past 255 bytes, and only after the images are made: a long
        // name keeps its start and gets a hash of the whole, so it stays readable and unique.
        let hash = blake3::hash(name.as_bytes()).to_hex();
        format!("{}-{}", &s[..MAX_SLUG_BYTES - 17], &hash[..16])
    } else {
        s
    }
}

/// Longest output folder name `slug` makes (well below every file system's 255).
const MAX_SLUG_BYTES: usize = 96;

/// `DIR/rNNNN.png`, or `DIR/rNNNN-vK.png` when a pair has several variants.
fn level_file(dir: &Path, level: NoiseLevel, variant: Option<u32>) -> PathBuf {
    match variant {
        None => dir.join(format!("r{:04}.png", level.thousandths())),
        Some(v) => dir.join(format!("r{:04}-v{v}.png", level.thousandths())),
    }
}

/// The key space of a command: `classes`, with `--superclass` for those without their own.
fn key_space(
    engine: &diffusion::EnginePlan,
    classes: Vec<genie::classes::ClassInfo>,
    superclass: Option<&String>,
) -> genie::generator::KeySpace {
    let keys = genie::generator::KeySpace::with_classes(
        engine.fingerprint.clone(),
        engine.resolution,
        classes,
    );
    match superclass {
        Some(s) => keys.with_superclass(s.clone()),
        None => keys,
    }
}

/// The class-name file of `--class-names`, if given.
fn read_class_names(path: Option<&Path>) -> Result<Option<genie::classes::ClassNames>> {
    path.map(genie::classes::ClassNames::read)
        .transpose()
        .map_err(Into::into)
}

/// Folder names for `names`, refusing two that would share a folder (and overwrite each
/// other's images) before anything is generated.
fn unique_slugs<'a>(names: impl IntoIterator<Item = &'a str>, what: &str) -> Result<Vec<String>> {
    let mut seen: std::collections::HashMap<String, &str> = Default::default();
    let mut slugs = Vec::new();
    for name in names {
        let s = slug(name);
        if let Some(first) = seen.insert(s.clone(), name) {
            bail!(
                "{what}s {first:?} and {name:?} would both be written to {s}/: rename one of them"
            );
        }
        slugs.push(s);
    }
    Ok(slugs)
}

/// Checks, before any image is made, that `dir` (or, if it does not exist yet, the folder it
/// would be made in) takes files, so that an unusable output folder (read only, on /proc, a file)
/// fails first rather than after the work. Leaves nothing behind.
fn check_writable(dir: &Path) -> Result<()> {
    let mut existing = dir;
    while !existing.exists() {
        match existing.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => existing = parent,
            _ => {
                existing = Path::new(".");
                break;
            }
        }
    }
    if !existing.is_dir() {
        bail!(
            "cannot write in {}: {} is not a folder",
            dir.display(),
            existing.display()
        );
    }
    tempfile::Builder::new()
        .prefix(".genie-write-check")
        .tempfile_in(existing)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    Ok(())
}

/// One (source, target, variant) and where its images go.
struct Pair {
    source: Option<SourceImage>,
    target: usize,
    seed: u64,
    out: PathBuf,
    /// The file-name suffix, when pairs have several variants.
    variant: Option<u32>,
}

fn generate(args: GenerateArgs) -> Result<()> {
    if args.levels.is_empty() {
        bail!("--levels needs at least one level");
    }
    if args.variants == 0 {
        bail!("--variants must be at least 1");
    }
    let targets: Vec<String> = match (&args.target, &args.targets) {
        (Some(t), _) => vec![t.trim().to_string()],
        (None, Some(ts)) => ts.iter().map(|t| t.trim().to_string()).collect(),
        (None, None) => bail!("give --target NAME or --targets a,b,c"),
    };
    if targets.iter().any(String::is_empty) {
        bail!("target names must not be empty");
    }
    for (i, t) in targets.iter().enumerate() {
        if targets[..i].contains(t) {
            bail!("target {t:?} is given twice");
        }
    }
    if args.out.exists() && !args.out.is_dir() {
        bail!("--out {} exists and is not a folder", args.out.display());
    }
    let text_only = args.levels.iter().all(|l| l.is_text_to_image());
    let source_files: Vec<Option<PathBuf>> = match (&args.source, &args.source_dir) {
        (Some(s), _) => vec![Some(s.clone())],
        (None, Some(dir)) => images_in(dir)?.into_iter().map(Some).collect(),
        (None, None) if text_only => vec![None],
        (None, None) => {
            bail!("give --source IMG or --source-dir DIR (text-to-image alone, --levels 1, needs none)")
        }
    };
    let names = read_class_names(args.class_names.as_deref())?;
    let classes = genie::classes::classes_for(&targets, names.as_ref())?;
    // Everything that can fail on user input is checked before the first file is written.
    let raw: Vec<Option<image::RgbImage>> = source_files
        .iter()
        .map(|p| p.as_deref().map(image_io::open_rgb).transpose())
        .collect::<Result<_, _>>()?;
    let single = source_files.len() == 1 && targets.len() == 1;
    let stems: Vec<String> = source_files
        .iter()
        .map(|f| {
            f.as_deref()
                .and_then(Path::file_stem)
                .map_or("text".into(), |s| s.to_string_lossy().to_string())
        })
        .collect();
    let source_dirs = unique_slugs(stems.iter().map(String::as_str), "source")?;
    let target_dirs = unique_slugs(classes.iter().map(|c| c.id.as_str()), "target")?;
    let source = model_source(&args.model)?;
    let opts = engine_options(&args.model)?;
    if let Some(noise) = &args.noise {
        return generate_with_noise(&args, raw[0].as_ref(), &classes[0], source, opts, noise);
    }
    let factory = Arc::new(
        SdEngineFactory::new(source.clone(), opts)
            .with_context(|| format!("cannot load model {}", source.describe()))?,
    );
    let plan = factory.plan().clone();
    let starts = args
        .levels
        .iter()
        .map(|&l| plan.level_start(l))
        .collect::<Result<Vec<_>, _>>()?;
    let keys = key_space(&plan, classes, args.superclass.as_ref());
    let mut pairs = Vec::new();
    for (img, dir) in raw.iter().zip(&source_dirs) {
        let src = img
            .as_ref()
            .map(|i| image_io::resize_center_crop(i, plan.resolution).map(SourceImage::new))
            .transpose()?;
        for (target, target_dir) in target_dirs.iter().enumerate() {
            for variant in 0..args.variants {
                pairs.push(Pair {
                    source: src.clone(),
                    target,
                    seed: keys.pair_seed(args.seed, src.as_ref().map(|s| s.hash), target, variant),
                    out: if single {
                        args.out.clone()
                    } else {
                        args.out.join(dir).join(target_dir)
                    },
                    variant: (args.variants > 1).then_some(variant),
                });
            }
        }
    }

    // The cache: the user's, or a scratch one that lives as long as this command.
    let scratch = match &args.cache {
        Some(_) => None,
        None => Some(tempfile::tempdir().context("cannot create a scratch cache")?),
    };
    let cache_dir = args
        .cache
        .as_deref()
        .or(scratch.as_ref().map(|d| d.path()))
        .expect("one of them is set");
    let cache = Arc::new(Cache::open_dir(cache_dir, 256 << 20)?);
    let key = |p: &Pair, level: NoiseLevel| {
        keys.key(p.source.as_ref().map(|s| s.hash), p.target, level, p.seed)
    };
    // `get_image` rather than `contains`: a hit is verified (a corrupt entry is quarantined and
    // becomes a miss) and its decoded image is what we write out.
    let mut found: Vec<Vec<Option<Arc<image::RgbImage>>>> = Vec::new();
    let mut misses = 0usize;
    for p in &pairs {
        let mut row = Vec::new();
        for &level in &args.levels {
            let img = cache.get_image(&key(p, level))?;
            misses += usize::from(img.is_none());
            row.push(img);
        }
        found.push(row);
    }
    if single {
        eprintln!("prompt: {:?}", keys.prompt(0));
    }
    check_writable(&args.out)?;

    if misses > 0 {
        let config = GeneratorConfig {
            devices: args.model.device.clone(),
            queue_capacity: misses.max(1),
            ..GeneratorConfig::default()
        };
        let generator = Generator::start(factory.clone(), cache.clone(), config)?;
        // The whole run is queued before any batch is taken, so reruns batch alike and give the
        // same pixels.
        generator.hold();
        let bar = indicatif::ProgressBar::new(misses as u64).with_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} generating {pos}/{len} images [{elapsed_precise}, eta {eta}] {per_sec}",
            )
            .expect("valid template"),
        );
        let mut waiting = Vec::new();
        for (p, row) in pairs.iter().zip(&found) {
            let levels: Vec<NoiseLevel> = args
                .levels
                .iter()
                .zip(row)
                .filter(|(_, img)| img.is_none())
                .map(|(l, _)| *l)
                .collect();
            if levels.is_empty() {
                continue;
            }
            let receipt = generator.request(keys.request(
                p.source.clone(),
                p.target,
                levels,
                p.seed,
                Priority::Online,
            ))?;
            waiting.extend(receipt.levels.into_iter().map(|(_, k, _)| k));
        }
        generator.release();
        let failures =
            generator.wait_all(&waiting, Duration::from_secs(7 * 24 * 3600), |n, _| {
                bar.set_position(n as u64)
            })?;
        bar.finish_and_clear();
        generator.shutdown(Shutdown::Drain);
        if let Some(first) = failures.first() {
            bail!(
                "{} of {} images failed; first error: {first}",
                failures.len(),
                waiting.len()
            );
        }
    }

    println!(
        "{:>6}  {:>8}  {:>5}  {:<5}  file",
        "r", "start_t", "steps", "cache"
    );
    for (p, row) in pairs.iter().zip(found) {
        std::fs::create_dir_all(&p.out)
            .with_context(|| format!("cannot create {}", p.out.display()))?;
        for ((&level, start), hit) in args.levels.iter().zip(&starts).zip(row) {
            let state = if hit.is_some() { "hit" } else { "miss" };
            let img = match hit {
                Some(img) => img,
                None => cache.get_image(&key(p, level))?.with_context(|| {
                    format!(
                        "the image of r = {level} for {:?} is not in the cache after generation",
                        keys.class_label(p.target)
                    )
                })?,
            };
            let path = level_file(&p.out, level, p.variant);
            image_io::save_png_atomic(&img, &path)?;
            println!(
                "{:>6}  {:>8}  {:>5}  {:<5}  {}",
                level.to_string(),
                start.timestep,
                start.steps_run,
                state,
                path.display()
            );
        }
    }
    Ok(())
}

/// `--noise`: one source, one target, run directly on the engine (injected noise is not in a key).
fn generate_with_noise(
    args: &GenerateArgs,
    raw: Option<&image::RgbImage>,
    target: &genie::classes::ClassInfo,
    source: ModelSource,
    opts: EngineOptions,
    noise_file: &Path,
) -> Result<()> {
    let mut engine = SdEngine::load(&source, opts)
        .with_context(|| format!("cannot load model {}", source.describe()))?;
    let starts = args
        .levels
        .iter()
        .map(|&l| engine.level_start(l))
        .collect::<Result<Vec<_>, _>>()?;
    let src = raw
        .map(|r| image_io::resize_center_crop(r, genie::Engine::resolution(&engine)))
        .transpose()?;
    let noise = diffusion::load_noise_file(noise_file, engine.noise_shape())?;
    let superclass = target.superclass.as_deref().or(args.superclass.as_deref());
    let prompt = PromptTemplate::default().render(&target.name, superclass);
    eprintln!("prompt: {prompt:?}");
    let job = Job {
        source: src.map(Arc::new),
        prompt,
        levels: args.levels.clone(),
        seed: args.seed,
        noise: Some(Arc::new(noise)),
    };
    let outputs = genie::Engine::generate(&mut engine, &[job])?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    println!(
        "{:>6}  {:>8}  {:>5}  {:<5}  file",
        "r", "start_t", "steps", "cache"
    );
    for (image, start) in outputs[0].images.iter().zip(&starts) {
        let path = level_file(&args.out, image.level, None);
        image_io::save_png_atomic(&image.image, &path)?;
        println!(
            "{:>6}  {:>8}  {:>5}  {:<5}  {}",
            image.level.to_string(),
            start.timestep,
            start.steps_run,
            "-",
            path.display()
        );
    }
    Ok(())
}

fn cache_command(cmd: CacheCommand) -> Result<()> {
    match cmd {
        CacheCommand::Stats { location, json } => {
            let stats = genie::cache::open_store(&location, false)?.stats()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
                return Ok(());
            }
            println!("{} entries, {}", stats.entries, human_bytes(stats.bytes));
            if stats.unusable_manifests > 0 {
                println!(
                    "{} manifests are unusable and counted in nothing below: `genie cache verify` \
                     lists them, `--repair` quarantines them",
                    stats.unusable_manifests
                );
            }
            if stats.newer_format_manifests > 0 {
                println!(
                    "{} manifests come from a newer genie and are counted in nothing below",
                    stats.newer_format_manifests
                );
            }
            println!("\nby target class:");
            for (target, g) in &stats.by_target {
                println!(
                    "  {:<30} {:>8} entries  {:>10}",
                    printable(target),
                    g.entries,
                    human_bytes(g.bytes)
                );
            }
            println!("\nby noise level:");
            for (level, n) in &stats.by_level {
                let r = NoiseLevel::from_thousandths(*level)
                    .map_or_else(|| format!("{level}‰"), |l| l.to_string());
                println!("  r = {:<6} {:>8} entries", r, n);
            }
            Ok(())
        }
        CacheCommand::Report {
            location,
            out,
            per_level,
            thumbnail,
        } => {
            let store = genie::cache::open_store(&location, false)?;
            let options = genie::pictures::ReportOptions {
                title: format!("genie cache {location}"),
                thumbnails_per_level: per_level.into(),
                thumbnail_px: thumbnail,
            };
            let (html, summary) = genie::pictures::cache_report(store.as_ref(), &options)?;
            image_io::write_atomic(&out, html.as_bytes())?;
            println!(
                "{} entries of {} target classes, {} thumbnails -> {}",
                summary.entries,
                summary.targets,
                summary.thumbnails,
                out.display()
            );
            if summary.unreadable + summary.skipped_manifests > 0 {
                eprintln!(
                    "warning: {} entries unreadable, {} manifests skipped (see genie cache verify)",
                    summary.unreadable, summary.skipped_manifests
                );
            }
            Ok(())
        }
        CacheCommand::Verify { dir, repair } => {
            let store = DiskStore::open_existing(&dir)?;
            let report = store.verify_with(repair, genie::cache::check_image)?;
            for bad in &report.bad {
                println!("bad: {} — {}", bad.location, bad.defect);
            }
            println!(
                "checked {} entries: {} ok, {} bad{}",
                report.checked,
                report.ok,
                report.bad.len(),
                if repair {
                    format!(", {} quarantined", report.quarantined)
                } else {
                    String::new()
                }
            );
            if !report.bad.is_empty() && !repair {
                bail!(
                    "{} bad entries (run with --repair to quarantine them)",
                    report.bad.len()
                );
            }
            Ok(())
        }
        CacheCommand::Gc {
            dir,
            max_size,
            max_age,
        } => {
            if max_size.is_none() && max_age.is_none() {
                bail!("give --max-size and/or --max-age");
            }
            let store = DiskStore::open_existing(&dir)?;
            let report = store.gc(&GcPolicy {
                max_bytes: max_size,
                max_age,
            })?;
            println!(
                "removed {} entries ({}); {} entries ({}) remain",
                report.removed_entries,
                human_bytes(report.removed_bytes),
                report.remaining_entries,
                human_bytes(report.remaining_bytes)
            );
            Ok(())
        }
    }
}

fn read_pairs(path: &Path) -> Result<Vec<(String, String)>> {
    let text = genie::safe_open::read_to_string(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut pairs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let Some((s, t)) = line.split_once(',') else {
            bail!(
                "{}:{}: expected `source_class,target_class`",
                path.display(),
                n + 1
            );
        };
        pairs.push((s.trim().to_string(), t.trim().to_string()));
    }
    if pairs.is_empty() {
        bail!("{} lists no pairs", path.display());
    }
    Ok(pairs)
}

fn warm_plan(args: WarmPlanArgs) -> Result<()> {
    use genie::policy::SourceStrategy;
    use genie::warm::{build_plan, write_plan, ImageFolder, PlanMode, PlanOptions};

    let folder = ImageFolder::scan(&args.data)?;
    for w in &folder.warnings {
        eprintln!("warning: {w}");
    }
    let mode = match args.mode {
        WarmMode::LongTail => PlanMode::LongTail,
        WarmMode::FewShot => PlanMode::FewShot { shots: args.shots },
        WarmMode::Pairs => {
            let file = args
                .pairs
                .as_deref()
                .context("--mode pairs needs --pairs FILE")?;
            PlanMode::Pairs(read_pairs(file)?)
        }
    };
    if args.variants == 0 {
        bail!("--variants must be at least 1");
    }
    let names = read_class_names(args.class_names.as_deref())?;
    let classes = genie::classes::classes_for(&folder.classes, names.as_ref())?;
    let engine =
        diffusion::plan_engine(&model_source(&args.model)?, &engine_options(&args.model)?)?;
    let keys = key_space(&engine, classes, args.superclass.as_ref());
    let (sources, confusion) = match args.sources.as_slice() {
        [kind] if kind == "uniform" => (SourceStrategy::Uniform, None),
        [kind, file] if kind == "confusion" => {
            let matrix = genie::warm::read_confusion(Path::new(file), &folder.classes)?;
            (SourceStrategy::TopConfused { k: 4 }, Some(matrix))
        }
        [kind] if kind == "confusion" => {
            bail!("--sources confusion needs the matrix: --sources confusion FILE")
        }
        other => bail!(
            "--sources {:?}: expected `uniform` or `confusion FILE`",
            other.join(" ")
        ),
    };
    let levels: Vec<String> = args.levels.iter().map(ToString::to_string).collect();
    let options = PlanOptions {
        mode,
        levels: args.levels,
        per_class: args.per_class,
        sources,
        confusion,
        variants: args.variants,
        seed: args.seed,
    };
    let (mut entries, summary) = build_plan(&folder, &options, &keys)?;
    for s in &summary.skipped {
        eprintln!("warning: skipped unreadable source {s}");
    }
    write_plan(&args.out, &mut entries)?;
    let sidecar = serde_json::json!({
        "plan": args.out,
        "entries": summary.entries,
        "images": folder.images.len(),
        "classes": folder.classes.len(),
        "levels": levels,
        "per_target": summary.per_target,
        "skipped": summary.skipped,
        "run_args": model_args(&args.model),
    });
    let sidecar_path = summary_path(&args.out);
    image_io::write_atomic(&sidecar_path, format!("{sidecar:#}\n").as_bytes())?;
    println!(
        "{} hard negatives from {} images of {} classes -> {}",
        summary.entries,
        folder.images.len(),
        folder.classes.len(),
        args.out.display()
    );
    for (target, n) in &summary.per_target {
        println!("  {:<24} {n:>7}", printable(target));
    }
    Ok(())
}

/// The plan's summary, written beside it: `<plan>.summary.json`.
fn summary_path(plan: &Path) -> PathBuf {
    let mut path = plan.as_os_str().to_owned();
    path.push(".summary.json");
    PathBuf::from(path)
}

/// The engine options as command-line arguments, so that `warm status` can print a complete
/// resubmit command (the device is left out: it belongs to the machine, not the plan).
fn model_args(m: &ModelArgs) -> Vec<String> {
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

/// Quotes an argument for a POSIX shell when it needs it.
fn shell_word(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

fn warm_status(args: WarmStatusArgs) -> Result<ExitCode> {
    use genie::warm::{
        check_count, done_markers, marker_shard_count, read_plan, skipped_reports,
        slurm_array_list, warm_status,
    };

    let entries = read_plan(&args.plan)?;
    let markers = done_markers(&args.plan);
    let count = check_count(args.shards.or(marker_shard_count(&markers)).unwrap_or(1))?;
    // Before the first `warm run` the cache folder is missing or empty: every entry is missing.
    let store = match genie::cache::open_store(&args.cache, false) {
        Ok(store) => Some(store),
        Err(genie::cache::CacheError::NotACache { path })
            if std::fs::read_dir(&path).map_or(true, |mut d| d.next().is_none()) =>
        {
            None
        }
        Err(e) => return Err(e.into()),
    };
    let status = warm_status(&entries, count, &markers, |k| {
        store.as_ref().map_or(Ok(false), |s| s.contains(k))
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        println!(
            "{}: {} planned in {count} shards, {} cached, {} missing",
            args.plan.display(),
            status.planned(),
            status.cached(),
            status.planned() - status.cached()
        );
        for s in &status.shards {
            let state = match (s.is_complete(), s.marked_done) {
                (true, true) => "done",
                (true, false) => "complete (no marker yet)",
                (false, true) => "marked done, but entries are missing (gc?)",
                (false, false) if s.cached > 0 => "partial",
                (false, false) => "not started",
            };
            println!(
                "  shard {:>4}/{count}  {:>8} planned  {:>8} cached  {:>8} missing  {state}",
                s.index,
                s.planned,
                s.cached,
                s.missing()
            );
        }
        for (report, held_back) in skipped_reports(&args.plan, count) {
            println!(
                "  {held_back} missing entries wait on sources that could not be read: see {}",
                report.display()
            );
        }
    }
    let incomplete = status.incomplete();
    if incomplete.is_empty() {
        if !args.json {
            println!("complete");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let run_args: Vec<String> = genie::safe_open::read_to_string(&summary_path(&args.plan))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|v| serde_json::from_value(v["run_args"].clone()).ok())
        .unwrap_or_else(|| vec!["<the engine options of warm plan>".into()]);
    let common = [
        "--plan".to_string(),
        args.plan.display().to_string(),
        "--cache".to_string(),
        args.cache.clone(),
    ]
    .into_iter()
    .chain(run_args)
    .map(|a| shell_word(&a))
    .collect::<Vec<_>>()
    .join(" ");
    eprintln!("\nresubmit the {} incomplete shards:", incomplete.len());
    eprintln!(
        "  Slurm:      sbatch --array={} docs/slurm/genie-warm.sbatch   (GENIE_SHARDS={count})",
        slurm_array_list(&incomplete)
    );
    eprintln!("  by hand:");
    for shard in incomplete.iter().take(8) {
        eprintln!("    genie warm run {common} --shard {shard}");
    }
    if incomplete.len() > 8 {
        eprintln!("    … and {} more shards", incomplete.len() - 8);
    }
    Ok(ExitCode::from(3))
}

fn sheet(args: SheetArgs) -> Result<()> {
    use genie::pictures::{contact_sheet, SheetLevel};

    let plan = diffusion::plan_engine(&model_source(&args.model)?, &engine_options(&args.model)?)?;
    let cache = Cache::new(genie::cache::open_store(&args.cache, false)?, 0);
    let source = image_io::load_source(&args.source, plan.resolution)
        .with_context(|| format!("source {}", args.source.display()))?;
    let src = SourceImage::new(source.clone());
    let names = read_class_names(args.class_names.as_deref())?;
    let classes = genie::classes::classes_for(&[args.target.trim()], names.as_ref())?;
    let keys = key_space(&plan, classes, args.superclass.as_ref());
    let seed = keys.pair_seed(args.seed, src.hash, 0, args.variant);
    let mut levels = Vec::new();
    for &level in &args.levels {
        let image = cache.get_image(&keys.key(src.hash, 0, level, seed))?;
        levels.push(SheetLevel {
            level,
            image: image.map(|i| (*i).clone()),
        });
    }
    let found = levels.iter().filter(|l| l.image.is_some()).count();
    if found == 0 {
        bail!(
            "{} has none of these {} levels for {} as {:?}: was it generated with the same engine \
             options (--model/--weights, --steps, --scheduler, --guidance, --size, --dtype), seed, \
             variant, class names and superclass?",
            args.cache,
            args.levels.len(),
            args.source.display(),
            args.target
        );
    }
    let choice = cache.ada_choice(&keys.pair_key(src.hash, 0, seed))?;
    let sheet = contact_sheet(&source, &levels, choice.as_ref(), args.tile);
    image_io::save_png_atomic(&sheet, &args.out)?;
    let ada = match choice
        .as_ref()
        .and_then(|c| c.chosen_level().map(|l| (l, c.model_version)))
    {
        Some((level, version)) => format!("r* = {level} (model version {version})"),
        None => "no GeNIe-Ada choice recorded".into(),
    };
    println!(
        "{} of {} levels cached; {ada} -> {}",
        found,
        args.levels.len(),
        args.out.display()
    );
    Ok(())
}

fn warm_run(args: WarmRunArgs) -> Result<()> {
    use genie::warm::{done_marker, read_plan, skipped_report, Shard, ShardError};

    let entries = read_plan(&args.plan)?;
    let shard = match Shard::resolve(args.shard.as_deref(), args.shards, |v| {
        std::env::var(v).ok()
    }) {
        Err(ShardError::Missing) if args.shards.is_none() => Shard::ALL,
        other => other?,
    };
    let mine: Vec<_> = entries.iter().filter(|e| shard.owns(&e.key)).collect();
    let cache = Arc::new(Cache::open(&args.cache, 64 << 20)?);
    let mut todo = Vec::new();
    for e in &mine {
        if !cache.contains(&e.key)? {
            todo.push(*e);
        }
    }
    eprintln!(
        "shard {shard}: {} of {} planned hard negatives, {} already cached, {} to generate",
        mine.len(),
        entries.len(),
        mine.len() - todo.len(),
        todo.len()
    );
    let mut generated = (0, 0);
    let mut unreadable: Vec<(PathBuf, usize, String)> = Vec::new();
    if !todo.is_empty() {
        let factory = Arc::new(SdEngineFactory::new(
            model_source(&args.model)?,
            engine_options(&args.model)?,
        )?);
        let plan = factory.plan().clone();
        let config = GeneratorConfig {
            devices: args.model.device.clone(),
            queue_capacity: todo.len(),
            ..GeneratorConfig::default()
        };
        let generator = Generator::start(factory, cache.clone(), config)?;
        // One request per (source, target, seed): its levels share one chain grid.
        let mut groups: std::collections::BTreeMap<_, Vec<&genie::warm::PlanEntry>> =
            Default::default();
        for e in &todo {
            groups
                .entry((e.source.clone(), e.target.clone(), e.prompt.clone(), e.seed))
                .or_default()
                .push(e);
        }
        let mut waiting = Vec::new();
        for ((source, target, prompt, seed), group) in groups {
            // A source that cannot be read holds back its own entries only: the rest of the
            // shard is made, and the source is reported (here and by `warm status`).
            let img = match image_io::load_source(&source, plan.resolution) {
                Ok(img) => img,
                Err(e) => {
                    unreadable.push((source.clone(), group.len(), error_line(&e.into())));
                    continue;
                }
            };
            let src = SourceImage::new(img);
            for e in &group {
                let key = CacheKey::new(&KeyInputs {
                    source: Some(src.hash),
                    prompt: &prompt,
                    level: e.r,
                    seed,
                    fingerprint: &plan.fingerprint,
                });
                if key != e.key {
                    bail!(
                        "plan entry {} does not match this engine or source (key {key}): run with the \
                         engine options the plan was made with, or plan again",
                        e.key
                    );
                }
            }
            let receipt = generator.request(Request {
                source: Some(src),
                target,
                prompt,
                levels: group.iter().map(|e| e.r).collect(),
                seed,
                priority: Priority::Prewarm,
            })?;
            waiting.extend(receipt.levels.into_iter().map(|(_, k, _)| k));
        }
        let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            indicatif::ProgressBar::new(waiting.len() as u64)
        } else {
            indicatif::ProgressBar::hidden()
        }
        .with_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} shard {msg} {pos}/{len} [{elapsed_precise}, eta {eta}] {per_sec}",
            )
            .expect("valid template"),
        )
        .with_message(shard.to_string());
        let started = std::time::Instant::now();
        let mut last_log = started;
        let week = Duration::from_secs(7 * 24 * 3600);
        let failures = generator.wait_all(&waiting, week, |done, total| {
            bar.set_position(done as u64);
            if bar.is_hidden() && last_log.elapsed() > Duration::from_secs(30) {
                last_log = std::time::Instant::now();
                let rate = done as f64 / started.elapsed().as_secs_f64();
                eprintln!(
                    "shard {shard}: {done}/{total} done, {rate:.2} images/s, eta {:.0} s",
                    (total - done) as f64 / rate.max(1e-9)
                );
            }
        })?;
        bar.finish_and_clear();
        let stats = generator.shutdown(Shutdown::Drain);
        generated = (stats.done, stats.engine_calls);
        if let Some(first) = failures.first() {
            bail!(
                "shard {shard}: {} of {} images failed (rerun to retry them); first error: {first}",
                failures.len(),
                waiting.len()
            );
        }
    }
    let marker = done_marker(&args.plan, shard);
    if let Some(dir) = marker.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let report = skipped_report(&args.plan, shard);
    if !unreadable.is_empty() {
        let lines: String = unreadable
            .iter()
            .map(|(path, entries, why)| format!("{}\t{entries}\t{why}\n", path.display()))
            .collect();
        image_io::write_atomic(&report, lines.as_bytes())?;
        let held_back: usize = unreadable.iter().map(|u| u.1).sum();
        bail!(
            "shard {shard}: {} sources cannot be read, holding back {held_back} planned entries \
             (listed in {}); the other {} entries are cached. First: {}: {}",
            unreadable.len(),
            report.display(),
            mine.len() - held_back,
            unreadable[0].0.display(),
            unreadable[0].2
        );
    }
    if let Err(e) = std::fs::remove_file(&report) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(e).with_context(|| format!("cannot remove {}", report.display()));
        }
    }
    image_io::write_atomic(&marker, format!("{} entries\n", mine.len()).as_bytes())?;
    println!(
        "shard {shard} complete: {} entries cached; this run generated {} images in {} engine calls ({})",
        mine.len(),
        generated.0,
        generated.1,
        marker.display()
    );
    Ok(())
}

/// The sample source image, built in so that `genie bench` runs anywhere the binary is copied.
const SAMPLE_PNG: &[u8] = include_bytes!("../../../assets/sample.png");

fn bench(args: BenchArgs) -> Result<()> {
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

fn parity(args: ParityArgs) -> Result<ExitCode> {
    if !args.fixtures.join("meta.json").is_file() {
        bail!(
            "no parity fixtures in {} (run from a genie checkout, or pass --fixtures DIR)",
            args.fixtures.display()
        );
    }
    let options = EngineOptions {
        dtype: diffusion::parse_dtype(&args.dtype)?,
        device: diffusion::parse_device(&args.device)?,
        // A fallback would hide exactly the overflow this check is for.
        half_fallback: false,
        ..EngineOptions::default()
    };
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
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn main() -> ExitCode {
    diffusion::tune_cpu_process();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: logs redirected to a file stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let done = |r: Result<()>| r.map(|()| ExitCode::SUCCESS);
    let result = match cli.command {
        Command::Generate(args) => done(generate(*args)),
        Command::Cache(cmd) => done(cache_command(cmd)),
        Command::Warm(WarmCommand::Plan(args)) => done(warm_plan(*args)),
        Command::Warm(WarmCommand::Run(args)) => done(warm_run(*args)),
        Command::Warm(WarmCommand::Status(args)) => warm_status(args),
        Command::Sheet(args) => done(sheet(*args)),
        Command::Bench(args) => done(bench(*args)),
        Command::Parity(args) => parity(args),
        Command::Eval(cmd) => done(eval::eval_command(cmd)),
        Command::Serve(args) => done(serve::serve(*args)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// `text` with control characters escaped: a class name read from a file or a cache may hold a
/// terminal escape sequence, which is shown, not obeyed.
fn printable(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    shown
}

/// Longest error line printed; past it the line is cut (a 1 MB plan line is not echoed whole).
const MAX_ERROR_CHARS: usize = 2000;

/// The error and its causes on one line: a cause whose text the line already holds is not
/// repeated (many errors quote their source), control characters (a terminal escape in a class
/// name) are shown escaped, and the line is cut at `MAX_ERROR_CHARS`.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    let line = printable(&line);
    match line.char_indices().nth(MAX_ERROR_CHARS) {
        Some((cut, _)) => {
            let rest = line[cut..].chars().count();
            format!("{}… ({rest} more characters)", &line[..cut])
        }
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_control_characters_only() {
        assert_eq!(printable("tench, Tinca"), "tench, Tinca");
        assert_eq!(printable("\u{1b}[2Jcat\r"), "\\u{1b}[2Jcat\\r");
    }

    #[test]
    fn error_lines_say_each_cause_once_escaped_and_bounded() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let e = anyhow::Error::new(io)
            .context("cannot read x.png: No such file or directory")
            .context("loading sources");
        assert_eq!(
            error_line(&e),
            "loading sources: cannot read x.png: No such file or directory"
        );
        let e = anyhow::anyhow!("unknown class \u{1b}[31mred\nline");
        assert_eq!(error_line(&e), "unknown class \\u{1b}[31mred\\nline");
        let e = anyhow::anyhow!("bad line {}", "x".repeat(1_000_000));
        let line = error_line(&e);
        assert!(
            line.chars().count() < MAX_ERROR_CHARS + 40,
            "{}",
            line.len()
        );
        assert!(
            line.ends_with("more characters)"),
            "{}",
            &line[line.len() - 40..]
        );
    }

    #[test]
    fn sizes_and_ages_parse() {
        assert_eq!(parse_size("20GiB").unwrap(), 20 << 30);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("-5GB").is_err());
        assert_eq!(parse_age("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert_eq!(parse_age("12h").unwrap(), Duration::from_secs(12 * 3600));
        assert!(parse_age("soon").is_err());
    }

    #[test]
    fn slugs_are_plain_names() {
        assert_eq!(slug("golden retriever"), "golden_retriever");
        assert_eq!(slug("../etc"), "___etc");
        assert_eq!(slug("///"), "x");
        let long = "a".repeat(10_000);
        let (a, b) = (slug(&long), slug(&format!("{long}b")));
        assert_eq!(a.len(), MAX_SLUG_BYTES);
        assert!(a.starts_with("aaaa") && a != b, "{a} {b}");
    }
}
