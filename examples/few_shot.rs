//! Few-shot episodes with GeNIe hard negatives: the paper's offline protocol with `GenieDataset`.
//!
//! Each N-way K-shot episode draws N classes, K support and Q query images per class. Every
//! class of the episode is a target; its hard negatives come from the support images of the
//! *other* classes of the episode, 4·K per class (the paper's quota: 1-shot → 4, 5-shot → 20),
//! generated at r = 0.8 — or, with `--ada`, at the five levels of GeNIe-Ada, with r* chosen per
//! pair by a frozen backbone (a small CNN trained on the classes outside the episode, as
//! few-shot backbones are trained on base classes). A linear classifier is trained with burn on
//! the support set alone and on support + hard negatives (a `GenieDataset`), and both are scored
//! on the queries.
//!
//! ```text
//! cargo run --release --example few_shot                    # drawn shapes, shapes model
//! cargo run --release --example few_shot -- --ada           # r* per pair by GeNIe-Ada
//! cargo run --release --example few_shot -- --shots 5 --episodes 10 --weights SD15_DIR --device cuda:0 --dtype f16
//! ```
//!
//! The default engine is genie's shapes model (a small Stable Diffusion trained on the drawn
//! shapes), so the hard negatives are real ones; `--model tiny` is the random tiny model (fast,
//! noise). The linear layer on raw pixels is a small stand-in for the paper's frozen backbone and
//! logistic regression: its numbers show the protocol, not the paper's accuracies.

use std::sync::Arc;

use anyhow::Result;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::{Dataset, InMemDataset};
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_dataset::vision::ImageDatasetItem;
use clap::Parser;
use genie::cache::Cache;
use genie::generator::{Generator, Shutdown, WaitOutcome};
use genie::loader::{image_item, GenieDataset, GenieItem, KeySpace, OfflinePlan};
use genie::policy::{ClassStats, Policy, PolicyConfig};
use genie::{synthetic, NoiseLevel};

mod common;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

#[derive(Parser, Debug)]
#[command(about = "N-way K-shot episodes with and without GeNIe hard negatives")]
struct Args {
    #[arg(long, default_value_t = 5)]
    ways: usize,
    #[arg(long, default_value_t = 1)]
    shots: usize,
    /// Query images per class.
    #[arg(long, default_value_t = 15)]
    queries: usize,
    #[arg(long, default_value_t = 4)]
    episodes: usize,
    /// Choose r per pair with GeNIe-Ada (five levels each) and a frozen backbone, instead of
    /// the fixed r = 0.8.
    #[arg(long)]
    ada: bool,
    #[command(flatten)]
    engine: common::EngineArgs,
    /// Side of the images.
    #[arg(long, default_value_t = 16)]
    image_size: u32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Items → flattened pixels in [-1, 1] and labels.
#[derive(Clone)]
struct Flatten;

#[derive(Clone, Debug)]
struct Batch {
    inputs: Tensor<2>,
    targets: Tensor<1, Int>,
}

fn flatten(items: &[ImageDatasetItem], device: &Device) -> Tensor<2> {
    let mut values = Vec::new();
    let mut width = 0;
    for item in items {
        let rgb = item.rgb().unwrap_or_default();
        width = rgb.as_raw().len();
        values.extend(rgb.as_raw().iter().map(|&v| v as f32 / 127.5 - 1.0));
    }
    Tensor::from_data(TensorData::new(values, [items.len(), width]), device)
}

impl Batcher<ImageDatasetItem, Batch> for Flatten {
    fn batch(&self, items: Vec<ImageDatasetItem>, device: &Device) -> Batch {
        let labels: Vec<i64> = items
            .iter()
            .map(|i| i.label().unwrap_or(0) as i64)
            .collect();
        Batch {
            inputs: flatten(&items, device),
            targets: Tensor::from_data(TensorData::new(labels.clone(), [labels.len()]), device),
        }
    }
}

/// Trains a linear classifier on `train` and returns its accuracy on `queries`.
fn fit_and_score<D: Dataset<ImageDatasetItem> + 'static>(
    train: D,
    queries: &[ImageDatasetItem],
    ways: usize,
    seed: u64,
) -> Result<f64> {
    let device = Device::flex();
    let train_device = device.clone().autodiff();
    let inputs = flatten(&queries[..1], &device).dims()[1];
    let mut model: Linear = LinearConfig::new(inputs, ways).init(&train_device);
    let mut optim = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&train_device);
    let loader = DataLoaderBuilder::new(Flatten)
        .batch_size(16)
        .shuffle(seed)
        .set_device(train_device.clone())
        .build(train);
    for _ in 0..60 {
        for batch in loader.iter() {
            let batch = batch?;
            let loss = loss_fn.forward(model.forward(batch.inputs), batch.targets);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(5e-3, model, grads);
        }
    }
    let model = model.valid();
    let logits = model.forward(flatten(queries, &device));
    let predicted = logits.argmax(1).reshape([queries.len()]);
    let predicted: Vec<i64> = predicted.into_data().convert::<i64>().try_to_vec()?;
    let right = predicted
        .iter()
        .zip(queries)
        .filter(|(p, q)| q.label() == Some(**p as usize))
        .count();
    Ok(right as f64 / queries.len() as f64)
}

