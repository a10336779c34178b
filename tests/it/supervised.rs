//! GenieBatcher, ConfusionMetric and GeNIe-Ada inside burn's own `SupervisedTraining` loop: the
//! wrapper is a drop-in batcher, the metric alone feeds the confusion matrix the policy reads,
//! and `Observed` shows every optimiser step to the live model.

use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::optim::AdamConfig;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn::train::{
    ClassificationOutput, InferenceStep, Learner, SupervisedTraining, TrainOutput, TrainStep,
};
use genie::cache::{Cache, CacheKey, EntryMeta, MemoryStore};
use genie::loader::ImageItem;
use genie::loader::{
    image_item, Augmenter, AugmenterConfig, ConfusionMetric, FeatureExtractor, GenieBatcher,
    GenieItem, KeySpace, LiveConfig, LiveModel, Observed,
};
use genie::policy::{ClassStats, Policy, PolicyConfig, SharedConfusion};
use genie::NoiseLevel;
use image::{Rgb, RgbImage};

const SIDE: u32 = 4;

#[derive(Clone, Debug)]
struct Batch {
    inputs: Tensor<2>,
    targets: Tensor<1, Int>,
}

#[derive(Clone)]
struct Flatten;

impl Batcher<ImageItem, Batch> for Flatten {
    fn batch(&self, items: Vec<ImageItem>, device: &Device) -> Batch {
        let n = items.len();
        let mut values = Vec::new();
        for item in &items {
            values.extend(
                item.rgb()
                    .unwrap()
                    .as_raw()
                    .iter()
                    .map(|&v| v as f32 / 255.0),
            );
        }
        let labels: Vec<i64> = items.iter().map(|i| i.label().unwrap() as i64).collect();
        Batch {
            inputs: Tensor::from_data(
                TensorData::new(values, [n, (SIDE * SIDE * 3) as usize]),
                device,
            ),
            targets: Tensor::from_data(TensorData::new(labels, [n]), device),
        }
    }
}

#[derive(Module, Debug)]
struct Probe {
    linear: Linear,
}

impl Probe {
    /// A fresh linear probe over the flattened pixels, three classes.
    fn new(device: &Device) -> Self {
        Probe {
            linear: LinearConfig::new((SIDE * SIDE * 3) as usize, 3).init(device),
        }
    }

    fn output(&self, batch: Batch) -> ClassificationOutput {
        let output = self.linear.forward(batch.inputs);
        let device = output.device();
        let loss = CrossEntropyLossConfig::new()
            .init(&device)
            .forward(output.clone(), batch.targets.clone());
        ClassificationOutput {
            loss,
            output,
            targets: batch.targets,
        }
    }
}

impl TrainStep for Probe {
    type Input = Batch;
    type Output = ClassificationOutput;
    fn step(&self, batch: Batch) -> TrainOutput<ClassificationOutput> {
        let item = self.output(batch);
        TrainOutput::new(self, item.loss.backward(), item)
    }
}

impl InferenceStep for Probe {
    type Input = Batch;
    type Output = ClassificationOutput;
    fn step(&self, batch: Batch) -> ClassificationOutput {
        self.output(batch)
    }
}

fn item(class: usize, n: usize) -> ImageItem {
    let img = RgbImage::from_fn(SIDE, SIDE, |x, y| {
        Rgb([(class * 60) as u8, (n * 7 + x as usize) as u8, y as u8 * 9])
    });
    image_item(&img, class, format!("{class}/{n}"))
}

/// The run's key space and its training items: classes a (40), b (30) and c (5, the Few one).
fn setup() -> (KeySpace, Vec<ImageItem>) {
    let counts = [40usize, 30, 5];
    let items: Vec<_> = counts
        .iter()
        .enumerate()
        .flat_map(|(c, &n)| (0..n).map(move |i| item(c, i)))
        .collect();
    let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let fingerprint = crate::support::engine_fingerprint("prewarmed", SIDE);
    (KeySpace::new(fingerprint, SIDE, names), items)
}

