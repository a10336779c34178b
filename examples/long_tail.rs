//! Long-tailed image classification with GeNIe hard negatives, end to end on the CPU.
//!
//! Trains the same small CNN twice with burn — once with the plain batcher, once with
//! `GenieBatcher` (hard negatives for the Few classes, r chosen per pair by GeNIe-Ada with the
//! live model) — and prints accuracy per group (Many / Medium / Few) and overall, how many hard
//! negatives were mixed in, each group's share of the training items before and after mixing, the
//! histogram of chosen r*, GeNIe-Ada's scoring costs, throughput and peak resident memory. The two
//! trainings run an epoch each in turn, so that both are timed warm on the same process. GeNIe-Ada
//! scores reproducibly (`--fast-ada`: asynchronously, not reproducible): the same command twice
//! prints the same tables. `--seeds 0,1,2` runs once per seed and ends with each accuracy's mean ±
//! standard deviation over the seeds.
//!
//! ```text
//! cargo run --release --example long_tail                       # drawn shapes, shapes model
//! cargo run --release --example long_tail -- --data DIR --weights SD15_DIR --device cuda:0 --dtype f16
//! cargo run --release --example long_tail -- --data DIR --plan plan.jsonl --cache DIR --no-generator
//! cargo run --release --example long_tail -- --generator http://127.0.0.1:8700 --cache DIR
//! ```
//!
//! By default the dataset is made in code (10 classes of drawn shapes on shared backgrounds, 500
//! down to 5 training images per class) and the engine is genie's shapes model, a small Stable
//! Diffusion trained on those shapes (`--model tiny`: the random tiny model, fast noise). The
//! planned hard negatives are generated before training, as in the paper's protocol (`--online`
//! generates while training instead). With `--weights` (a diffusers-layout Stable Diffusion 1.5
//! folder) and a real dataset, it is the paper's long-tail protocol.
//! `--data DIR` reads the image-folder layout: `DIR/train/<class>/*.png` and
//! `DIR/test/<class>/*.png`; the classifier trains at `--image-size` while diffusion reads the
//! original files. `--class-names FILE` names WordNet-id folders for the prompts. `--plan` takes
//! exactly the pairs of a `genie warm plan` (pre-warmed with `genie warm run`); with
//! `--no-generator` nothing is generated and only the pre-warmed cache is mixed in. With
//! `--generator URL` a `genie serve` generates (started with the same engine options and
//! `--cache`): this process then runs no diffusion.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use burn::data::dataloader::DataLoader;
use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::Parser;
use genie::backbone::{confusion_of, ClassifierTraining};
use genie::generator::{Generator, HardNegativeGenerator};
use genie::loader::ImageItem;
use genie::loader::{
    image_item, predictions_and_targets, Augmenter, AugmenterConfig, GenieBatcher, GenieItem,
    KeySpace, LiveConfig, LiveModel, OfflinePlan, ScoringMode, TrainDevice, TrainDeviceSpec,
};
use genie::policy::{ClassStats, Group, Policy, PolicyConfig, SharedConfusion};
use genie::remote::{RemoteConfig, RemoteGenerator};
use genie::synthetic;
use genie::NoiseLevel;

mod common;
use common::{Cnn, Embeddings, ImageBatch, ImageBatcher};

