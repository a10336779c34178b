//! `genie eval long-tail`: the paper's long-tail protocol (Table 3) on an ImageNet-LT-style
//! folder: a ResNet trained or fine-tuned without and with GeNIe / GeNIe-Ada hard negatives for
//! the Few classes, accuracy per group on a balanced test folder.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use burn::data::dataset::{Dataset, InMemDataset};
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_dataset::vision::ImageDatasetItem;
use clap::Args;
use genie::backbone::{
    image_tensor, load_resnet, ResNetClassifier, ResNetConfig, ResNetDepth, ResNetEmbeddings,
};
use genie::cache::Cache;
use genie::diffusion;
use genie::eval::{long_tail_csv, long_tail_markdown, GroupAccuracy};
use genie::factory::SdEngineFactory;
use genie::generator::{Generator, GeneratorConfig, HardNegativeGenerator, Shutdown};
use genie::loader::{
    folder_items, predictions_and_targets, GenieDataset, GenieItem, KeySpace, OfflinePlan,
    TrainDevice, TrainDeviceSpec,
};
use genie::policy::{ClassStats, Group, Policy, PolicyConfig};
use genie::warm::{ImageFolder, PlanEntry};
use genie::{image_io, NoiseLevel};
use rand_core::{RngCore, SeedableRng};

use super::{engine_options, key_space, model_source, read_class_names};

#[derive(Args)]
pub(crate) struct LongTailArgs {
    /// The dataset: DIR/train/<class>/… (long-tailed) and DIR/test/<class>/… (balanced), the
    /// same class folders in both.
    #[arg(long, value_name = "DIR")]
    data: std::path::PathBuf,
    /// A class-name file for the prompts (`n01440764 tench` lines, or CSV `id,name`).
    #[arg(long, value_name = "FILE")]
    class_names: Option<std::path::PathBuf>,
    #[arg(long)]
    superclass: Option<String>,
    /// The classifier: resnet18, resnet34 or resnet50 with a new linear head.
    #[arg(long, default_value = "resnet18")]
    backbone: ResNetDepth,
    /// Pretrained weights to fine-tune (.pth/.pt or .safetensors); without them the network
    /// trains from scratch.
    #[arg(long, value_name = "FILE")]
    backbone_weights: Option<std::path::PathBuf>,
    /// The backbone's first-stage width (64 in torchvision; smaller for test networks).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    backbone_width: u32,
    /// The side images are resized to for the classifier.
    #[arg(long, default_value_t = 224, value_parser = clap::value_parser!(u32).range(8..=1024))]
    input_size: u32,
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    batch_size: u64,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Where the classifier trains: cpu, vulkan[:N], wgpu[:N] (genie built with burn-vulkan /
    /// burn-wgpu) or auto (the first GPU found, else cpu).
    #[arg(long, env = "BURN_DEVICE", default_value = "cpu")]
    train_device: TrainDeviceSpec,
    /// Hard negatives per Few class (the paper: 50).
    #[arg(long, default_value_t = 50)]
    per_class: usize,
    /// Methods (default: all): baseline, genie (r = 0.8), genie-ada (r* per pair, chosen with
    /// the baseline's model; implies baseline).
    #[arg(long, value_delimiter = ',')]
    methods: Vec<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write long_tail.md and long_tail.csv here.
    #[arg(long, value_name = "DIR")]
    out: Option<std::path::PathBuf>,
    #[command(flatten)]
    hard_negatives: super::eval::HardNegativeArgs,
}

/// The runs the table compares, in the order they train.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Run {
    Baseline,
    Genie,
    GenieAda,
}

impl Run {
    fn name(self) -> &'static str {
        match self {
            Run::Baseline => "baseline",
            Run::Genie => "GeNIe (r = 0.8)",
            Run::GenieAda => "GeNIe-Ada",
        }
    }
}

