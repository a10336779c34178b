//! Long-tailed image classification with GeNIe hard negatives, end to end on the CPU.
//!
//! Trains the same small CNN twice with burn — once with the plain batcher, once with
//! `GenieBatcher` (hard negatives for the Few classes, r chosen per pair by GeNIe-Ada with the
//! live model) — and prints per-group accuracy (Many / Medium / Few), how many hard negatives
//! were mixed in, each group's share of the training items before and after mixing, the
//! histogram of chosen r*, and peak resident memory.
//!
//! ```text
//! cargo run --release --example long_tail                       # drawn shapes, tiny engine
//! cargo run --release --example long_tail -- --data DIR --weights SD15_DIR
//! ```
//!
//! By default the dataset is made in code (10 classes of drawn shapes and textures, 500 down to
//! 5 training images per class) and the engine is the tiny random model: its images are noise,
//! so the run shows the machinery, not the method's gains. With `--weights` (a diffusers-layout
//! Stable Diffusion 1.5 folder) and a real dataset, it is the paper's long-tail protocol.
//! `--data DIR` reads the image-folder layout: `DIR/train/<class>/*.png` and
//! `DIR/test/<class>/*.png`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_dataset::vision::ImageDatasetItem;
use clap::Parser;
use genie::cache::Cache;
use genie::generator::{Generator, GeneratorConfig};
use genie::loader::{
    image_item, predictions_and_targets, Augmenter, AugmenterConfig, GenieBatcher, GenieItem,
    KeySpace, LiveConfig, LiveModel,
};
use genie::policy::{ClassStats, Group, Policy, PolicyConfig, SharedConfusion};
use genie::synthetic;

mod common;
use common::{Cnn, Embeddings, ImageBatcher};