#[derive(Parser, Clone, Debug)]
#[command(about = "Long-tailed classification with and without GeNIe hard negatives")]
struct Args {
    /// Image-folder dataset with train/ and test/ (default: drawn shapes made in code).
    #[arg(long)]
    data: Option<PathBuf>,
    /// With --data: a class-name file (`n01440764 tench` lines, or CSV `folder,name`) for the
    /// prompts; the folder names stay the labels.
    #[arg(long, value_name = "FILE")]
    class_names: Option<PathBuf>,
    #[command(flatten)]
    engine: common::EngineArgs,
    /// Start exactly the pairs of this pre-warm plan (`genie warm plan --data DIR/train`).
    #[arg(long, value_name = "FILE")]
    plan: Option<PathBuf>,
    /// Generate nothing: mix only what the cache already holds (with --plan and --cache).
    #[arg(long, conflicts_with = "generator")]
    no_generator: bool,
    /// Generate with a `genie serve` (http://HOST:PORT) instead of workers in this process; its
    /// cache folder must be --cache, and its engine options these (the keys are checked).
    #[arg(long, value_name = "URL")]
    generator: Option<String>,
    /// Generate while training (the batcher starts pairs as their sources pass and mixes them
    /// once ready) instead of generating every planned hard negative before training.
    #[arg(long)]
    online: bool,
    /// Training epochs per run.
    #[arg(long, default_value_t = 8)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Side of the classifier's input images.
    #[arg(long, default_value_t = 32)]
    image_size: u32,
    /// Where the classifier trains (and GeNIe-Ada embeds): cpu, vulkan[:N], wgpu[:N] (with
    /// genie's burn-vulkan / burn-wgpu features) or auto (the first GPU found, else cpu).
    #[arg(long, env = "BURN_DEVICE", default_value = "cpu")]
    train_device: TrainDeviceSpec,
    /// Hard negatives per Few class (the paper's quota is 50).
    #[arg(long, default_value_t = 50)]
    per_class: usize,
    /// Use the fixed level r = 0.8 instead of GeNIe-Ada.
    #[arg(long)]
    no_ada: bool,
    /// Apply GeNIe-Ada's choices the moment they are scored, never waiting for the scoring:
    /// a little faster when scoring is slow, but two runs of one seed then differ.
    #[arg(long)]
    fast_ada: bool,
    /// GeNIe-Ada's scoring budget: the share of the training compute it may use (embedded
    /// items against three per trained item).
    #[arg(long, default_value_t = LiveConfig::default().share)]
    ada_share: f64,
    /// Cache directory (default: `$GENIE_HOME/cache`, `~/.cache/genie/cache`, kept across runs).
    #[arg(long, conflicts_with = "fresh_cache")]
    cache: Option<PathBuf>,
    /// Use a new temporary cache, removed at exit (every image is generated again).
    #[arg(long)]
    fresh_cache: bool,
    /// Skip the run without hard negatives.
    #[arg(long)]
    skip_baseline: bool,
    /// Let GenieBatcher count the class statistics from the first epoch's batches instead of
    /// a pass over the labels (no hard negatives until that epoch is counted).
    #[arg(long)]
    stats_from_batches: bool,
    /// How often each hard negative is mixed in, in uses per epoch (the paper adds each once
    /// to the training set: 1). Higher rates show the few ready images more often and take more
    /// items from the Many and Medium classes.
    #[arg(long, default_value_t = 1.0)]
    uses_per_epoch: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run once per seed (e.g. `0,1,2`) and end with each accuracy's mean ± standard
    /// deviation over the seeds.
    #[arg(long, value_delimiter = ',', conflicts_with = "seed")]
    seeds: Vec<u64>,
}

struct Data {
    classes: Vec<genie::classes::ClassInfo>,
    train: Vec<ImageItem>,
    test: Vec<ImageItem>,
}

fn synthetic_data(side: u32, seed: u64) -> Result<Data> {
    let counts = synthetic::long_tail_counts(synthetic::CLASS_NAMES.len(), 500, 5);
    // Paths that name no file: these items have no original beyond their pixels.
    let to_items = |items: Vec<synthetic::SyntheticItem>, split: &str| {
        items
            .into_iter()
            .enumerate()
            .map(|(n, s)| image_item(&s.image, s.label, format!("synthetic:{split}/{n}")))
            .collect::<Vec<_>>()
    };
    Ok(Data {
        classes: synthetic::CLASS_NAMES
            .iter()
            .map(|&s| genie::classes::ClassInfo::named(s))
            .collect(),
        train: to_items(synthetic::long_tail_dataset(&counts, side, seed)?, "train"),
        test: to_items(
            synthetic::balanced_dataset(50, synthetic::CLASS_NAMES.len(), side, seed)?,
            "test",
        ),
    })
}

fn folder_data(dir: &Path, names: Option<&Path>, side: u32) -> Result<Data> {
    // The same scan as `genie warm plan`, so that labels and plan class ids agree.
    let train = genie::warm::ImageFolder::scan(&dir.join("train"))?;
    let test = genie::warm::ImageFolder::scan(&dir.join("test"))?;
    if train.classes.len() < 2 {
        bail!("{}/train needs at least two class folders", dir.display());
    }
    if test.classes != train.classes {
        bail!(
            "{}/test has other class folders than train/: {:?} vs {:?}",
            dir.display(),
            test.classes,
            train.classes
        );
    }
    let names = names.map(genie::classes::ClassNames::read).transpose()?;
    let named = genie::classes::classes_for(&train.classes, names.as_ref())?;
    eprintln!("{}", named.source);
    Ok(Data {
        classes: named.classes,
        train: genie::loader::folder_items(&train, side)?,
        test: genie::loader::folder_items(&test, side)?,
    })
}