fn runs(slugs: &[String]) -> Result<Vec<Run>> {
    let mut runs: Vec<Run> = if slugs.is_empty() {
        vec![Run::Baseline, Run::Genie, Run::GenieAda]
    } else {
        slugs
            .iter()
            .map(|s| match s.as_str() {
                "baseline" | "none" => Ok(Run::Baseline),
                "genie" => Ok(Run::Genie),
                "genie-ada" => Ok(Run::GenieAda),
                other => bail!("unknown method {other:?} (known: baseline, genie, genie-ada)"),
            })
            .collect::<Result<_>>()?
    };
    // GeNIe-Ada's r* is chosen with the baseline's model.
    if runs.contains(&Run::GenieAda) && !runs.contains(&Run::Baseline) {
        runs.push(Run::Baseline);
    }
    runs.sort();
    runs.dedup();
    Ok(runs)
}

pub(crate) fn long_tail(args: LongTailArgs) -> Result<()> {
    let hn = &args.hard_negatives;
    let runs = runs(&args.methods)?;
    let train_device = TrainDevice::open_spec(args.train_device)?;
    println!("training device: {train_device}");
    let device = train_device.device().clone();
    let scan = |split: &str| -> Result<ImageFolder> {
        let folder = ImageFolder::scan(&args.data.join(split))?;
        for w in &folder.warnings {
            eprintln!("warning: {split}/: {w}");
        }
        Ok(folder)
    };
    let (train, test) = (scan("train")?, scan("test")?);
    if train.classes.len() < 2 {
        bail!(
            "{} needs at least two class folders",
            args.data.join("train").display()
        );
    }
    if test.classes != train.classes {
        bail!(
            "{}/test has other class folders than train/: {:?} vs {:?}",
            args.data.display(),
            test.classes,
            train.classes
        );
    }
    let classes = train.classes.len();
    let names = read_class_names(args.class_names.as_deref())?;
    let infos = genie::classes::classes_for(&train.classes, names.as_ref())?;
    let train_items = folder_items(&train, args.input_size)?;
    let test_items = folder_items(&test, args.input_size)?;
    let stats = ClassStats::from_labels(train_items.iter().filter_map(GenieItem::label), classes)?;
    let mut policy_config = PolicyConfig::long_tail();
    policy_config.per_target = args.per_class;
    policy_config.seed = args.seed;
    let groups: Vec<Group> = (0..classes)
        .map(|c| stats.group(c, &policy_config.thresholds))
        .collect();
    println!(
        "{} classes, {} training images ({} … {} per class), {} test images",
        classes,
        train_items.len(),
        stats.counts().iter().max().unwrap_or(&0),
        stats.counts().iter().min().unwrap_or(&0),
        test_items.len()
    );
    for g in Group::ALL {
        let members: Vec<&str> = (0..classes)
            .filter(|&c| groups[c] == g)
            .map(|c| train.classes[c].as_str())
            .collect();
        println!("  {g:<6} {} classes: {}", members.len(), members.join(", "));
    }

    let engine = diffusion::plan_engine(&model_source(&hn.model)?, &engine_options(&hn.model)?)?;
    let keys = key_space(&engine, infos, args.superclass.as_ref());
    let cache = Arc::new(Cache::open(&hn.cache, 64 << 20)?);
    // One copy of the training images, shared by the plan and every run (each run's
    // `GenieDataset` wraps it; cloning the items per run would hold the dataset several times).
    let train_set = Arc::new(InMemDataset::new(train_items));
    let levels: &[NoiseLevel] = if runs.contains(&Run::GenieAda) {
        &NoiseLevel::ADA_SWEEP
    } else {
        &[NoiseLevel::GENIE_DEFAULT]
    };
    let generative = runs.iter().any(|&r| r != Run::Baseline);
    let plan = if generative {
        let policy = Policy::long_tail(stats.clone(), policy_config)?;
        OfflinePlan::new(&train_set, &policy, &keys, levels, None)?
    } else {
        OfflinePlan::default()
    };
    let mut missing = Vec::new();
    for n in &plan.negatives {
        for (&level, &key) in plan.levels.iter().zip(&n.keys) {
            if !cache.contains(&key)? {
                missing.push((n, level, key));
            }
        }
    }
    println!(
        "{} hard negatives planned for the Few classes ({} images at {} level(s)), {} not in \
         the cache",
        plan.negatives.len(),
        plan.negatives.len() * plan.levels.len(),
        plan.levels.len(),
        missing.len()
    );
    if let Some(file) = &hn.plan_out {
        let mut entries = Vec::with_capacity(missing.len());
        for (n, r, key) in &missing {
            let (path, class) = &train.images[n.source_index];
            entries.push(PlanEntry {
                key: *key,
                source: path.clone(),
                source_class: train.classes[*class].clone(),
                target: train.classes[n.target].clone(),
                prompt: keys.prompt(n.target),
                r: *r,
                seed: n.seed,
                variant: n.variant,
                source_hash: n.source_hash,
            });
        }
        return super::eval::report_plan(file, &mut entries, &hn.cache, &hn.model);
    }
    if !missing.is_empty() {
        if !hn.generate {
            let (n, r, _) = missing[0];
            bail!(
                "{} hard negatives are not in the cache {} (the first: {} towards {:?} at r = \
                 {r}): pass --generate to make them here, or --plan-out FILE and run the plan \
                 with `genie warm run`",
                missing.len(),
                hn.cache,
                train.images[n.source_index].0.display(),
                keys.class_label(n.target)
            );
        }
        generate(&args, &plan, &train_set, &keys, &cache, missing.len())?;
    }

    let mut rows = Vec::new();
    let mut baseline_model: Option<ResNetClassifier> = None;
    for run in runs {
        let started = Instant::now();
        let model = match run {
            Run::Baseline => train_model(&args, &train_set, classes, &device)?,
            Run::Genie => {
                let data = GenieDataset::new(Arc::clone(&train_set), Arc::clone(&cache), &plan)?;
                println!(
                    "{}: {} hard negatives added",
                    run.name(),
                    data.negatives().len()
                );
                train_model(&args, &data, classes, &device)?
            }
            Run::GenieAda => {
                let chooser = baseline_model
                    .as_ref()
                    .context("GeNIe-Ada needs the baseline's model")?;
                let mut ada = plan.clone();
                let outcome = ada.choose_levels(
                    &train_set,
                    &cache,
                    chooser,
                    &ResNetEmbeddings {
                        side: args.input_size,
                        device: device.clone(),
                    },
                )?;
                println!(
                    "{}: r* chosen for {} pairs ({} unscorable, {} incomplete keep r = 0.8); r* \
                     histogram {}",
                    run.name(),
                    outcome.chosen,
                    outcome.unscorable,
                    outcome.incomplete,
                    histogram(&ada)
                );
                let data = GenieDataset::new(Arc::clone(&train_set), Arc::clone(&cache), &ada)?;
                train_model(&args, &data, classes, &device)?
            }
        };
        let model = model.valid();
        let per_class = evaluate(&model, &test_items, args.input_size, &device, classes)?;
        let row = GroupAccuracy::of(run.name(), &per_class, &groups);
        println!(
            "{}: trained and tested in {:.0} s; overall {:.2} %",
            run.name(),
            started.elapsed().as_secs_f64(),
            row.overall
        );
        rows.push(row);
        if run == Run::Baseline {
            baseline_model = Some(model);
        }
    }
    let md = long_tail_markdown(&rows);
    let csv = long_tail_csv(&rows);
    println!("\n{md}\n{csv}");
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create --out {}", dir.display()))?;
        image_io::write_atomic(&dir.join("long_tail.md"), md.as_bytes())?;
        image_io::write_atomic(&dir.join("long_tail.csv"), csv.as_bytes())?;
        println!("wrote {}", dir.display());
    }
    Ok(())
}

