//! `genie generate`: source images into hard negatives of target classes, one PNG per level.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use genie::cache::Cache;
use genie::diffusion::{self, EngineOptions, ModelSource, SdEngine};
use genie::factory::SdEngineFactory;
use genie::generator::{
    Generator, GeneratorConfig, HardNegativeGenerator, Priority, Shutdown, SourceImage,
};
use genie::{image_io, Job, NoiseLevel, PromptTemplate};

use crate::classes::{images_in, ClassNaming};
use crate::model_args::{engine_options, model_source, ModelArgs};
use crate::parse::parse_level;
use crate::text::unique_slugs;

#[derive(Args)]
pub(crate) struct GenerateArgs {
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
    #[command(flatten)]
    naming: ClassNaming,
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

/// `DIR/rNNNN.png`, or `DIR/rNNNN-vK.png` when a pair has several variants.
pub(crate) fn level_file(dir: &Path, level: NoiseLevel, variant: Option<u32>) -> PathBuf {
    match variant {
        None => dir.join(format!("r{:04}.png", level.thousandths())),
        Some(v) => dir.join(format!("r{:04}-v{v}.png", level.thousandths())),
    }
}

/// Checks, before any image is made, that `dir` (or, if it does not exist yet, the folder it
/// would be made in) takes files, so that an unusable output folder (read only, on /proc, a file)
/// fails first rather than after the work. Leaves nothing behind.
pub(crate) fn check_writable(dir: &Path) -> Result<()> {
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
pub(crate) struct Pair {
    source: Option<SourceImage>,
    target: usize,
    seed: u64,
    out: PathBuf,
    /// The file-name suffix, when pairs have several variants.
    variant: Option<u32>,
}

pub(crate) fn generate(args: GenerateArgs) -> Result<()> {
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
    let classes = args.naming.classes(&targets)?;
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
    let keys = args.naming.key_space(&plan, classes);
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
        let mut config = GeneratorConfig::default();
        config.devices = args.model.device.clone();
        config.queue_capacity = misses.max(1);
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
            generator.wait_all(&waiting, Duration::from_secs(7 * 24 * 3600), &mut |n, _| {
                bar.set_position(n as u64)
            })?;
        bar.finish_and_clear();
        generator.shutdown(Shutdown::Drain);
        if let Some(first) = failures.first() {
            bail!(
                "{} of {} images failed; first error: {}",
                failures.len(),
                waiting.len(),
                first.1
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
pub(crate) fn generate_with_noise(
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
    let superclass = target
        .superclass
        .as_deref()
        .or(args.naming.superclass.as_deref());
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
