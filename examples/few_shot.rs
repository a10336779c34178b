//! Few-shot episodes with GeNIe hard negatives: the paper's offline protocol with `GenieDataset`.
//!
//! Each N-way K-shot episode draws N classes, K support and Q query images per class. Every
//! class of the episode is a target; its hard negatives come from the support images of the
//! *other* classes of the episode, 4·K per class (the paper's quota: 1-shot → 4, 5-shot → 20),
//! generated at r = 0.8. A linear classifier is trained with burn on the support set alone and on
//! support + hard negatives (a `GenieDataset`), and both are scored on the queries.
//!
//! ```text
//! cargo run --release --example few_shot                    # drawn shapes, tiny engine
//! cargo run --release --example few_shot -- --shots 5 --episodes 10 --weights SD15_DIR
//! ```
//!
//! With the default tiny random engine the hard negatives are noise: the run shows the protocol,
//! not the method's gains.

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
use genie::generator::{Generator, GeneratorConfig, Shutdown, WaitOutcome};
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
    /// Diffusers-layout Stable Diffusion folder (default: the tiny random model).
    #[arg(long)]
    weights: Option<std::path::PathBuf>,
    /// Diffusion steps N.
    #[arg(long, default_value_t = 10)]
    steps: usize,
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

    let factory = common::engine_factory(args.weights.as_deref(), args.steps)?;
    let plan = factory.plan().clone();
    let cache_dir = tempfile::tempdir()?;
    let cache = Arc::new(Cache::open_dir(cache_dir.path(), 16 << 20)?);
    let generator = Generator::start(
        Arc::new(factory),
        Arc::clone(&cache),
        GeneratorConfig::default(),
    )?;

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
                let item = image_item(&s.image, local, format!("{class}/{n}"));
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
        let offline = OfflinePlan::new(
            &support_set,
            &policy,
            &keys,
            NoiseLevel::GENIE_DEFAULT,
            None,
        )?;
        offline.request_missing(&support_set, &keys, &generator)?;
        for n in &offline.negatives {
            match generator.wait(&n.key, std::time::Duration::from_secs(3600))? {
                WaitOutcome::Ready | WaitOutcome::NotPending => {}
                other => anyhow::bail!("hard negative {}: {other:?}", n.key),
            }
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
    generator.shutdown(Shutdown::Cancel);
    Ok(())
}