/// Makes the plan's missing levels before training (the paper's protocol: the hard negatives
/// exist before training starts), all queued before the workers take any, so the pixels do not
/// depend on timing.
fn generate(
    args: &LongTailArgs,
    plan: &OfflinePlan,
    train: &Arc<InMemDataset<ImageDatasetItem>>,
    keys: &KeySpace,
    cache: &Arc<Cache>,
    missing: usize,
) -> Result<()> {
    let hn = &args.hard_negatives;
    let factory = SdEngineFactory::new(model_source(&hn.model)?, engine_options(&hn.model)?)?;
    let generator = Generator::start(Arc::new(factory), Arc::clone(cache), {
        let mut options = GeneratorConfig::default();
        options.devices = hn.model.device.clone();
        options.queue_capacity = missing.max(1);
        options
    })?;
    generator.hold();
    let requested = plan.request_missing(train, keys, &generator);
    generator.release();
    requested?;
    let wanted: Vec<_> = plan.negatives.iter().flat_map(|n| n.keys.clone()).collect();
    let started = Instant::now();
    let mut last_line = Instant::now();
    let week = Duration::from_secs(7 * 24 * 3600);
    let failed = generator.wait_all(&wanted, week, &mut |done, total| {
        if done == total || last_line.elapsed().as_secs() >= 10 {
            let seconds = started.elapsed().as_secs_f64();
            println!("generating: {done}/{total} ({seconds:.0} s)");
            last_line = Instant::now();
        }
    })?;
    generator.shutdown(Shutdown::Drain);
    if let Some((key, outcome)) = failed.first() {
        bail!(
            "{} hard negatives could not be generated; the first: {key}: {outcome}",
            failed.len()
        );
    }
    Ok(())
}