#[derive(Parser, Debug)]
#[command(about = "Long-tailed classification with and without GeNIe hard negatives")]
struct Args {
    /// Image-folder dataset with train/ and test/ (default: drawn shapes made in code).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Diffusers-layout Stable Diffusion folder (default: the tiny random model).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Training epochs per run.
    #[arg(long, default_value_t = 8)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Side of the classifier's input images.
    #[arg(long, default_value_t = 32)]
    image_size: u32,
    /// Diffusion steps N (the paper uses 50; fewer keeps the CPU run short).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Hard negatives per Few class (the paper's quota is 50).
    #[arg(long, default_value_t = 50)]
    per_class: usize,
    /// Use the fixed level r = 0.8 instead of GeNIe-Ada.
    #[arg(long)]
    no_ada: bool,
    /// Cache directory (default: a fresh temporary one).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Skip the run without hard negatives.
    #[arg(long)]
    skip_baseline: bool,
    /// Let GenieBatcher count the class statistics from the first epoch's batches instead of
    /// a pass over the labels (no hard negatives until that epoch is counted).
    #[arg(long)]
    stats_from_batches: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

struct Data {
    class_names: Vec<String>,
    train: Vec<ImageDatasetItem>,
    test: Vec<ImageDatasetItem>,
}

fn synthetic_data(side: u32, seed: u64) -> Result<Data> {
    let counts = synthetic::long_tail_counts(synthetic::CLASS_NAMES.len(), 500, 5);
    let to_items = |items: Vec<synthetic::SyntheticItem>, split: &str| {
        items
            .into_iter()
            .enumerate()
            .map(|(n, s)| image_item(&s.image, s.label, format!("{split}/{n}")))
            .collect::<Vec<_>>()
    };
    Ok(Data {
        class_names: synthetic::CLASS_NAMES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        train: to_items(synthetic::long_tail_dataset(&counts, side, seed)?, "train"),
        test: to_items(
            synthetic::balanced_dataset(50, synthetic::CLASS_NAMES.len(), side, seed)?,
            "test",
        ),
    })
}

/// Reads `dir/<class>/*` with genie's safe decoder (a bad file is an error naming it).
fn image_folder(dir: &Path, class_names: &[String], side: u32) -> Result<Vec<ImageDatasetItem>> {
    let mut items = Vec::new();
    for (label, name) in class_names.iter().enumerate() {
        let class_dir = dir.join(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&class_dir)
            .with_context(|| format!("reading {}", class_dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for path in files {
            let img = genie::image_io::open_rgb(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let img = genie::image_io::resize_center_crop(&img, side)
                .with_context(|| format!("resizing {}", path.display()))?;
            items.push(image_item(&img, label, path.display().to_string()));
        }
    }
    Ok(items)
}

fn folder_data(dir: &Path, side: u32) -> Result<Data> {
    let train_dir = dir.join("train");
    let mut class_names: Vec<String> = std::fs::read_dir(&train_dir)
        .with_context(|| format!("reading {}", train_dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    class_names.sort();
    if class_names.len() < 2 {
        bail!("{} needs at least two class folders", train_dir.display());
    }
    let train = image_folder(&train_dir, &class_names, side)?;
    let test = image_folder(&dir.join("test"), &class_names, side)?;
    Ok(Data {
        class_names,
        train,
        test,
    })
}

struct Online {
    augmenter: Arc<Augmenter<ImageDatasetItem>>,
    generator: Arc<Generator>,
    confusion: SharedConfusion,
    ada: bool,
}

struct Outcome {
    per_class: Vec<(usize, usize)>,
    steps: usize,
    seconds: f64,
}

fn train(args: &Args, data: &Data, online: Option<&Online>, device: &Device) -> Result<Outcome> {
    let side = args.image_size as usize;
    let classes = data.class_names.len();
    let batcher = ImageBatcher {
        side: args.image_size,
    };
    let train_device = device.clone().autodiff();
    let mut model = Cnn::new(classes, side, &train_device);
    let mut optim = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&train_device);
    let loader = match online {
        Some(o) => {
            DataLoaderBuilder::new(GenieBatcher::new(batcher.clone(), Arc::clone(&o.augmenter)))
                .batch_size(args.batch_size)
                .shuffle(args.seed)
                .set_device(train_device.clone())
                .build(InMemDataset::new(data.train.clone()))
        }
        None => DataLoaderBuilder::new(batcher.clone())
            .batch_size(args.batch_size)
            .shuffle(args.seed)
            .set_device(train_device.clone())
            .build(InMemDataset::new(data.train.clone())),
    };
    let live = match online.filter(|o| o.ada) {
        Some(o) => Some(LiveModel::start(
            Arc::clone(&o.augmenter),
            Embeddings {
                batcher: batcher.clone(),
                device: device.clone(),
            },
            LiveConfig {
                every: 20,
                ..LiveConfig::default()
            },
        )?),
        None => None,
    };
    let started = Instant::now();
    let mut steps = 0;
    for epoch in 1..=args.epochs {
        let mut loss_sum = 0.0;
        let mut batches = 0;
        for batch in loader.iter() {
            let batch = batch?;
            let logits = model.forward(batch.images);
            if let Some(o) = online {
                let (p, t) = predictions_and_targets(&logits, &batch.targets)?;
                o.confusion.record(&p, &t);
            }
            let loss = loss_fn.forward(logits, batch.targets);
            loss_sum += loss.clone().into_scalar::<f32>() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-3, model, grads);
            if let Some(live) = &live {
                live.observe(&model);
            }
            batches += 1;
            steps += 1;
        }
        let extra = online.map_or(String::new(), |o| {
            let s = o.augmenter.stats();
            let g = o.generator.stats();
            format!(
                "  hard negatives mixed {:>5}, pairs {:>3}, ready {:>3}, generated {:>4}",
                s.mixed, s.pairs, s.ready, g.done
            )
        });
        println!(
            "  epoch {epoch:>2}: loss {:.3}{extra}",
            loss_sum / batches.max(1) as f64
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(live) = live {
        let s = live.stop();
        println!(
            "  GeNIe-Ada: {} snapshots, {} pairs scored, {} unscorable",
            s.snapshots, s.scored, s.unscorable
        );
    }

    let model = model.valid();
    let mut per_class = vec![(0usize, 0usize); classes];
    for chunk in data.test.chunks(128) {
        let logits = model.forward(batcher.images(chunk, device));
        let labels: Vec<i64> = chunk
            .iter()
            .map(|i| i.label().unwrap_or(0) as i64)
            .collect();
        let targets = Tensor::<1, Int>::from_data(TensorData::new(labels, [chunk.len()]), device);
        let (p, t) = predictions_and_targets(&logits, &targets)?;
        for (p, t) in p.into_iter().zip(t) {
            per_class[t].1 += 1;
            if p == t {
                per_class[t].0 += 1;
            }
        }
    }
    Ok(Outcome {
        per_class,
        steps,
        seconds,
    })
}

fn group_accuracy(
    outcome: &Outcome,
    stats: &ClassStats,
    thresholds: &genie::policy::GroupThresholds,
) -> Vec<(Group, f64)> {
    Group::ALL
        .iter()
        .map(|&g| {
            let (right, total) = (0..outcome.per_class.len())
                .filter(|&c| stats.group(c, thresholds) == g)
                .fold((0, 0), |(r, t), c| {
                    (r + outcome.per_class[c].0, t + outcome.per_class[c].1)
                });
            (
                g,
                if total == 0 {
                    f64::NAN
                } else {
                    100.0 * right as f64 / total as f64
                },
            )
        })
        .collect()
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let data = match &args.data {
        Some(dir) => folder_data(dir, args.image_size)?,
        None => synthetic_data(args.image_size, args.seed)?,
    };
    let classes = data.class_names.len();
    let stats = ClassStats::from_labels(data.train.iter().filter_map(GenieItem::label), classes)?;
    let policy_config = PolicyConfig {
        per_target: args.per_class,
        seed: args.seed,
        ..PolicyConfig::long_tail()
    };
    let thresholds = policy_config.thresholds;
    println!(
        "dataset: {} classes, {} training images ({} … {} per class), {} test images",
        classes,
        data.train.len(),
        stats.counts().iter().max().unwrap_or(&0),
        stats.counts().iter().min().unwrap_or(&0),
        data.test.len()
    );
    for g in Group::ALL {
        let names: Vec<&str> = stats
            .classes_in(g, &thresholds)
            .into_iter()
            .map(|c| data.class_names[c].as_str())
            .collect();
        println!("  {g:<6} {}", names.join(", "));
    }

    let device = Device::flex();
    let baseline = if args.skip_baseline {
        None
    } else {
        println!("\ntraining without hard negatives");
        Some(train(&args, &data, None, &device)?)
    };

    let factory = common::engine_factory(args.weights.as_deref(), args.steps)?;
    let plan = factory.plan().clone();
    let (cache_dir, _temp) = match &args.cache {
        Some(dir) => (dir.clone(), None),
        None => {
            let t = tempfile::tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let cache = Arc::new(Cache::open_dir(&cache_dir, 64 << 20)?);
    let generator = Arc::new(Generator::start(
        Arc::new(factory),
        Arc::clone(&cache),
        GeneratorConfig::default(),
    )?);
    let confusion = SharedConfusion::new(classes);
    let policy = if args.stats_from_batches {
        Policy::long_tail_from_batches(classes, data.train.len(), policy_config)?
    } else {
        Policy::long_tail(stats.clone(), policy_config)?
    };
    let keys = KeySpace::new(
        plan.fingerprint.clone(),
        plan.resolution,
        data.class_names.clone(),
    );
    let augmenter = Arc::new(
        Augmenter::new(
            policy,
            keys,
            Arc::clone(&cache),
            Some(Arc::clone(&generator)),
            AugmenterConfig {
                ada: !args.no_ada,
                ..AugmenterConfig::default()
            },
        )?
        .with_confusion(confusion.clone()),
    );
    let online = Online {
        augmenter: Arc::clone(&augmenter),
        generator: Arc::clone(&generator),
        confusion,
        ada: !args.no_ada,
    };
    println!(
        "\ntraining with GeNIe hard negatives ({}, cache {})",
        if args.no_ada { "r = 0.8" } else { "GeNIe-Ada" },
        cache_dir.display()
    );
    let genie = train(&args, &data, Some(&online), &device)?;
    drop(online);
    // Dropping the last handle (with the augmenter, at the end) cancels what is still queued.
    let generated = generator.stats().done;

    println!("\naccuracy by group (test set)");
    println!("  {:<8}{:>12}{:>12}", "group", "baseline", "GeNIe");
    let with = group_accuracy(&genie, &stats, &thresholds);
    let without = baseline
        .as_ref()
        .map(|b| group_accuracy(b, &stats, &thresholds));
    for (i, (g, acc)) in with.iter().enumerate() {
        let base = without
            .as_ref()
            .map_or("-".to_string(), |w| format!("{:.1}%", w[i].1));
        println!("  {:<8}{base:>12}{:>11.1}%", g.to_string(), acc);
    }
    let s = augmenter.stats();
    println!(
        "\nhard negatives: {} mixed into batches, {} pairs, {} images generated, {} requests deferred",
        s.mixed, s.pairs, generated, s.deferred
    );
    let counts = augmenter.batch_counts();
    let total_seen = counts.seen_total().max(1) as f64;
    let total_trained = (0..classes).map(|c| counts.trained(c)).sum::<u64>().max(1) as f64;
    println!("training items by group, as the batches held them (real → after mixing)");
    for g in Group::ALL {
        let in_group = stats.classes_in(g, &thresholds);
        let seen: u64 = in_group.iter().map(|&c| counts.seen[c]).sum();
        let trained: u64 = in_group.iter().map(|&c| counts.trained(c)).sum();
        println!(
            "  {:<8}{seen:>7} ({:>4.1}%) → {trained:>7} ({:>4.1}%)",
            g.to_string(),
            100.0 * seen as f64 / total_seen,
            100.0 * trained as f64 / total_trained
        );
    }
    println!("chosen r* (pairs per level; pairs without a choice use 0.8)");
    for (level, n) in augmenter.level_histogram() {
        println!("  r = {level}: {n:>4} {}", "#".repeat(n.min(60)));
    }
    if let Some(b) = &baseline {
        println!(
            "\nthroughput: baseline {:.1} steps/s, GeNIe {:.1} steps/s",
            b.steps as f64 / b.seconds,
            genie.steps as f64 / genie.seconds
        );
    }
    if let Some(mib) = peak_rss_mib() {
        println!("peak resident memory: {mib:.0} MiB");
    }
    Ok(())
}