/// The frozen backbone of an episode: the examples' CNN trained for a few epochs on `items`
/// (the classes outside the episode, labelled 0..classes).
fn train_backbone(
    items: Vec<ImageDatasetItem>,
    classes: usize,
    side: u32,
    seed: u64,
) -> Result<common::Cnn> {
    let device = Device::flex().autodiff();
    let batcher = common::ImageBatcher { side };
    let mut model = common::Cnn::new(classes, &device);
    let mut optim = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let loader = DataLoaderBuilder::new(batcher)
        .batch_size(16)
        .shuffle(seed)
        .set_device(device.clone())
        .build(InMemDataset::new(items));
    for _ in 0..5 {
        for batch in loader.iter() {
            let batch = batch?;
            let loss = loss_fn.forward(model.forward(batch.images), batch.targets);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(2e-3, model, grads);
        }
    }
    Ok(model.valid())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let all = synthetic::CLASS_NAMES.len();
    anyhow::ensure!(
        (2..=all).contains(&args.ways),
        "--ways must be between 2 and {all}"
    );
    anyhow::ensure!(args.shots >= 1, "--shots must be at least 1");
    let per_class = args.shots + args.queries;
    let pool = synthetic::balanced_dataset(per_class, all, args.image_size, args.seed)?;

    anyhow::ensure!(
        args.image_size >= 4 && args.image_size % 4 == 0,
        "--image-size must be a multiple of 4 (the backbone pools twice)"
    );
    let (factory, generator_config) = common::engine_factory(&args.engine)?;
    let plan = factory.plan().clone();
    let cache_dir = tempfile::tempdir()?;
    let cache = Arc::new(Cache::open_dir(cache_dir.path(), 16 << 20)?);
    let generator = Generator::start(Arc::new(factory), Arc::clone(&cache), generator_config)?;
    let levels = if args.ada {
        NoiseLevel::ADA_SWEEP.to_vec()
    } else {
        vec![NoiseLevel::GENIE_DEFAULT]
    };

    println!(
        "{}-way {}-shot, {} queries per class, {} episodes, {} hard negatives per class",
        args.ways,
        args.shots,
        args.queries,
        args.episodes,
        genie::policy::few_shot_quota(args.shots)
    );
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let (mut plain, mut augmented) = (0.0, 0.0);
    let mut chosen: std::collections::BTreeMap<NoiseLevel, usize> = Default::default();
    for episode in 0..args.episodes {
        // Draw the episode's classes; relabel them 0..ways.
        let mut classes: Vec<usize> = (0..all).collect();
        for i in (1..all).rev() {
            classes.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        classes.truncate(args.ways);
        let mut support = Vec::new();
        let mut queries = Vec::new();
        for (local, &class) in classes.iter().enumerate() {
            let images = pool.iter().filter(|s| s.label == class);
            for (n, s) in images.enumerate() {
                let item = image_item(&s.image, local, format!("synthetic:{class}/{n}"));
                if n < args.shots {
                    support.push(item);
                } else {
                    queries.push(item);
                }
            }
        }
        let names: Vec<String> = classes
            .iter()
            .map(|&c| synthetic::CLASS_NAMES[c].to_string())
            .collect();
        let stats = ClassStats::from_counts(vec![args.shots; args.ways]);
        let targets: Vec<usize> = (0..args.ways).collect();
        let policy = Policy::with_targets(
            stats,
            &targets,
            PolicyConfig {
                seed: args.seed + episode as u64,
                ..PolicyConfig::few_shot(args.shots)
            },
        )?;
        let keys = KeySpace::new(plan.fingerprint.clone(), plan.resolution, names);
        let support_set = InMemDataset::new(support.clone());
        let mut offline = OfflinePlan::new(&support_set, &policy, &keys, &levels, None)?;
        offline.request_missing(&support_set, &keys, &generator)?;
        for key in offline.negatives.iter().flat_map(|n| &n.keys) {
            match generator.wait(key, std::time::Duration::from_secs(3600))? {
                WaitOutcome::Ready | WaitOutcome::NotPending => {}
                other => anyhow::bail!("hard negative {key}: {other:?}"),
            }
        }
        if args.ada {
            // The backbone never sees the episode's classes.
            let base: Vec<usize> = (0..all).filter(|c| !classes.contains(c)).collect();
            let base_items: Vec<ImageDatasetItem> = pool
                .iter()
                .filter_map(|s| {
                    let label = base.iter().position(|&c| c == s.label)?;
                    Some(image_item(&s.image, label, "synthetic:base"))
                })
                .collect();
            let backbone =
                train_backbone(base_items, base.len().max(1), args.image_size, args.seed)?;
            let extractor = common::Embeddings {
                batcher: common::ImageBatcher {
                    side: args.image_size,
                },
                device: Device::flex(),
            };
            let outcome = offline.choose_levels(&support_set, &cache, &backbone, &extractor)?;
            for n in &offline.negatives {
                *chosen.entry(n.level).or_insert(0) += 1;
            }
            println!(
                "  GeNIe-Ada with the frozen backbone: {} pairs scored, {} unscorable, {} incomplete",
                outcome.chosen, outcome.unscorable, outcome.incomplete
            );
        }
        let with_negatives = GenieDataset::new(support_set, Arc::clone(&cache), &offline)?;
        let generated = with_negatives.negatives().len();
        let a = fit_and_score(InMemDataset::new(support), &queries, args.ways, args.seed)?;
        let b = fit_and_score(with_negatives, &queries, args.ways, args.seed)?;
        println!(
            "episode {episode}: {:<40} support only {:>5.1}%   + {generated} hard negatives {:>5.1}%",
            classes
                .iter()
                .map(|&c| synthetic::CLASS_NAMES[c])
                .collect::<Vec<_>>()
                .join(", "),
            100.0 * a,
            100.0 * b
        );
        plain += a;
        augmented += b;
    }
    let n = args.episodes.max(1) as f64;
    println!(
        "mean accuracy: support only {:.1}%, with GeNIe hard negatives {:.1}%",
        100.0 * plain / n,
        100.0 * augmented / n
    );
    if args.ada {
        println!("chosen r* (pairs per level, each pair once)");
        for (level, n) in &chosen {
            println!("  r = {level}: {n:>4}");
        }
    }
    generator.shutdown(Shutdown::Cancel);
    Ok(())
}