/// Pre-warms a hard negative of target c at each of `levels` for every item of a and b: a
/// flat colour per level.
fn prewarm(keys: &KeySpace, items: &[ImageItem], seed: u64, levels: &[NoiseLevel]) -> Arc<Cache> {
    let cache = Arc::new(Cache::new(Arc::new(MemoryStore::new()), 1 << 20));
    for it in items.iter().filter(|i| i.label() != Some(2)) {
        let source = keys.source(&it.rgb().unwrap()).unwrap();
        let pair_seed = keys.pair_seed(seed, source.hash, 2, 0);
        for &level in levels {
            let key: CacheKey = keys.key(source.hash, 2, level, pair_seed);
            let meta = EntryMeta {
                target: "c".into(),
                prompt: keys.prompt(2),
                level,
                seed: pair_seed,
                source: None,
                fingerprint: keys.fingerprint().clone(),
                width: 0,
                height: 0,
            };
            let shade = (level.thousandths() / 4) as u8;
            let image = RgbImage::from_pixel(SIDE, SIDE, Rgb([250 - shade, 20, shade]));
            cache.put_image(&key, &image, meta).unwrap();
        }
    }
    cache
}

type Loader = Arc<dyn burn::data::dataloader::DataLoader<Batch>>;

/// `items` in batches of 8, in order and without genie: the validation loader.
fn plain_loader(items: &[ImageItem], device: &Device) -> Loader {
    DataLoaderBuilder::new(Flatten)
        .batch_size(8)
        .set_device(device.clone())
        .build(InMemDataset::new(items.to_vec()))
}

/// Trains `model` with Adam at `lr` for `epochs`, showing every step to `live`.
fn train_observed(
    model: Probe,
    live: &Arc<LiveModel<Probe>>,
    (train, valid): (Loader, Loader),
    epochs: usize,
    lr: f64,
) -> Probe {
    let dir = tempfile::tempdir().unwrap();
    let result = SupervisedTraining::new(dir.path(), train, valid)
        .num_epochs(epochs)
        .launch(Learner::new(
            Observed::new(model, live),
            AdamConfig::new().init(),
            lr,
        ));
    result.model.into_inner()
}

fn loaders(
    augmenter: &Arc<Augmenter<ImageItem>>,
    items: &[ImageItem],
    device: &Device,
) -> (Loader, Loader) {
    let train = DataLoaderBuilder::new(GenieBatcher::new(Flatten, Arc::clone(augmenter)))
        .batch_size(8)
        .shuffle(1)
        .set_device(device.clone())
        .build(InMemDataset::new(items.to_vec()));
    (train, plain_loader(items, device))
}

#[test]
fn supervised_training_with_genie_batcher_and_confusion_metric() {
    let (keys, items) = setup();
    let mut config = PolicyConfig::long_tail();
    config.per_target = 20;
    // Pre-warm the cache with a hard negative (target c) for every item of a and b.
    let cache = prewarm(&keys, &items, config.seed, &[NoiseLevel::GENIE_DEFAULT]);
    let stats = ClassStats::from_counts(vec![40, 30, 5]);
    let policy = Policy::long_tail(stats, config).unwrap();
    assert_eq!(policy.targets(), vec![2]);
    let confusion = SharedConfusion::new(3);
    let augmenter = Augmenter::builder(policy, keys.classes().to_vec(), cache)
        .pre_warmed_by(keys.fingerprint())
        .ada(false)
        .confusion(confusion.clone())
        .build()
        .unwrap();

    let device = Device::flex().autodiff();
    let (train, valid) = loaders(&augmenter, &items, &device);
    let model = Probe::new(&device);
    let dir = tempfile::tempdir().unwrap();
    let result = SupervisedTraining::new(dir.path(), train, valid)
        .metric_train(ConfusionMetric::new(confusion.clone()).with_decay(1.0))
        .num_epochs(2)
        .launch(Learner::new(model, AdamConfig::new().init(), 1e-2));
    let _ = result.model;

    let stats = augmenter.stats();
    assert!(stats.batches >= 2 * 10, "{stats:?}");
    assert!(
        stats.mixed > 0,
        "pre-warmed hard negatives were mixed: {stats:?}"
    );
    // The metric saw every training item of both epochs (hard negatives included).
    let total = confusion.snapshot().total();
    assert_eq!(total as usize, 2 * items.len(), "confusion total {total}");
}

