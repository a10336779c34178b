//! Fine-tuning a pretrained backbone inside burn's own `SupervisedTraining`, with GeNIe hard
//! negatives generated while it trains and the model being trained as GeNIe-Ada's classifier.
//!
//! 1. A ResNet-18 (narrow, for the CPU) is pre-trained on the Many classes of a long-tailed set
//!    of drawn shapes and written as a PyTorch-named safetensors file
//!    (`genie::backbone::save_resnet`) — the stand-in for your torchvision or self-supervised
//!    checkpoint.
//! 2. That file is loaded (`load_resnet`, as any torchvision checkpoint would be), given a new
//!    head for every class, and fine-tuned by `SupervisedTraining` on all classes: the train
//!    loader's batcher is `GenieBatcher` around `ResNetBatcher`, `ConfusionMetric` feeds the
//!    confusion matrix the sources come from, and `Observed` shows each step to GeNIe-Ada.
//! 3. Accuracy per group on a balanced test set, and what the augmenter did.
//!
//! ```text
//! cargo run --release --example finetune                 # the shapes model generates
//! cargo run --release --example finetune -- --model tiny  # fast, its images are noise
//! cargo run --release --example finetune -- --cache hn    # twice: the second run mixes more
//! ```
//!
//! Training a narrow ResNet on 32-px shapes is fast and diffusion on a CPU is slow, so only the
//! pairs whose images arrive in time are mixed: more epochs, a kept `--cache` or a GPU mix more.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::InMemDataset;
use burn::optim::AdamConfig;
use burn::tensor::Device;
use burn::train::{Learner, SupervisedTraining};
use clap::Parser;
use genie::backbone::{
    image_tensor, load_resnet, save_resnet, ResNetBatcher, ResNetClassifier, ResNetConfig,
    ResNetDepth, ResNetEmbeddings,
};
use genie::classes::ClassInfo;
use genie::generator::Generator;
use genie::loader::ImageItem;
use genie::loader::{
    image_item, predictions_and_targets, Augmenter, ConfusionMetric, GenieBatcher, GenieItem,
    LiveConfig, LiveModel, Observed,
};
use genie::policy::{ClassStats, Group, Policy, PolicyConfig, SharedConfusion};
use genie::synthetic;

