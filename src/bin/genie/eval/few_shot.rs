//! `genie eval few-shot`: the paper's few-shot protocol on an image folder with a ResNet
//! backbone, every method of Table 1.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use genie::backbone::{load_resnet, ResNetBackbone, ResNetConfig, ResNetDepth};
use genie::cache::Cache;
use genie::diffusion;
use genie::eval::{
    csv_table, markdown_table, run_few_shot, sample_episodes, sweep_points, CachedEpisodes,
    FewShotProtocolArgs, Method, NeededPair,
};
use genie::factory::SdEngineFactory;
use genie::generator::{Generator, GeneratorConfig, Shutdown};
use genie::image_io;
use genie::loader::TrainDevice;
use genie::warm::{ImageFolder, PlanEntry};
use image::RgbImage;

use super::{report_plan, HardNegativeArgs, TrainDeviceArgs};
use crate::classes::ClassNaming;
use crate::model_args::{engine_options, model_source};
use crate::text::printable;

/// Decoded images of the split kept in memory: an episode reads each of its images several
/// times (support, methods, GeNIe-Ada's sources), and episodes share images.
const DECODED_IMAGES: usize = 4096;

#[derive(Args)]
pub(crate) struct FewShotArgs {
    /// The test split: one sub-folder of images per class (mini-ImageNet / tiered-ImageNet
    /// layout).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    #[command(flatten)]
    naming: ClassNaming,
    /// The frozen backbone: resnet18, resnet34 or resnet50 (torchvision's layout).
    #[arg(long, default_value = "resnet18")]
    backbone: ResNetDepth,
    /// Its weights: .pth/.pt (torchvision, UniSiam, DataParallel checkpoints) or .safetensors.
    #[arg(long, value_name = "FILE")]
    backbone_weights: PathBuf,
    /// The backbone's first-stage width (64 in torchvision; smaller only for test networks).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    backbone_width: u32,
    /// The side images are resized to for the backbone.
    #[arg(long, default_value_t = 224, value_parser = clap::value_parser!(u32).range(8..=1024))]
    input_size: u32,
    #[command(flatten)]
    protocol: FewShotProtocolArgs,
    /// Write few_shot.md, few_shot.csv (and with --sweep few_shot_sweep.png) here.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    #[command(flatten)]
    device: TrainDeviceArgs,
    #[command(flatten)]
    hard_negatives: HardNegativeArgs,
}

