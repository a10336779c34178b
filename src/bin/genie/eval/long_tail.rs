//! `genie eval long-tail`: the paper's long-tail protocol (Table 3) on an ImageNet-LT-style
//! folder: a ResNet trained or fine-tuned without and with GeNIe / GeNIe-Ada hard negatives for
//! the Few classes, accuracy per group on a balanced test folder.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use burn::data::dataset::{Dataset, InMemDataset};
use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::Args;
use genie::backbone::{
    confusion_of, image_tensor, load_resnet, ClassifierTraining, ResNetClassifier, ResNetConfig,
    ResNetDepth, ResNetEmbeddings,
};
use genie::cache::Cache;
use genie::diffusion;
use genie::eval::{long_tail_csv, long_tail_markdown, GroupAccuracy};
use genie::factory::SdEngineFactory;
use genie::generator::{Generator, GeneratorConfig, HardNegativeGenerator, Shutdown};
use genie::loader::ImageItem;
use genie::loader::{folder_items, GenieDataset, GenieItem, KeySpace, OfflinePlan, TrainDevice};
use genie::policy::{ClassStats, ConfusionMatrix, Group, Policy, PolicyConfig, SourceStrategy};
use genie::warm::{ImageFolder, PlanEntry};
use genie::{image_io, NoiseLevel};
use rand_core::{RngCore, SeedableRng};

use crate::classes::ClassNaming;
use crate::model_args::{engine_options, model_source};

#[derive(Args)]
pub(crate) struct LongTailArgs {
    /// The dataset: DIR/train/<class>/… (long-tailed) and DIR/test/<class>/… (balanced), the
    /// same class folders in both.
    #[arg(long, value_name = "DIR")]
    data: std::path::PathBuf,
    #[command(flatten)]
    naming: ClassNaming,
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
    #[command(flatten)]
    device: super::TrainDeviceArgs,
    /// Hard negatives per Few class (the paper: 50); the same-class baselines get as many.
    #[arg(long, default_value_t = 50)]
    per_class: usize,
    /// Where each Few class's sources come from: the classes the baseline's model confuses with
    /// it most on the training data (the paper's), or every other class alike.
    #[arg(long, value_enum, default_value = "confusion")]
    sources: Sources,
    /// How many most-confused classes give a Few class its sources (the paper: 4).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    confused_k: u64,
    /// Methods (default: all): baseline, img2img-l (r = 0.3) and img2img-h (r = 0.7) from the
    /// class's own images, txt2img, genie (r = 0.8), genie-ada (r* per pair, chosen with the
    /// baseline's model), genie-ada-live (as --online). Confusion-chosen sources and genie-ada
    /// imply baseline.
    #[arg(long, value_delimiter = ',')]
    methods: Vec<String>,
    /// Also train "GeNIe-Ada (live)": the GeNIe pairs mixed into the batches while training, as
    /// the generator makes them (the engine runs alongside), each pair's r* chosen by the model
    /// being trained. Not reproducible: when an image is ready depends on the generator.
    #[arg(long)]
    online: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write long_tail.md, long_tail.csv and (with confusion-chosen sources) the baseline's
    /// confusion.csv on the training data here.
    #[arg(long, value_name = "DIR")]
    out: Option<std::path::PathBuf>,
    #[command(flatten)]
    hard_negatives: super::HardNegativeArgs,
}

/// Where each Few class's sources come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Sources {
    /// The classes the baseline's model confuses with it most on the training data (the
    /// paper's Sec. 4.2).
    Confusion,
    /// Every other class alike.
    Uniform,
}

/// The runs the table compares, in the order they train (the paper's Table 3 order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Run {
    Baseline,
    Img2ImgLow,
    Img2ImgHigh,
    Txt2Img,
    Genie,
    GenieAda,
    GenieAdaLive,
}

impl Run {
    /// Every run but the live one (`--online`), the default table.
    const ALL: [Run; 6] = [
        Run::Baseline,
        Run::Img2ImgLow,
        Run::Img2ImgHigh,
        Run::Txt2Img,
        Run::Genie,
        Run::GenieAda,
    ];