/// GeNIe-Ada's view of the probe: its logits for the flattened item.
struct Logits;

impl FeatureExtractor<Probe, ImageItem> for Logits {
    fn embed(&self, model: &Probe, items: Vec<ImageItem>) -> Tensor<2> {
        let device = Device::flex();
        model.linear.forward(Flatten.batch(items, &device).inputs)
    }
}

/// A GeNIe-Ada augmenter for the run's items (its quota `per_target` hard negatives for c),
/// every level of its sweep pre-warmed; and the items.
fn ada_augmenter(per_target: usize) -> (Arc<Augmenter<ImageItem>>, Vec<ImageItem>) {
    let (keys, items) = setup();
    let mut config = PolicyConfig::long_tail();
    config.per_target = per_target;
    let cache = prewarm(&keys, &items, config.seed, &NoiseLevel::ADA_SWEEP);
    let policy = Policy::long_tail(ClassStats::from_counts(vec![40, 30, 5]), config).unwrap();
    let augmenter = Augmenter::new(policy, keys, cache, None, AugmenterConfig::default()).unwrap();
    (Arc::new(augmenter), items)
}

/// With the model wrapped in `Observed`, burn's own loop feeds GeNIe-Ada: no hand-written loop.
#[test]
fn supervised_training_runs_genie_ada_through_the_observed_model() {
    let (augmenter, items) = ada_augmenter(12);
    assert!(augmenter.config().ada);
    let live = Arc::new(
        LiveModel::start(Arc::clone(&augmenter), Logits, {
            let mut options = LiveConfig::default();
            options.every = 1;
            options.share = f64::INFINITY;
            options
        })
        .unwrap(),
    );
    let device = Device::flex().autodiff();
    let loaders = loaders(&augmenter, &items, &device);
    train_observed(Probe::new(&device), &live, loaders, 3, 1e-2);

    // Every optimiser step was shown to the live model; the last round's choices apply now.
    live.sync();
    let stats = live.stats();
    assert!(stats.steps >= 3 * 10, "{stats:?}");
    assert!(stats.snapshots >= 2, "{stats:?}");
    assert!(augmenter.stats().ada_choices > 0, "{stats:?}");
    assert!(live.stats().scored > 0);
    // Each choice is filed in the cache under its pair's key.
    let records = augmenter.ada_records();
    assert!(!records.is_empty());
    for (id, record) in records.iter().filter(|(_, r)| r.level.is_some()) {
        let key = augmenter.pair_record_key(*id).unwrap();
        let filed = augmenter.cache().ada_choice(&key).unwrap();
        let filed = filed.expect("a scored pair's choice is in the cache");
        assert!(filed.model_version <= live.version());
        assert!(filed.chosen_level().is_some());
        let _ = record;
    }
}

/// The flattening batcher, keeping a log of every batch it made: each item's path, label and
/// pixels, in order.
#[derive(Clone)]
struct Recording(Arc<std::sync::Mutex<Vec<LoggedBatch>>>);

/// A batch as [`Recording`] logs it: each item's path, label and pixels.
type LoggedBatch = Vec<(String, usize, Vec<u8>)>;

/// How many hard negatives (genie's items) `batches` hold.
fn mixed(batches: &[LoggedBatch]) -> usize {
    batches
        .iter()
        .flatten()
        .filter(|(path, _, _)| path.contains("genie"))
        .count()
}