pub(super) fn few_shot(args: FewShotArgs) -> Result<()> {
    let hn = &args.hard_negatives;
    let protocol = &args.protocol;
    let mut run = protocol.config().map_err(anyhow::Error::msg)?;
    let spec = run.spec;
    let folder = ImageFolder::scan(&args.data)?;
    for w in &folder.warnings {
        eprintln!("warning: {w}");
    }
    let mut members = vec![Vec::new(); folder.classes.len()];
    for (i, (_, class)) in folder.images.iter().enumerate() {
        members[*class].push(i);
    }
    let classes = args.naming.classes(&folder.classes)?;
    let episodes = sample_episodes(
        &members,
        &folder.classes,
        spec,
        protocol.episodes,
        protocol.seed,
    )?;

    let engine = diffusion::plan_engine(&model_source(&hn.model)?, &engine_options(&hn.model)?)?;
    let keys = args.naming.key_space(&engine, classes);
    let cache = Arc::new(Cache::open(&hn.cache, 64 << 20)?);
    let decoded = Mutex::new(lru::LruCache::<usize, RgbImage>::new(
        NonZeroUsize::new(DECODED_IMAGES).unwrap_or(NonZeroUsize::MIN),
    ));
    let original = |i: usize| -> Result<RgbImage, String> {
        if let Some(img) = decoded.lock().map_err(|e| e.to_string())?.get(&i) {
            return Ok(img.clone());
        }
        let (path, _) = folder
            .images
            .get(i)
            .ok_or_else(|| format!("no image {i}"))?;
        let img = image_io::open_rgb(path).map_err(|e| format!("{}: {e}", path.display()))?;
        decoded
            .lock()
            .map_err(|e| e.to_string())?
            .put(i, img.clone());
        Ok(img)
    };

    let started = Instant::now();
    let config = ResNetConfig {
        depth: args.backbone,
        width: args.backbone_width as usize,
    };
    let backbone_device = TrainDevice::open_spec(args.device.train_device)?;
    println!("backbone device: {backbone_device}");
    let device = backbone_device.device().clone();
    let model = load_resnet(&args.backbone_weights, config, &device)?;
    let backbone = ResNetBackbone::new(model, args.input_size, device);
    let source =
        CachedEpisodes::new(&keys, &cache, &original, protocol.seed).with_backbone(&backbone);
    let missing = source
        .missing_pairs(&episodes, &run.methods, protocol.extra_per_class())
        .map_err(anyhow::Error::msg)?;
    let images = genie::eval::missing_keys(&missing);
    // The queue holds levels as requested, repeats included.
    let queued: usize = missing.iter().map(|(_, p)| p.levels.len()).sum();
    println!(
        "{}-way {}-shot, {} queries, {} episodes over {} classes and {} images; {} hard \
         negatives needed that the cache lacks",
        protocol.ways,
        protocol.shots,
        protocol.queries,
        protocol.episodes,
        folder.classes.len(),
        folder.images.len(),
        images
    );
    if let Some(plan) = &hn.plan_out {
        return write_missing_plan(plan, &args, &folder, &keys, &source, &missing);
    }
    if !missing.is_empty() {
        if !hn.generate {
            let (_, first) = &missing[0];
            bail!(
                "{images} hard negatives are not in the cache {} (the first: {} towards {:?} at \
                 r = {}): pass --generate to make them here, or --plan-out FILE and run the plan \
                 with `genie warm run`",
                hn.cache,
                folder.images[first.source].0.display(),
                printable(&keys.class_label(first.target)),
                first.levels[0]
            );
        }
        let factory = SdEngineFactory::new(model_source(&hn.model)?, engine_options(&hn.model)?)?;
        let mut generator_config = GeneratorConfig::default();
        generator_config.devices = hn.model.device.clone();
        generator_config.queue_capacity = queued.max(1);
        let generator = Generator::start(Arc::new(factory), Arc::clone(&cache), generator_config)?;
        let mut last_line = Instant::now();
        let made = source
            .generate(&generator, &missing, &mut |n, total| {
                if n == total || last_line.elapsed().as_secs() >= 10 {
                    println!(
                        "generating: {n}/{total} ({:.0} s)",
                        started.elapsed().as_secs_f64()
                    );
                    last_line = Instant::now();
                }
            })
            .map_err(anyhow::Error::msg)?;
        generator.shutdown(Shutdown::Drain);
        println!("generated {made} hard negatives into {}", hn.cache);
    }

    run.image_size = engine.resolution;
    let mut last_line = Instant::now();
    let results = run_few_shot(
        &members,
        &folder.classes,
        &original,
        &backbone,
        Some(&source),
        &run,
        &mut |n| {
            if n == protocol.episodes || last_line.elapsed().as_secs() >= 10 {
                println!(
                    "episodes: {n}/{} ({:.0} s)",
                    protocol.episodes,
                    started.elapsed().as_secs_f64()
                );
                last_line = Instant::now();
            }
        },
    )?;
    let md = markdown_table(&results, spec);
    let csv = csv_table(&results, spec);
    println!("\n{md}\n{csv}");
    let sweep = sweep_points(&results);
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create --out {}", dir.display()))?;
        image_io::write_atomic(&dir.join("few_shot.md"), md.as_bytes())?;
        image_io::write_atomic(&dir.join("few_shot.csv"), csv.as_bytes())?;
        if !sweep.is_empty() {
            let png = image_io::encode_png(&genie::pictures::accuracy_plot(&sweep))?;
            image_io::write_atomic(&dir.join("few_shot_sweep.png"), &png)?;
        }
        println!("wrote {}", dir.display());
    }
    Ok(())
}

/// `--plan-out`: the missing hard negatives as a `genie warm run` plan (one entry per level).
fn write_missing_plan(
    plan: &std::path::Path,
    args: &FewShotArgs,
    folder: &ImageFolder,
    keys: &genie::generator::KeySpace,
    source: &CachedEpisodes,
    missing: &[(Method, NeededPair)],
) -> Result<()> {
    let hn = &args.hard_negatives;
    let mut entries = Vec::new();
    // GeNIe's r = 0.8 image of a pair is also one of GeNIe-Ada's levels: planned once.
    let mut planned = std::collections::HashSet::new();
    for (_, pair) in missing {
        let (path, class) = &folder.images[pair.source];
        let hash = source.source(pair.source).map_err(anyhow::Error::msg)?.hash;
        for (&r, &key) in pair.levels.iter().zip(&pair.keys) {
            if !planned.insert(key) {
                continue;
            }
            entries.push(PlanEntry {
                key,
                source: path.clone(),
                source_class: folder.classes[*class].clone(),
                target: folder.classes[pair.target].clone(),
                prompt: keys.prompt(pair.target),
                r,
                seed: pair.seed,
                variant: pair.variant,
                source_hash: hash,
            });
        }
    }
    report_plan(plan, &mut entries, &hn.cache, &hn.model)
}