    fn name(self) -> &'static str {
        match self {
            Run::Baseline => "baseline",
            Run::Img2ImgLow => "Img2Img-L (r = 0.3)",
            Run::Img2ImgHigh => "Img2Img-H (r = 0.7)",
            Run::Txt2Img => "Txt2Img",
            Run::Genie => "GeNIe (r = 0.8)",
            Run::GenieAda => "GeNIe-Ada",
            Run::GenieAdaLive => "GeNIe-Ada (live)",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Run::Baseline => "baseline",
            Run::Img2ImgLow => "img2img-l",
            Run::Img2ImgHigh => "img2img-h",
            Run::Txt2Img => "txt2img",
            Run::Genie => "genie",
            Run::GenieAda => "genie-ada",
            Run::GenieAdaLive => "genie-ada-live",
        }
    }

    /// The level of a same-class baseline (its sources are the target class's own images).
    fn own_class_level(self) -> Option<NoiseLevel> {
        match self {
            Run::Img2ImgLow => NoiseLevel::from_thousandths(300),
            Run::Img2ImgHigh => NoiseLevel::from_thousandths(700),
            Run::Txt2Img => Some(NoiseLevel::TEXT_TO_IMAGE),
            _ => None,
        }
    }
}

fn runs(slugs: &[String], sources: Sources, online: bool) -> Result<Vec<Run>> {
    let known = || Run::ALL.into_iter().chain([Run::GenieAdaLive]);
    let mut runs: Vec<Run> = if slugs.is_empty() {
        Run::ALL.to_vec()
    } else {
        slugs
            .iter()
            .map(|s| {
                known()
                    .find(|r| r.slug() == s || (s == "none" && *r == Run::Baseline))
                    .with_context(|| {
                        let slugs: Vec<&str> = known().map(|r| r.slug()).collect();
                        format!("unknown method {s:?} (known: {})", slugs.join(", "))
                    })
            })
            .collect::<Result<_>>()?
    };
    if online {
        runs.push(Run::GenieAdaLive);
    }
    // GeNIe-Ada's r* is chosen with the baseline's model, and confusion-chosen sources (which
    // also fix the image counts of the same-class baselines) come from it.
    let generative = runs.iter().any(|&r| r != Run::Baseline);
    if runs.contains(&Run::GenieAda) || (generative && sources == Sources::Confusion) {
        runs.push(Run::Baseline);
    }
    runs.sort();
    runs.dedup();
    Ok(runs)
}