struct Online {
    augmenter: Arc<Augmenter<ImageItem>>,
    generator: Option<Arc<Generator>>,
    confusion: SharedConfusion,
    ada: bool,
}

struct Outcome {
    per_class: Vec<(usize, usize)>,
    steps: usize,
    seconds: f64,
    all_steps: usize,
    all_seconds: f64,
}

/// One training run, an epoch at a time, so that the run without hard negatives and the run
/// with them can be interleaved: both are then timed on the same warm process, not one on a
/// cold start and the other on a warm one.
struct Training<'a> {
    online: Option<&'a Online>,
    training: ClassifierTraining<Cnn>,
    loader: Arc<dyn DataLoader<ImageBatch>>,
    live: Option<LiveModel<Cnn>>,
    live_config: LiveConfig,
    /// Steps and seconds of the timed epochs (all but the first, which warms up).
    steps: usize,
    seconds: f64,
    /// Steps and seconds of every epoch, the warm-up included (GeNIe-Ada's first choices are
    /// mostly scored in it).
    all_steps: usize,
    all_seconds: f64,
}

impl<'a> Training<'a> {
    fn start(
        args: &Args,
        data: &Data,
        online: Option<&'a Online>,
        device: &Device,
    ) -> Result<Self> {
        let classes = data.classes.len();
        let batcher = ImageBatcher {
            side: args.image_size,
        };
        let train_device = device.clone().autodiff();
        // Every run starts from the same weights and sees the same batch order (`shuffle`
        // below), so the runs being compared differ only in their hard negatives.
        train_device.seed(args.seed);
        let model = Cnn::new(classes, &train_device);
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
        let live_config = {
            let mut options = LiveConfig::default();
            options.every = 20;
            options.share = args.ada_share;
            options.mode = if args.fast_ada {
                ScoringMode::Asynchronous
            } else {
                ScoringMode::Reproducible
            };
            options
        };
        let live = match online.filter(|o| o.ada) {
            Some(o) => Some(LiveModel::start(
                Arc::clone(&o.augmenter),
                Embeddings {
                    batcher,
                    device: device.clone(),
                },
                live_config.clone(),
            )?),
            None => None,
        };
        Ok(Training {
            online,
            training: ClassifierTraining::new(model, 1e-3, &train_device),
            loader,
            live,
            live_config,
            steps: 0,
            seconds: 0.0,
            all_steps: 0,
            all_seconds: 0.0,
        })
    }

    /// Trains one epoch; returns what to print of it. `timed`: count it in the throughput.
    fn epoch(&mut self, timed: bool) -> Result<String> {
        let started = Instant::now();
        let mut loss_sum = 0.0;
        let mut batches = 0;
        for batch in self.loader.iter() {
            let batch = batch?;
            let step = self.training.step(batch.images, batch.targets.clone())?;
            if let Some(o) = self.online {
                let (p, t) = predictions_and_targets(&step.logits, &batch.targets)?;
                o.confusion.record(&p, &t);
            }
            loss_sum += step.loss;
            if let Some(live) = &self.live {
                live.observe(self.training.model());
            }
            batches += 1;
        }
        // The round being scored is finished (and its choices applied) inside this epoch's
        // time: left running, it would slow the other run's next epoch and be billed to it.
        if let Some(live) = &self.live {
            live.sync();
        }
        let seconds = started.elapsed().as_secs_f64();
        self.all_seconds += seconds;
        self.all_steps += batches;
        if timed {
            self.seconds += seconds;
            self.steps += batches;
        }
        let extra = self.online.map_or(String::new(), |o| {
            let s = o.augmenter.stats();
            let done = o.generator.as_ref().map_or(0, |g| g.stats().done);
            format!(
                ", hard negatives mixed {:>5}, pairs {:>3}, ready {:>3}, generated {:>4}",
                s.mixed, s.pairs, s.ready, done
            )
        });
        Ok(format!(
            "loss {:.3}{extra}",
            loss_sum / batches.max(1) as f64
        ))
    }