mod common;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    engine: common::EngineArgs,
    /// Epochs of pre-training on the Many classes.
    #[arg(long, default_value_t = 3)]
    pretrain_epochs: usize,
    /// Epochs of fine-tuning on every class, with hard negatives (on two CPU cores an epoch
    /// takes about a second, and the generator makes about one image a second meanwhile).
    #[arg(long, default_value_t = 40)]
    epochs: usize,
    /// Training images of the largest class (the smallest has 3).
    #[arg(long, default_value_t = 150)]
    max_per_class: usize,
    /// Hard negatives per Few class.
    #[arg(long, default_value_t = 20)]
    per_class: usize,
    /// The ResNet's first-stage width (64 in torchvision).
    #[arg(long, default_value_t = 8)]
    width: usize,
    /// The side images are resized to for the ResNet.
    #[arg(long, default_value_t = 32)]
    side: u32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where the pre-trained backbone is written (default: a temporary folder).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The hard-negative cache (default: `$GENIE_HOME/cache`, kept across runs); a second run
    /// with the same one mixes what the first made from its first batches on.
    #[arg(long, conflicts_with = "fresh_cache")]
    cache: Option<PathBuf>,
    /// Use a new temporary cache, removed at exit (every image is generated again).
    #[arg(long)]
    fresh_cache: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let classes = synthetic::CLASS_NAMES.len();
    let counts = synthetic::long_tail_counts(classes, args.max_per_class, 3);
    let to_items = |items: Vec<synthetic::SyntheticItem>, split: &str| -> Vec<ImageItem> {
        items
            .into_iter()
            .enumerate()
            .map(|(n, s)| image_item(&s.image, s.label, format!("synthetic:{split}/{n}")))
            .collect()
    };
    let train = to_items(
        synthetic::long_tail_dataset(&counts, 64, args.seed)?,
        "train",
    );
    let test = to_items(
        synthetic::balanced_dataset(20, classes, 64, args.seed + 1)?,
        "test",
    );
    let stats = ClassStats::from_labels(train.iter().filter_map(GenieItem::label), classes)?;
    let mut policy_config = PolicyConfig::long_tail();
    policy_config.per_target = args.per_class;
    policy_config.seed = args.seed;
    let groups: Vec<Group> = (0..classes)
        .map(|c| stats.group(c, &policy_config.thresholds))
        .collect();
    let device = Device::flex();
    let config = ResNetConfig {
        depth: ResNetDepth::R18,
        width: args.width,
    };

    // 1. Pre-train on the Many classes and write the backbone as a checkpoint file.
    let many: Vec<ImageItem> = train
        .iter()
        .filter(|i| i.label().is_some_and(|c| groups[c] == Group::Many))
        .cloned()
        .collect();
    if many.is_empty() {
        anyhow::bail!(
            "no Many class (over {} images) to pre-train on: raise --max-per-class",
            policy_config.thresholds.many_above
        );
    }
    let temp = tempfile::tempdir()?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&out)?;
    let checkpoint = out.join("pretrained-resnet18.safetensors");
    let pretrain_device = device.clone().autodiff();
    pretrain_device.seed(args.seed);
    let fresh = ResNetClassifier::new(
        config.init(&pretrain_device),
        config.feature_dim(),
        classes,
        &pretrain_device,
    );
    let batcher = ResNetBatcher { side: args.side };
    let loader = |items: Vec<ImageItem>, shuffle: bool| {
        let builder = DataLoaderBuilder::new(batcher).batch_size(32);
        let builder = if shuffle {
            builder.shuffle(args.seed)
        } else {
            builder
        };
        builder
            .set_device(pretrain_device.clone())
            .build(InMemDataset::new(items))
    };
    let logs = tempfile::tempdir()?;
    println!(
        "pre-training on the Many classes ({} images, {} epochs)",
        many.len(),
        args.pretrain_epochs
    );
    let pretrained = SupervisedTraining::new(
        logs.path().join("pretrain"),
        loader(many, true),
        loader(test.clone(), false),
    )
    .num_epochs(args.pretrain_epochs)
    .launch(Learner::new(fresh, AdamConfig::new().init(), 1e-3))
    .model;
    save_resnet(&pretrained.backbone, &checkpoint)?;
    println!("wrote {}", checkpoint.display());

    // 2. Load it as any PyTorch-named checkpoint and fine-tune with GeNIe online.
    let train_device = device.clone().autodiff();
    train_device.seed(args.seed);
    let backbone = load_resnet(&checkpoint, config, &train_device)?;
    let model = ResNetClassifier::new(backbone, config.feature_dim(), classes, &train_device);
    let (factory, generator_config) = common::engine_factory(&args.engine)?;
    let (cache, _dir, _cache_guard) = common::open_cache(args.cache.as_deref(), args.fresh_cache)?;
    let generator = Arc::new(Generator::start(
        Arc::new(factory),
        Arc::clone(&cache),
        generator_config,
    )?);
    let confusion = SharedConfusion::new(classes);
    let names = synthetic::CLASS_NAMES.map(ClassInfo::named).to_vec();
    let policy = Policy::long_tail(stats, policy_config)?;
    let augmenter = Augmenter::builder(policy, names, cache)
        .generator(Arc::clone(&generator))
        .confusion(confusion.clone())
        .build()?;
    let live = Arc::new(LiveModel::start(
        Arc::clone(&augmenter),
        ResNetEmbeddings {
            side: args.side,
            device: device.clone(),
        },
        LiveConfig::default(),
    )?);
    let train_loader = DataLoaderBuilder::new(GenieBatcher::new(batcher, Arc::clone(&augmenter)))
        .batch_size(32)
        .shuffle(args.seed)
        .set_device(train_device.clone())
        .build(InMemDataset::new(train));
    let valid_loader = DataLoaderBuilder::new(batcher)
        .batch_size(32)
        .set_device(train_device)
        .build(InMemDataset::new(test.clone()));
    println!(
        "fine-tuning on every class ({} epochs) with hard negatives for the Few classes",
        args.epochs
    );
    let tuned = SupervisedTraining::new(logs.path().join("finetune"), train_loader, valid_loader)
        .metric_train(ConfusionMetric::new(confusion))
        .num_epochs(args.epochs)
        .launch(Learner::new(
            Observed::new(model, &live),
            AdamConfig::new().init(),
            1e-3,
        ))
        .model
        .into_inner();
    // The trained model is out of `Observed`, so this is the last handle: stop the selector.
    let selector = match Arc::into_inner(live) {
        Some(live) => live.stop(),
        None => anyhow::bail!("the live model is still shared after training"),
    };

    // 3. What it learnt, and what GeNIe did.
    let mut per_class = vec![(0usize, 0usize); classes];
    for chunk in test.chunks(64) {
        let images: Vec<_> = chunk.iter().map(|i| i.rgb()).collect::<Result<_, _>>()?;
        let labels: Vec<i64> = chunk
            .iter()
            .map(|i| i.label().unwrap_or(0) as i64)
            .collect();
        let targets = burn::tensor::Tensor::<1, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(labels, [chunk.len()]),
            &device,
        );
        let logits = tuned.forward(image_tensor(&images, args.side, &device));
        let (predicted, truth) = predictions_and_targets(&logits, &targets)?;
        for (p, t) in predicted.into_iter().zip(truth) {
            per_class[t].1 += 1;
            per_class[t].0 += usize::from(p == t);
        }
    }
    println!("\naccuracy by group (balanced test set)");
    for g in Group::ALL {
        let (right, total) = (0..classes)
            .filter(|&c| groups[c] == g)
            .fold((0, 0), |(r, t), c| (r + per_class[c].0, t + per_class[c].1));
        if total > 0 {
            println!("  {g:<7} {:5.1} %", 100.0 * right as f64 / total as f64);
        }
    }
    let s = augmenter.stats();
    println!(
        "hard negatives: {} mixed into batches, {} pairs, {} ready, {} images generated while \
         training; {} batches took their sources from a confusion snapshot; GeNIe-Ada: {} \
         choices, {} scorings in {} snapshots",
        s.mixed,
        s.pairs,
        s.ready,
        generator.stats().done,
        s.confusion_snapshots,
        s.ada_choices,
        selector.scored,
        selector.snapshots
    );
    Ok(())
}