pub(crate) fn long_tail(args: LongTailArgs) -> Result<()> {
    let hn = &args.hard_negatives;
    let runs = runs(&args.methods, args.sources, args.online)?;
    let train_device = TrainDevice::open_spec(args.device.train_device)?;
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
    let infos = args.naming.classes(&train.classes)?;
    let train_items = folder_items(&train, args.input_size)?;
    let test_set = InMemDataset::new(folder_items(&test, args.input_size)?);
    let stats = ClassStats::from_labels(train_items.iter().filter_map(GenieItem::label), classes)?;
    let mut policy_config = PolicyConfig::long_tail();
    policy_config.per_target = args.per_class;
    policy_config.seed = args.seed;
    policy_config.sources = match args.sources {
        Sources::Confusion => SourceStrategy::TopConfused {
            k: args.confused_k as usize,
        },
        Sources::Uniform => SourceStrategy::Uniform,
    };
    let groups: Vec<Group> = (0..classes)
        .map(|c| stats.group(c, &policy_config.thresholds))
        .collect();
    println!(
        "{} classes, {} training images ({} … {} per class), {} test images",
        classes,
        train_items.len(),
        stats.counts().iter().max().unwrap_or(&0),
        stats.counts().iter().min().unwrap_or(&0),
        test_set.len()
    );
    for g in Group::ALL {
        let members: Vec<&str> = (0..classes)
            .filter(|&c| groups[c] == g)
            .map(|c| train.classes[c].as_str())
            .collect();
        println!("  {g:<6} {} classes: {}", members.len(), members.join(", "));
    }
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create --out {}", dir.display()))?;
    }

    let engine = diffusion::plan_engine(&model_source(&hn.model)?, &engine_options(&hn.model)?)?;
    let keys = args.naming.key_space(&engine, infos);
    let cache = Arc::new(Cache::open(&hn.cache, 64 << 20)?);
    // One copy of the training images, shared by the plans and every run (each run's
    // `GenieDataset` wraps it; cloning the items per run would hold the dataset several times).
    let train_set = Arc::new(InMemDataset::new(train_items));
    let trainer = Trainer {
        args: &args,
        classes,
        groups: &groups,
        device: &device,
        test: &test_set,
    };
    let mut rows = Vec::new();
    let generative = runs.iter().any(|&r| r != Run::Baseline);
    let mut baseline_model: Option<ResNetClassifier> = None;
    let confusion = if generative && args.sources == Sources::Confusion {
        println!(
            "training the baseline first: each Few class's sources are the {} classes its model \
             confuses with it most on the training data",
            args.confused_k
        );
        let (model, row) = trainer.run(Run::Baseline, train_set.as_ref())?;
        rows.push(row);
        let matrix = evaluate(
            &model,
            train_set.as_ref(),
            args.input_size,
            &device,
            classes,
        )?;
        if let Some(dir) = &args.out {
            match genie::warm::confusion_csv(&matrix, &train.classes) {
                Some(csv) => {
                    image_io::write_atomic(&dir.join("confusion.csv"), csv.as_bytes())?;
                }
                None => eprintln!(
                    "warning: the class names cannot be written as a confusion CSV; \
                     confusion.csv is not written"
                ),
            }
        }
        baseline_model = Some(model);
        Some(matrix)
    } else {
        None
    };

    let ada = runs.contains(&Run::GenieAda) || runs.contains(&Run::GenieAdaLive);
    let genie_levels: &[NoiseLevel] = if ada {
        &NoiseLevel::ADA_SWEEP
    } else {
        &[NoiseLevel::GENIE_DEFAULT]
    };
    let mut plans: Vec<(Run, OfflinePlan)> = Vec::new();
    if generative {
        let policy = Policy::long_tail(stats.clone(), policy_config.clone())?;
        let genie = OfflinePlan::new(&train_set, &policy, &keys, genie_levels, confusion.as_ref())?;
        for &run in &runs {
            if let Some(level) = run.own_class_level() {
                plans.push((run, genie.own_class(&train_set, &keys, level, args.seed)?));
            }
        }
        if runs.contains(&Run::Genie) || ada {
            plans.push((Run::Genie, genie));
        }
    }
    // The live run makes its images while it trains; the offline runs need theirs first.
    let offline = |run: Run| match run {
        Run::Genie => runs.contains(&Run::Genie) || runs.contains(&Run::GenieAda),
        _ => true,
    };
    let mut missing = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (_, plan) in plans.iter().filter(|(run, _)| offline(*run)) {
        for n in &plan.negatives {
            for (&level, &key) in plan.levels.iter().zip(&n.keys) {
                if seen.insert(key) && !cache.contains(&key)? {
                    missing.push((n, level, key));
                }
            }
        }
    }
    for (run, plan) in &plans {
        println!(
            "{}: {} hard negatives planned for the Few classes ({} images at {} level(s))",
            if *run == Run::Genie {
                "GeNIe / GeNIe-Ada"
            } else {
                run.name()
            },
            plan.negatives.len(),
            plan.negatives.len() * plan.levels.len(),
            plan.levels.len(),
        );
    }
    println!("{} images not in the cache", missing.len());
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
        return super::report_plan(file, &mut entries, &hn.cache, &hn.model);
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
        let plans: Vec<&OfflinePlan> = plans
            .iter()
            .filter(|(run, _)| offline(*run))
            .map(|(_, p)| p)
            .collect();
        generate(&args, &plans, &train_set, &keys, &cache, missing.len())?;
    }

    let plan_of = |run: Run| {
        plans
            .iter()
            .find(|(r, _)| *r == run)
            .map(|(_, p)| p)
            .with_context(|| format!("internal: no plan for {}", run.name()))
    };
    for run in runs {
        if run == Run::Baseline && baseline_model.is_some() {
            continue;
        }
        let (model, row) = match run {
            Run::Baseline => trainer.run(run, train_set.as_ref())?,
            Run::GenieAda => {
                let chooser = baseline_model
                    .as_ref()
                    .context("GeNIe-Ada needs the baseline's model")?;
                let mut ada = plan_of(Run::Genie)?.clone();
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
                trainer.run_with(run, &train_set, &cache, &ada)?
            }
            Run::GenieAdaLive => {
                let pairs = plan_of(Run::Genie)?.pairs(train_set.as_ref(), &keys)?;
                let policy = Policy::long_tail(stats.clone(), policy_config.clone())?;
                trainer.run_live(&train_set, &cache, &keys, policy, pairs)?
            }
            _ => trainer.run_with(run, &train_set, &cache, plan_of(run)?)?,
        };
        rows.push(row);
        if run == Run::Baseline {
            baseline_model = Some(model);
        }
    }
    let md = long_tail_markdown(&rows);
    let csv = long_tail_csv(&rows);
    println!("\n{md}\n{csv}");
    if let Some(dir) = &args.out {
        image_io::write_atomic(&dir.join("long_tail.md"), md.as_bytes())?;
        image_io::write_atomic(&dir.join("long_tail.csv"), csv.as_bytes())?;
        println!("wrote {}", dir.display());
    }
    Ok(())
}