impl Batcher<ImageItem, Batch> for Recording {
    fn batch(&self, items: Vec<ImageItem>, device: &Device) -> Batch {
        let logged = items
            .iter()
            .map(|i| {
                let pixels = i.rgb().unwrap().into_raw();
                (i.path.clone(), i.label().unwrap(), pixels)
            })
            .collect();
        self.0.lock().unwrap().push(logged);
        Flatten.batch(items, device)
    }
}

/// A training loader through `GenieBatcher` whose batches are logged, shuffled with `shuffle`, and
/// a plain validation loader, both of `items`.
fn logged_loaders(
    augmenter: &Arc<Augmenter<ImageItem>>,
    items: &[ImageItem],
    shuffle: u64,
    device: &Device,
) -> (Recording, Loader, Loader) {
    let log = Recording(Arc::default());
    let train = DataLoaderBuilder::new(GenieBatcher::new(log.clone(), Arc::clone(augmenter)))
        .batch_size(8)
        .shuffle(shuffle)
        .set_device(device.clone())
        .build(InMemDataset::new(items.to_vec()));
    (log, train, plain_loader(items, device))
}

/// A probe whose weights are `weight(i)` (row-major, no bias): the same start in every run.
fn fixed_probe(device: &Device, weight: impl Fn(usize) -> f32) -> Probe {
    let inputs = (SIDE * SIDE * 3) as usize;
    let weights: Vec<f32> = (0..inputs * 3).map(weight).collect();
    Probe {
        linear: Linear {
            weight: burn::module::Param::from_tensor(Tensor::from_data(
                TensorData::new(weights, [inputs, 3]),
                device,
            )),
            bias: None,
        },
    }
}

/// What one GeNIe-Ada training run did: its batches, and each pair's last Ada record (level,
/// d_m curve as bits, model version).
type RunLog = (
    Vec<LoggedBatch>,
    Vec<(usize, Option<NoiseLevel>, Vec<u64>, u64)>,
    genie::loader::SelectorStats,
);

/// One run of burn's `SupervisedTraining` with GeNIe-Ada under a scoring budget, from fixed
/// weights and batch order.
fn ada_run() -> RunLog {
    let (augmenter, items) = ada_augmenter(30);
    let live = Arc::new(
        LiveModel::start(
            Arc::clone(&augmenter),
            Logits,
            // A budget of a few pairs per snapshot: rounds differ, and re-scoring moves choices.
            {
                let mut options = LiveConfig::default();
                options.every = 2;
                options.share = 0.5;
                options
            },
        )
        .unwrap(),
    );
    let device = Device::flex().autodiff();
    let (log, train, valid) = logged_loaders(&augmenter, &items, 3, &device);
    let model = fixed_probe(&device, |i| ((i * 7) % 11) as f32 / 50.0 - 0.1);
    train_observed(model, &live, (train, valid), 4, 5e-2);
    let stats = Arc::into_inner(live).expect("the only handle").stop();
    let mut records: Vec<_> = augmenter
        .ada_records()
        .into_iter()
        .map(|(id, r)| {
            let bits = r.curve.iter().map(|d| d.to_bits()).collect();
            (id, r.level, bits, r.model_version)
        })
        .collect();
    records.sort_by_key(|r| r.0);
    let batches = std::mem::take(&mut *log.0.lock().unwrap());
    (batches, records, stats)
}

/// Reproducible scoring (the default): the same run twice makes the same choices from the same
/// model versions and mixes the same hard negatives into the same batches.
#[test]
fn genie_ada_runs_of_one_seed_choose_and_mix_identically() {
    let (batches, records, stats) = ada_run();
    // Not a vacuous comparison: several budgeted snapshots, pairs scored more than once and
    // by different versions, and hard negatives mixed at the levels chosen.
    assert!(stats.snapshots >= 3, "{stats:?}");
    assert!(stats.scored > records.len() as u64, "{stats:?}");
    assert!(stats.compute_share() <= 0.5 + 1e-9, "{stats:?}");
    let versions: std::collections::BTreeSet<u64> = records.iter().map(|r| r.3).collect();
    assert!(versions.len() >= 2, "{versions:?}");
    assert!(mixed(&batches) > 0, "no hard negative was mixed");

    let (batches_again, records_again, stats_again) = ada_run();
    assert_eq!(records, records_again);
    assert_eq!(batches.len(), batches_again.len());
    for (n, (a, b)) in batches.iter().zip(&batches_again).enumerate() {
        assert_eq!(a, b, "batch {n} differs");
    }
    assert_eq!(
        (stats.snapshots, stats.scored, stats.embedded),
        (
            stats_again.snapshots,
            stats_again.scored,
            stats_again.embedded
        )
    );
}