/// Trains a fresh classifier (the pretrained backbone when given, and a new head) on `data`:
/// every run starts from the same weights and shuffles with the same seed, so runs differ in
/// their hard negatives only.
fn train_model(
    args: &LongTailArgs,
    data: &dyn Dataset<ImageDatasetItem>,
    classes: usize,
    on: &Device,
) -> Result<ResNetClassifier> {
    let device = on.clone().autodiff();
    device.seed(args.seed);
    let config = ResNetConfig {
        depth: args.backbone,
        width: args.backbone_width as usize,
    };
    let backbone = match &args.backbone_weights {
        Some(path) => load_resnet(path, config, &device)?,
        None => config.init(&device),
    };
    let mut model = ResNetClassifier::new(backbone, config.feature_dim(), classes, &device);
    let mut optim = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    for epoch in 1..=args.epochs {
        let mut order: Vec<usize> = (0..data.len()).collect();
        // Fisher–Yates with the run's own stream.
        for i in (1..order.len()).rev() {
            order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        let (mut loss_sum, mut batches) = (0.0, 0);
        for chunk in order.chunks(args.batch_size as usize) {
            let mut images = Vec::with_capacity(chunk.len());
            let mut labels = Vec::with_capacity(chunk.len());
            for &i in chunk {
                let item = data
                    .get(i)
                    .map_err(|e| anyhow::anyhow!("training item {i}: {e}"))?;
                images.push(item.rgb().with_context(|| format!("training item {i}"))?);
                labels.push(item.label().unwrap_or(0) as i64);
            }
            let targets =
                Tensor::<1, Int>::from_data(TensorData::new(labels, [chunk.len()]), &device);
            let logits = model.forward(image_tensor(&images, args.input_size, &device));
            let loss = loss_fn.forward(logits, targets);
            loss_sum += loss.clone().into_scalar::<f32>() as f64;
            batches += 1;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(args.lr, model, grads);
        }
        println!(
            "  epoch {epoch:>3}: loss {:.3} over {} items",
            loss_sum / batches.max(1) as f64,
            data.len()
        );
    }
    Ok(model)
}

/// `(right, total)` per class of `model` on `test`.
fn evaluate(
    model: &ResNetClassifier,
    test: &[ImageDatasetItem],
    side: u32,
    device: &Device,
    classes: usize,
) -> Result<Vec<(usize, usize)>> {
    let mut per_class = vec![(0usize, 0usize); classes];
    for chunk in test.chunks(64) {
        let images = chunk
            .iter()
            .map(|i| i.rgb())
            .collect::<Result<Vec<_>, _>>()?;
        let labels: Vec<i64> = chunk
            .iter()
            .map(|i| i.label().unwrap_or(0) as i64)
            .collect();
        let targets = Tensor::<1, Int>::from_data(TensorData::new(labels, [chunk.len()]), device);
        let logits = model.forward(image_tensor(&images, side, device));
        let (predicted, truth) = predictions_and_targets(&logits, &targets)?;
        for (p, t) in predicted.into_iter().zip(truth) {
            per_class[t].1 += 1;
            per_class[t].0 += usize::from(p == t);
        }
    }
    Ok(per_class)
}

/// `0.5: n, 0.6: n, …` of the plan's levels.
fn histogram(plan: &OfflinePlan) -> String {
    plan.levels
        .iter()
        .map(|&l| {
            let n = plan.negatives.iter().filter(|n| n.level == l).count();
            format!("{l}: {n}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}