/// What every run of one table shares: the arguments, the groups, the device, the test set.
struct Trainer<'a> {
    args: &'a LongTailArgs,
    classes: usize,
    groups: &'a [Group],
    device: &'a Device,
    test: &'a InMemDataset<ImageItem>,
}

impl Trainer<'_> {
    /// Trains `run` on `data` from the shared initial weights and tests it: the model (for
    /// inference) and its row of the table.
    fn run(
        &self,
        run: Run,
        data: &dyn Dataset<ImageItem>,
    ) -> Result<(ResNetClassifier, GroupAccuracy)> {
        self.run_online(run, data, None)
    }

    /// [`Trainer::run`], mixing hard negatives online and showing every step to GeNIe-Ada when
    /// `online` is given.
    fn run_online(
        &self,
        run: Run,
        data: &dyn Dataset<ImageItem>,
        online: Option<Online<'_>>,
    ) -> Result<(ResNetClassifier, GroupAccuracy)> {
        let started = Instant::now();
        let model = train_model(self.args, data, self.classes, self.device, online)?.valid();
        let confusion = evaluate(
            &model,
            self.test,
            self.args.input_size,
            self.device,
            self.classes,
        )?;
        let row = GroupAccuracy::of(run.name(), &confusion.hits(), self.groups);
        println!(
            "{}: trained and tested in {:.0} s; overall {:.2} %",
            run.name(),
            started.elapsed().as_secs_f64(),
            row.overall
        );
        Ok((model, row))
    }

    /// GeNIe-Ada (live): the plan's `pairs` mixed into the batches as a generator running
    /// alongside makes their images, r* chosen per pair by the model being trained.
    fn run_live(
        &self,
        train: &Arc<InMemDataset<ImageItem>>,
        cache: &Arc<Cache>,
        keys: &KeySpace,
        policy: Policy,
        pairs: Vec<genie::warm::PlannedPair>,
    ) -> Result<(ResNetClassifier, GroupAccuracy)> {
        let hn = &self.args.hard_negatives;
        let factory = SdEngineFactory::new(model_source(&hn.model)?, engine_options(&hn.model)?)?;
        let generator = Arc::new(Generator::start(Arc::new(factory), Arc::clone(cache), {
            let mut options = GeneratorConfig::default();
            options.devices = hn.model.device.clone();
            options
        })?);
        let augmenter =
            genie::loader::Augmenter::builder(policy, keys.classes().to_vec(), Arc::clone(cache))
                .generator(Arc::clone(&generator))
                .plan(pairs)
                .build()?;
        let live = genie::loader::LiveModel::start(
            Arc::clone(&augmenter),
            ResNetEmbeddings {
                side: self.args.input_size,
                device: self.device.clone(),
            },
            genie::loader::LiveConfig::default(),
        )?;
        let outcome = self.run_online(
            Run::GenieAdaLive,
            train.as_ref(),
            Some(Online {
                augmenter: &augmenter,
                live: &live,
            }),
        );
        let selector = live.stop();
        let stats = augmenter.stats();
        println!(
            "{}: {} hard negatives mixed, {} of {} pairs ready, {} levels requested and {} \
             images generated while training; {} GeNIe-Ada choices ({} scorings)",
            Run::GenieAdaLive.name(),
            stats.mixed,
            stats.ready,
            stats.pairs,
            stats.requested,
            generator.stats().done,
            stats.ada_choices,
            selector.scored
        );
        // Dropping the last handle cancels what is still queued: the run is over.
        drop(augmenter);
        drop(generator);
        outcome
    }

    /// [`Trainer::run`] on the training set plus `plan`'s cached images.
    fn run_with(
        &self,
        run: Run,
        train: &Arc<InMemDataset<ImageItem>>,
        cache: &Arc<Cache>,
        plan: &OfflinePlan,
    ) -> Result<(ResNetClassifier, GroupAccuracy)> {
        let data = GenieDataset::new(Arc::clone(train), Arc::clone(cache), plan)?;
        println!(
            "{}: {} hard negatives added",
            run.name(),
            data.negatives().len()
        );
        self.run(run, &data)
    }
}