/// One run of burn's `SupervisedTraining` whose sources come from the classes most confused with
/// the Few class, as `ConfusionMetric` records them on burn's metric thread, with a generator
/// attached (every key is pre-warmed, so it never runs its engine): the batches it made, and the
/// augmenter's counters.
fn confused_run() -> (Vec<LoggedBatch>, genie::loader::AugmenterStats) {
    let (keys, items) = setup();
    let mut config = PolicyConfig::long_tail();
    config.per_target = 30;
    // One new pair per batch, so that pairs keep starting after the first confusion snapshots.
    config.new_pairs_per_batch = 1;
    config.sources = genie::policy::SourceStrategy::TopConfused { k: 1 };
    let cache = prewarm(&keys, &items, config.seed, &[NoiseLevel::GENIE_DEFAULT]);
    let policy = Policy::long_tail(ClassStats::from_counts(vec![40, 30, 5]), config).unwrap();
    let generator = {
        let factory = Arc::new(crate::support::colour_factory(
            keys.fingerprint().clone(),
            SIDE,
            crate::support::Gate::closed(),
        ));
        let mut options = genie::generator::GeneratorConfig::default();
        options.devices = vec!["cpu".into()];
        Arc::new(genie::generator::Generator::start(factory, Arc::clone(&cache), options).unwrap())
    };
    let confusion = SharedConfusion::new(3);
    let augmenter = Augmenter::builder(policy, keys.classes().to_vec(), cache)
        .generator(Arc::clone(&generator))
        .ada(false)
        .confusion(confusion.clone())
        .build()
        .unwrap();
    let device = Device::flex().autodiff();
    let (log, train, valid) = logged_loaders(&augmenter, &items, 5, &device);
    let model = fixed_probe(&device, |i| ((i * 5) % 13) as f32 / 40.0 - 0.15);
    let dir = tempfile::tempdir().unwrap();
    let result = SupervisedTraining::new(dir.path(), train, valid)
        .metric_train(ConfusionMetric::new(confusion.clone()))
        .num_epochs(4)
        .launch(Learner::new(model, AdamConfig::new().init(), 5e-2));
    drop(result);
    assert_eq!(generator.stats().done, 0, "every key was pre-warmed");
    let batches = std::mem::take(&mut *log.0.lock().unwrap());
    (batches, augmenter.stats())
}

/// With `ConfusionMetric` on burn's metric thread, the sources the augmenter proposes come from
/// confusion snapshots at fixed batch counts: two runs of one seed make the same batches.
#[test]
fn runs_with_the_confusion_metric_and_top_confused_sources_mix_identically() {
    let (batches, stats) = confused_run();
    // Not vacuous: snapshots were read, pairs kept starting after them, and hard negatives were
    // mixed.
    assert!(stats.confusion_snapshots > 0, "{stats:?}");
    assert_eq!(stats.confusion_timeouts, 0, "{stats:?}");
    assert!(
        stats.pairs > (2 * genie::policy::SNAPSHOT_EVERY) as usize / 2,
        "{stats:?}"
    );
    assert!(mixed(&batches) > 0, "no hard negative was mixed");
    let (again, stats_again) = confused_run();
    assert_eq!(batches.len(), again.len());
    for (n, (a, b)) in batches.iter().zip(&again).enumerate() {
        assert_eq!(a, b, "batch {n} differs");
    }
    assert_eq!(stats, stats_again);
}