    /// Ends the run (GeNIe-Ada's last choices applied, its costs printed) and tests the model.
    fn finish(self, data: &Data, batcher: &ImageBatcher, device: &Device) -> Result<Outcome> {
        if let Some(live) = self.live {
            let s = live.stop();
            println!(
                "GeNIe-Ada: {} snapshots in {} steps, {} scorings ({} unscorable); first choices \
                 embedded {} images, re-scoring {} ({:.1} % of the training compute of {} \
                 trained items, budget {:.0} %); scoring took {:.1} s ({:.1} % of the training \
                 time), training waited {:.2} s for it",
                s.snapshots,
                s.steps,
                s.scored + s.unscorable,
                s.unscorable,
                s.embedded_first,
                s.embedded - s.embedded_first,
                100.0 * s.compute_share(),
                s.trained,
                100.0 * self.live_config.share,
                s.scoring_seconds,
                100.0 * s.scoring_seconds / self.all_seconds.max(1e-9),
                s.waited_seconds
            );
        }
        let model = self.training.into_model().valid();
        let batches = data.test.chunks(128).map(|chunk| {
            let labels: Vec<i64> = chunk
                .iter()
                .map(|i| i.label().unwrap_or(0) as i64)
                .collect();
            let targets =
                Tensor::<1, Int>::from_data(TensorData::new(labels, [chunk.len()]), device);
            Ok::<_, anyhow::Error>((batcher.images(chunk, device), targets))
        });
        let per_class = confusion_of(&model, data.classes.len(), batches)?.hits();
        Ok(Outcome {
            per_class,
            steps: self.steps,
            seconds: self.seconds,
            all_steps: self.all_steps,
            all_seconds: self.all_seconds,
        })
    }
}