/// Makes the plans' missing levels before training (the paper's protocol: the hard negatives
/// exist before training starts), all queued before the workers take any, so the pixels do not
/// depend on timing.
fn generate(
    args: &LongTailArgs,
    plans: &[&OfflinePlan],
    train: &Arc<InMemDataset<ImageItem>>,
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
    let requested: Result<Vec<usize>, _> = plans
        .iter()
        .map(|plan| plan.request_missing(train, keys, &generator))
        .collect();
    generator.release();
    requested?;
    let mut wanted: Vec<_> = plans
        .iter()
        .flat_map(|p| p.negatives.iter().flat_map(|n| n.keys.clone()))
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
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

/// The online half of a live run: what mixes each batch, and the model GeNIe-Ada watches.
#[derive(Clone, Copy)]
struct Online<'a> {
    augmenter: &'a genie::loader::Augmenter<ImageItem>,
    live: &'a genie::loader::LiveModel<ResNetClassifier>,
}

/// Trains a fresh classifier (the pretrained backbone when given, and a new head) on `data`:
/// every run starts from the same weights and shuffles with the same seed, so runs differ in
/// their hard negatives only. With `online`, each batch goes through the augmenter (as
/// `GenieBatcher` does) and each optimiser step is shown to the live model.
fn train_model(
    args: &LongTailArgs,
    data: &dyn Dataset<ImageItem>,
    classes: usize,
    on: &Device,
    online: Option<Online<'_>>,
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
    let model = ResNetClassifier::new(backbone, config.feature_dim(), classes, &device);
    let mut training = ClassifierTraining::new(model, args.lr, &device);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    for epoch in 1..=args.epochs {
        let mut order: Vec<usize> = (0..data.len()).collect();
        // Fisher–Yates with the run's own stream.
        for i in (1..order.len()).rev() {
            order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        let (mut loss_sum, mut batches) = (0.0, 0);
        for chunk in order.chunks(args.batch_size as usize) {
            let mut items = Vec::with_capacity(chunk.len());
            for &i in chunk {
                items.push(
                    data.get(i)
                        .map_err(|e| anyhow::anyhow!("training item {i}: {e}"))?,
                );
            }
            if let Some(online) = online {
                items = online.augmenter.augment(items);
            }
            let (images, targets) = labelled_batch(&items, args.input_size, &device)?;
            loss_sum += training.step(images, targets)?.loss;
            batches += 1;
            if let Some(online) = online {
                online.live.observe(training.model());
            }
        }
        println!(
            "  epoch {epoch:>3}: loss {:.3} over {} items",
            loss_sum / batches.max(1) as f64,
            data.len()
        );
    }
    Ok(training.into_model())
}

/// `items` as a batch of images at `side` px and their labels (class 0 for an unlabelled one).
fn labelled_batch(
    items: &[ImageItem],
    side: u32,
    device: &Device,
) -> Result<(Tensor<4>, Tensor<1, Int>)> {
    let mut images = Vec::with_capacity(items.len());
    let mut labels = Vec::with_capacity(items.len());
    for item in items {
        images.push(item.rgb().with_context(|| format!("item {}", item.path))?);
        labels.push(item.label().unwrap_or(0) as i64);
    }
    let targets = Tensor::<1, Int>::from_data(TensorData::new(labels, [items.len()]), device);
    Ok((image_tensor(&images, side, device), targets))
}

/// The confusion matrix (true class, predicted class) of `model` on `data`.
fn evaluate(
    model: &ResNetClassifier,
    data: &dyn Dataset<ImageItem>,
    side: u32,
    device: &Device,
    classes: usize,
) -> Result<ConfusionMatrix> {
    let indices: Vec<usize> = (0..data.len()).collect();
    let batches = indices.chunks(64).map(|chunk| {
        let items = chunk
            .iter()
            .map(|&i| {
                data.get(i)
                    .map_err(|e| anyhow::anyhow!("test item {i}: {e}"))
            })
            .collect::<Result<Vec<_>>>()?;
        labelled_batch(&items, side, device)
    });
    confusion_of(model, classes, batches)
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