/// Trains the baseline (unless skipped) and the GeNIe run side by side, an epoch of each in
/// turn.
fn train_both(
    args: &Args,
    data: &Data,
    online: &Online,
    device: &Device,
) -> Result<(Option<Outcome>, Outcome)> {
    let mut baseline = if args.skip_baseline {
        None
    } else {
        Some(Training::start(args, data, None, device)?)
    };
    let mut genie = Training::start(args, data, Some(online), device)?;
    for epoch in 1..=args.epochs {
        // The first epoch warms up (allocator, caches, the backend's first calls), unless it is
        // the only one.
        let timed = epoch > 1 || args.epochs == 1;
        if let Some(b) = &mut baseline {
            println!("  epoch {epoch:>2} baseline: {}", b.epoch(timed)?);
        }
        println!("  epoch {epoch:>2} GeNIe:    {}", genie.epoch(timed)?);
    }
    let batcher = ImageBatcher {
        side: args.image_size,
    };
    let baseline = baseline
        .map(|b| b.finish(data, &batcher, device))
        .transpose()?;
    Ok((baseline, genie.finish(data, &batcher, device)?))
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

/// Accuracy over every test item, and balanced accuracy (the mean of the per-class accuracies,
/// which weighs each class alike however many test items it has).
fn overall_accuracy(outcome: &Outcome) -> [(&'static str, f64); 2] {
    let (right, total) = outcome
        .per_class
        .iter()
        .fold((0, 0), |(r, t), &(cr, ct)| (r + cr, t + ct));
    let per_class: Vec<f64> = outcome
        .per_class
        .iter()
        .filter(|&&(_, t)| t > 0)
        .map(|&(r, t)| 100.0 * r as f64 / t as f64)
        .collect();
    let ratio = |num: f64, den: f64| if den == 0.0 { f64::NAN } else { num / den };
    [
        ("Overall", ratio(100.0 * right as f64, total as f64)),
        (
            "Balanced",
            ratio(per_class.iter().sum(), per_class.len() as f64),
        ),
    ]
}

/// An accuracy, or `-` for a group without classes.
fn percent(accuracy: f64) -> String {
    if accuracy.is_nan() {
        "-".into()
    } else {
        format!("{accuracy:.1}%")
    }
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> Result<()> {
    common::log_to_stderr();
    let args = Args::parse();
    // Opened once: a GPU runtime cannot be initialised twice in a process.
    let train_device = TrainDevice::open_spec(args.train_device)?;
    println!("training device: {train_device}");
    let device = train_device.device();
    if args.seeds.is_empty() {
        run_seed(&args, device)?;
        return Ok(());
    }
    let mut reports = Vec::new();
    for &seed in &args.seeds {
        println!("\n=== seed {seed} ===");
        reports.push(run_seed(
            &Args {
                seed,
                ..args.clone()
            },
            device,
        )?);
    }
    print_over_seeds(&args.seeds, &reports);
    Ok(())
}

/// What one seed's run reports, for the table over seeds: accuracy per row (Many, Medium, Few,
/// Overall, Balanced) without and with hard negatives, and the throughput ratio.
struct SeedReport {
    rows: Vec<(String, Option<f64>, f64)>,
    ratio: Option<f64>,
}

/// Mean ± sample standard deviation, then each value, with `decimals`:
/// `40.1 ± 5.4 (46.0 / 39.0 / 35.4)`.
fn mean_spread(values: &[f64], decimals: usize) -> String {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    let each: Vec<String> = values.iter().map(|v| format!("{v:.decimals$}")).collect();
    format!(
        "{mean:.decimals$} ± {:.decimals$} ({})",
        var.sqrt(),
        each.join(" / ")
    )
}

fn print_over_seeds(seeds: &[u64], reports: &[SeedReport]) {
    let list: Vec<String> = seeds.iter().map(u64::to_string).collect();
    println!(
        "\naccuracy over seeds {} (%, mean ± standard deviation, then each seed)",
        list.join(", ")
    );
    println!("  {:<10}{:<34}GeNIe", "group", "baseline");
    for (i, (name, _, _)) in reports[0].rows.iter().enumerate() {
        // A group without classes has no accuracy (NaN): left out of its mean.
        let column = |pick: &dyn Fn(&SeedReport) -> Option<f64>| {
            let values: Vec<f64> = reports
                .iter()
                .filter_map(pick)
                .filter(|v| !v.is_nan())
                .collect();
            if values.is_empty() {
                "-".to_string()
            } else {
                mean_spread(&values, 1)
            }
        };
        let base = column(&|r| r.rows[i].1);
        let with = column(&|r| Some(r.rows[i].2));
        println!("  {name:<10}{base:<34}{with}");
    }
    let ratios: Vec<f64> = reports.iter().filter_map(|r| r.ratio).collect();
    if !ratios.is_empty() {
        println!("  throughput ratio {}", mean_spread(&ratios, 2));
    }
}

fn run_seed(args: &Args, device: &Device) -> Result<SeedReport> {
    let data = match &args.data {
        Some(dir) => folder_data(dir, args.class_names.as_deref(), args.image_size)?,
        None => synthetic_data(args.image_size, args.seed)?,
    };
    if args.no_generator && (args.plan.is_none() || args.cache.is_none()) {
        bail!("--no-generator mixes a pre-warmed cache: give --plan FILE and --cache DIR");
    }
    let classes = data.classes.len();
    let stats = ClassStats::from_labels(data.train.iter().filter_map(GenieItem::label), classes)?;
    let mut policy_config = PolicyConfig::long_tail();
    policy_config.per_target = args.per_class;
    policy_config.uses_per_epoch = Some(args.uses_per_epoch);
    policy_config.seed = args.seed;
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
            .map(|c| data.classes[c].name.as_str())
            .collect();
        println!("  {g:<6} {}", names.join(", "));
    }

    let (factory, generator_config) = common::engine_factory(&args.engine)?;
    let plan = factory.plan().clone();
    let (cache, cache_dir, _temp) = common::open_cache(args.cache.as_deref(), args.fresh_cache)?;
    let remote = match &args.generator {
        Some(url) => {
            if args.cache.is_none() {
                bail!("--generator {url} fills the server's cache: give it as --cache DIR");
            }
            let remote = RemoteGenerator::connect(url, &plan.fingerprint, RemoteConfig::default())?;
            println!("generator: genie serve at {url}");
            Some(Arc::new(remote))
        }
        None => None,
    };
    let generator = if args.no_generator || remote.is_some() {
        if args.no_generator {
            println!("generator: off (only what the cache holds is mixed in)");
        }
        None
    } else {
        Some(Arc::new(Generator::start(
            Arc::new(factory),
            Arc::clone(&cache),
            generator_config,
        )?))
    };
    let confusion = SharedConfusion::new(classes);
    let policy = if args.stats_from_batches {
        Policy::long_tail_from_batches(classes, data.train.len(), policy_config.clone())?
    } else {
        Policy::long_tail(stats.clone(), policy_config.clone())?
    };
    let keys = KeySpace::with_classes(
        plan.fingerprint.clone(),
        plan.resolution,
        data.classes.clone(),
    );
    let mut augmenter = Augmenter::new(
        policy,
        keys.clone(),
        Arc::clone(&cache),
        generator.clone(),
        {
            let mut options = AugmenterConfig::default();
            options.ada = !args.no_ada;
            options
        },
    )?
    .with_confusion(confusion.clone());
    // What requests go to: the server, or the workers in this process.
    let requester: Option<Arc<dyn HardNegativeGenerator>> = match (&remote, &generator) {
        (Some(r), _) => {
            augmenter = augmenter.with_generator(r.clone());
            Some(r.clone())
        }
        (None, Some(g)) => Some(g.clone()),
        (None, None) => None,
    };
    if let Some(file) = &args.plan {
        let entries = genie::warm::read_plan(file)?;
        let pairs = genie::warm::plan_pairs(&entries);
        println!("loaded plan: {} pairs from {}", pairs.len(), file.display());
        augmenter = augmenter.with_plan(&pairs)?;
    } else if let (Some(requester), false) = (&requester, args.online || args.stats_from_batches) {
        // The paper's protocol: the hard negatives exist before training starts. Plan them
        // (the policy's offline plan, uniform sources: no confusions are known yet), generate
        // what the cache lacks, and let the batcher mix exactly those pairs.
        let planner = Policy::long_tail(stats.clone(), policy_config.clone())?;
        let train_set = InMemDataset::new(data.train.clone());
        let offline = OfflinePlan::new(&train_set, &planner, &keys, augmenter.levels(), None)?;
        let started = Instant::now();
        // Queued whole before any batch is taken, so that batches (and with them the last bits
        // of each image) do not depend on timing: the same seed gives the same pixels.
        // (A server batches as requests arrive: its pixels are not reproducible bit for bit.)
        if let Some(g) = &generator {
            g.hold();
        }
        let requested = offline.request_missing_from(&train_set, &keys, &cache, requester.as_ref());
        if let Some(g) = &generator {
            g.release();
        }
        requested?;
        let keys_to_wait: Vec<_> = offline
            .negatives
            .iter()
            .flat_map(|n| n.keys.clone())
            .collect();
        // On a terminal the progress line is redrawn in place; in a log file (Slurm, CI,
        // `> run.log`) it is a plain line every 10 s, never `\r`-joined updates.
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
        let mut last_line = Instant::now();
        let day = std::time::Duration::from_secs(24 * 3600);
        let not_ready = requester.wait_all(&keys_to_wait, day, &mut |done, total| {
            let last = done == total;
            let progress = format!(
                "generating the hard negatives first: {done}/{total} images ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
            if terminal && (done % 50 == 0 || last) {
                print!("\r{progress}");
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
                if last {
                    println!();
                }
            } else if !terminal && (last || last_line.elapsed().as_secs() >= 10) {
                println!("{progress}");
                last_line = Instant::now();
            }
        })?;
        println!(
            "ready before training: {} of {} planned images",
            keys_to_wait.len() - not_ready.len(),
            keys_to_wait.len()
        );
        if let Some((key, outcome)) = not_ready.first() {
            // Those pairs are requested again by the batcher and mixed once they are ready.
            println!(
                "  {} not ready (the first: {key}: {outcome}); the batcher retries them while \
                 training",
                not_ready.len()
            );
        }
        augmenter = augmenter.with_plan(&offline.pairs(&train_set, &keys)?)?;
    }
    let augmenter = Arc::new(augmenter);
    let online = Online {
        augmenter: Arc::clone(&augmenter),
        generator: generator.clone(),
        confusion,
        ada: !args.no_ada,
    };
    println!(
        "\ntraining {}with GeNIe hard negatives ({}, cache {}){}",
        if args.skip_baseline {
            ""
        } else {
            "without and "
        },
        if args.no_ada { "r = 0.8" } else { "GeNIe-Ada" },
        cache_dir.display(),
        if args.skip_baseline {
            ""
        } else {
            ", an epoch of each in turn"
        }
    );
    let (baseline, genie) = train_both(args, &data, &online, device)?;
    drop(online);
    // Dropping the last handle (with the augmenter, at the end) cancels what is still queued.
    let generated = generator.as_ref().map_or(0, |g| g.stats().done);

    println!("\naccuracy by group (test set)");
    println!("  {:<8}{:>12}{:>12}", "group", "baseline", "GeNIe");
    let with = group_accuracy(&genie, &stats, &thresholds);
    let without = baseline
        .as_ref()
        .map(|b| group_accuracy(b, &stats, &thresholds));
    for (i, (g, acc)) in with.iter().enumerate() {
        let base = without
            .as_ref()
            .map_or("-".to_string(), |w| percent(w[i].1));
        println!("  {:<8}{base:>12}{:>12}", g.to_string(), percent(*acc));
    }
    let without_all = baseline.as_ref().map(overall_accuracy);
    for (i, (name, acc)) in overall_accuracy(&genie).iter().enumerate() {
        let base = without_all
            .as_ref()
            .map_or("-".to_string(), |w| percent(w[i].1));
        println!("  {name:<8}{base:>12}{:>12}", percent(*acc));
    }
    let s = augmenter.stats();
    println!(
        "\nhard negatives: {} mixed into batches, {} pairs, {} images generated, {} requests deferred, {} cache misses",
        s.mixed, s.pairs, generated, s.deferred, s.lookups_failed
    );
    if s.planned > 0 {
        println!("plan: {} of {} planned pairs started", s.pairs, s.planned);
    }
    let e = augmenter.exposure();
    println!(
        "exposure: {} hard negatives ready, uses per image min {} / median {} / max {} in {} epochs",
        e.images, e.min, e.median, e.max, args.epochs
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
    let mut chosen: std::collections::BTreeMap<NoiseLevel, usize> = Default::default();
    for (_, record) in augmenter.ada_records() {
        if let Some(level) = record.level {
            *chosen.entry(level).or_insert(0) += 1;
        }
    }
    let scored: usize = chosen.values().sum();
    println!("chosen r* (pairs per level, each scored pair once)");
    for (level, n) in &chosen {
        println!("  r = {level}: {n:>4} {}", "#".repeat((*n).min(60)));
    }
    println!(
        "pairs without a GeNIe-Ada choice (mixed at r = 0.8): {}",
        s.pairs - scored
    );
    let mut ratio = None;
    if let Some(b) = &baseline {
        let (plain, with) = (
            b.steps as f64 / b.seconds,
            genie.steps as f64 / genie.seconds,
        );
        let warm = if args.epochs > 1 {
            "after a warm-up epoch, epochs interleaved"
        } else {
            "one epoch, not warmed up"
        };
        println!(
            "\nthroughput ({warm}): baseline {plain:.1} steps/s, GeNIe {with:.1} steps/s, ratio {:.2}",
            with / plain
        );
        // Every epoch, the warm-up included: GeNIe-Ada's whole cost, first choices too.
        let (plain_all, with_all) = (
            b.all_steps as f64 / b.all_seconds,
            genie.all_steps as f64 / genie.all_seconds,
        );
        println!(
            "throughput over every epoch (warm-up and all of GeNIe-Ada's scoring included): \
             baseline {plain_all:.1} steps/s, GeNIe {with_all:.1} steps/s, ratio {:.2}",
            with_all / plain_all
        );
        ratio = Some(with / plain);
    }
    if let Some(mib) = peak_rss_mib() {
        println!("peak resident memory: {mib:.0} MiB");
    }
    let mut rows: Vec<(String, Option<f64>, f64)> = with
        .iter()
        .enumerate()
        .map(|(i, (g, acc))| (g.to_string(), without.as_ref().map(|w| w[i].1), *acc))
        .collect();
    for (i, (name, acc)) in overall_accuracy(&genie).iter().enumerate() {
        rows.push((name.to_string(), without_all.map(|w| w[i].1), *acc));
    }
    Ok(SeedReport { rows, ratio })
}
