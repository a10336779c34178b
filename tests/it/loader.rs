//! The burn wrappers: GenieBatcher mixes hard negatives without ever blocking, labels them with
//! their target, keeps the batch size and memory budget, follows GeNIe-Ada's r*; GenieDataset
//! follows the quotas; the confusion metric feeds the policy; one end-to-end run on the tiny model.

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::support::{colour_factory, engine_fingerprint, level_colour, Gate, Identity};
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::{Dataset, InMemDataset};
use burn::tensor::{Device, Int, Tensor, TensorData};
use genie::cache::{Cache, MemoryStore};
use genie::generator::{Generator, GeneratorConfig, Shutdown};
use genie::loader::ImageItem;
use genie::loader::{
    image_item, Augmenter, AugmenterConfig, ConfusionMetric, FeatureExtractor, GenieBatcher,
    GenieDataset, GenieItem, KeySpace, LiveConfig, LiveModel, OfflinePlan,
};
use genie::policy::{ClassStats, Policy, PolicyConfig, SharedConfusion};
use genie::{EngineFingerprint, NoiseLevel};
use image::{Rgb, RgbImage};

const CLASSES: usize = 4;
const SIDE: u32 = 8;

fn names() -> Vec<String> {
    ["alpha", "beta", "gamma", "delta"]
        .map(String::from)
        .to_vec()
}

fn fingerprint() -> EngineFingerprint {
    engine_fingerprint("colour-engine", SIDE)
}

fn generator(cache: Arc<Cache>, gate: Arc<Gate>, queue_capacity: usize) -> Arc<Generator> {
    let factory = Arc::new(colour_factory(fingerprint(), SIDE, gate));
    let mut config = GeneratorConfig::default();
    config.devices = vec!["cpu".into()];
    config.queue_capacity = queue_capacity;
    config.max_batch = 4;
    Arc::new(Generator::start(factory, cache, config).unwrap())
}

/// A generator whose engine answers at once.
fn open_generator(cache: Arc<Cache>, queue_capacity: usize) -> Arc<Generator> {
    let gate = Arc::new(Gate::default());
    gate.open();
    generator(cache, gate, queue_capacity)
}

fn memory_cache(budget: usize) -> Arc<Cache> {
    Arc::new(Cache::new(Arc::new(MemoryStore::new()), budget))
}

/// Class 0 has many images, class 3 few: class 3 is the only target.
fn stats() -> ClassStats {
    ClassStats::from_counts(vec![300, 120, 60, 5])
}

fn config(ada: bool) -> AugmenterConfig {
    let mut options = AugmenterConfig::default();
    options.ada = ada;
    options
}

/// The long-tail policy, mixing as often as the batch fraction allows (these tests look at
/// single batches, not epochs; the per-epoch rate is tested in `tests/it/policy.rs`).
fn policy(per_target: usize) -> Policy {
    Policy::long_tail(stats(), {
        let mut options = PolicyConfig::long_tail();
        options.per_target = per_target;
        options.uses_per_epoch = None;
        options
    })
    .unwrap()
}

/// A distinct item of `class`: its pixels encode (class, n).
fn item(class: usize, n: usize) -> ImageItem {
    let colour = match class {
        3 => Rgb([0, 250, 0]),
        _ => Rgb([255, (n % 200) as u8, (n / 200) as u8]),
    };
    let mut img = RgbImage::from_pixel(SIDE, SIDE, colour);
    img.put_pixel(0, 0, Rgb([class as u8, (n % 256) as u8, (n / 256) as u8]));
    image_item(&img, class, format!("{class}/{n}.png"))
}

/// A batch of 16 dominated by class 0, with one item of each other class.
fn batch(round: usize) -> Vec<ImageItem> {
    let mut items: Vec<_> = (0..13).map(|i| item(0, round * 100 + i)).collect();
    items.extend((1..CLASSES).map(|c| item(c, round * 100 + 50)));
    items
}

fn keys() -> KeySpace {
    KeySpace::new(fingerprint(), SIDE, names())
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs batches until the generator has made the images of every pair started so far.
fn run_until_mixed(batcher: &GenieBatcher<Identity, ImageItem>) -> Vec<Vec<ImageItem>> {
    let device = Device::default();
    let mut out = Vec::new();
    for round in 0..200 {
        let b = batcher.batch(batch(round), &device);
        let mixed = b.iter().any(GenieItem::is_generated);
        out.push(b);
        if mixed {
            return out;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("no hard negative was ever mixed in");
}

#[test]
fn batcher_keeps_the_size_and_labels_hard_negatives_with_their_target() {
    let cache = memory_cache(1 << 20);
    let generator = open_generator(Arc::clone(&cache), 64);
    let augmenter = Augmenter::new(
        policy(8),
        keys(),
        cache,
        Some(Arc::clone(&generator)),
        config(false),
    )
    .unwrap();
    let batcher = GenieBatcher::new(Identity, Arc::new(augmenter));
    let batches = run_until_mixed(&batcher);
    for b in &batches {
        assert_eq!(b.len(), 16);
    }
    let last = batches.last().unwrap();
    let generated: Vec<_> = last.iter().filter(|i| i.is_generated()).collect();
    assert!(
        !generated.is_empty() && generated.len() <= 4,
        "{}",
        generated.len()
    );
    for g in &generated {
        assert_eq!(g.label(), Some(3), "hard negatives carry the target label");
        assert_eq!(
            g.rgb().unwrap(),
            RgbImage::from_pixel(SIDE, SIDE, level_colour(NoiseLevel::GENIE_DEFAULT)),
            "without Ada the fixed level 0.8 is used"
        );
    }
    // The replaced items were of the over-represented class 0; the others are all still there.
    for c in 1..CLASSES {
        assert!(last
            .iter()
            .any(|i| i.label() == Some(c) && !i.is_generated()));
    }
    let stats = batcher.augmenter().stats();
    assert!(stats.pairs > 0 && stats.pairs <= 8, "{stats:?}");
    assert_eq!(
        stats.mixed as usize,
        generated.len()
            + batches[..batches.len() - 1]
                .iter()
                .map(|b| b.iter().filter(|i| i.is_generated()).count())
                .sum::<usize>()
    );
    // Sources come from the other classes only, never more pairs than the quota.
    batcher.augmenter().with_policy(|p| {
        assert!(p
            .pairs()
            .iter()
            .all(|pair| pair.target == 3 && pair.source_class != 3));
        assert!(p.pairs_of(3).len() <= 8);
    });
}

#[test]
fn batcher_never_blocks_on_a_saturated_generator() {
    let cache = memory_cache(1 << 20);
    let gate = Arc::new(Gate::default()); // closed: the engine never finishes
    let generator = generator(Arc::clone(&cache), Arc::clone(&gate), 2);
    let augmenter = Arc::new(
        Augmenter::new(
            policy(50),
            keys(),
            cache,
            Some(Arc::clone(&generator)),
            config(true),
        )
        .unwrap(),
    );
    let batcher = GenieBatcher::new(Identity, Arc::clone(&augmenter));
    // If a batch blocked, the channel would stay empty and the watchdog below would fail.
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let device = Device::default();
        for round in 0..100 {
            let b = batcher.batch(batch(round), &device);
            tx.send(b.len()).unwrap();
        }
    });
    for _ in 0..100 {
        let len = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a batch blocked on the generator");
        assert_eq!(len, 16);
    }
    worker.join().unwrap();
    let stats = augmenter.stats();
    assert_eq!(stats.mixed, 0);
    assert!(
        stats.deferred > 0,
        "the full queue must have deferred work: {stats:?}"
    );
    gate.open();
}

/// The model's view of an item: its linear map of the item's mean colour.
struct MeanColour;

impl FeatureExtractor<burn::nn::Linear, ImageItem> for MeanColour {
    fn embed(&self, model: &burn::nn::Linear, items: Vec<ImageItem>) -> Tensor<2> {
        let n = items.len();
        let mut values = Vec::with_capacity(n * 3);
        for item in items {
            let rgb = item.rgb().unwrap();
            let count = rgb.pixels().len() as f32;
            for c in 0..3 {
                values.push(rgb.pixels().map(|p| p.0[c] as f32).sum::<f32>() / count);
            }
        }
        model.forward(Tensor::from_data(
            TensorData::new(values, [n, 3]),
            &Device::default(),
        ))
    }
}

/// A 3 → 3 linear map without bias (`O = I W`), `weights` row-major `[input][output]`.
fn linear(weights: [[f32; 3]; 3]) -> burn::nn::Linear {
    let values: Vec<f32> = weights.iter().flatten().copied().collect();
    burn::nn::Linear {
        weight: burn::module::Param::from_tensor(Tensor::from_data(
            TensorData::new(values, [3, 3]),
            &Device::default(),
        )),
        bias: None,
    }
}

/// The identity: the embedding is the mean colour, and the jump is between r = 0.5 and 0.6.
fn colour_model() -> burn::nn::Linear {
    linear([[1., 0., 0.], [0., 1., 0.], [0., 0., 1.]])
}

/// A model blind to the difference between the r = 0.5 and r = 0.6 colours
/// ((250, 5, 0) − (6, 234, 60) is in its null space): its largest jump comes later.
fn blind_model() -> burn::nn::Linear {
    // Output 0 = 0.229 R + 0.244 G, output 1 = 0.060 R + 0.244 B.
    linear([[0.229, 0.060, 0.], [0.244, 0., 0.], [0., 0.244, 0.]])
}

#[test]
fn batcher_uses_the_level_ada_chose_with_the_live_model() {
    let cache = memory_cache(1 << 20);
    let generator = open_generator(Arc::clone(&cache), 64);
    let augmenter =
        Arc::new(Augmenter::new(policy(2), keys(), cache, Some(generator), config(true)).unwrap());
    let batcher = GenieBatcher::new(Identity, Arc::clone(&augmenter));
    // Before any choice, the fixed level is mixed.
    let first = run_until_mixed(&batcher);
    let generated = first
        .last()
        .unwrap()
        .iter()
        .find(|i| i.is_generated())
        .unwrap();
    assert_eq!(
        generated.rgb().unwrap().get_pixel(1, 1),
        &level_colour(NoiseLevel::GENIE_DEFAULT)
    );

    let device = Device::default();
    let live = LiveModel::start(Arc::clone(&augmenter), MeanColour, LiveConfig::default()).unwrap();
    let chosen = NoiseLevel::parse("0.6").unwrap();
    let pairs = augmenter.stats().pairs;
    // Keep batching so that the probes find every level of every pair.
    wait_until("every level of every pair", || {
        batcher.batch(batch(7), &device);
        augmenter.stats().ada_scorable == pairs
    });
    assert_eq!(live.publish(colour_model()), Some(1));
    // Reproducible mode: the choices apply at the next snapshot or sync, not before.
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(augmenter.stats().ada_choices, 0);
    live.sync();
    assert_eq!(augmenter.stats().ada_choices, pairs);
    for (id, record) in augmenter.ada_records() {
        assert_eq!(record.level, Some(chosen), "pair {id}: {record:?}");
        assert_eq!(record.curve.len(), 5);
        assert_eq!(record.model_version, 1);
        assert_eq!(augmenter.current_level(id), Some(chosen));
    }
    assert_eq!(augmenter.level_histogram().get(&chosen), Some(&pairs));
    let b = batcher.batch(batch(9), &device);
    let mixed: Vec<_> = b.iter().filter(|i| i.is_generated()).collect();
    assert!(!mixed.is_empty());
    for g in mixed {
        assert_eq!(g.rgb().unwrap().get_pixel(1, 1), &level_colour(chosen));
    }
    // A new model version re-scores every pair without new diffusion; this model sees the
    // colours differently, so every choice moves.
    let before = augmenter.stats().requested;
    assert_eq!(live.publish(blind_model()), Some(2));
    live.sync();
    assert!(augmenter
        .ada_records()
        .iter()
        .all(|(_, r)| r.model_version == 2));
    assert_eq!(augmenter.stats().requested, before);
    for (id, record) in augmenter.ada_records() {
        let level = record.level.expect("scored");
        assert!(
            level > chosen,
            "pair {id}: the blind model still chose {level}: {record:?}"
        );
        assert_eq!(augmenter.current_level(id), Some(level));
    }
    // Every choice is filed in the cache too (for `genie sheet`), the latest version winning.
    for (id, r) in augmenter.ada_records() {
        let key = augmenter.pair_record_key(id).unwrap();
        let filed = augmenter.cache().ada_choice(&key).unwrap().expect("filed");
        // JSON keeps d_m to within an ulp (serde_json's float parsing).
        let close = filed.curve.len() == r.curve.len()
            && filed
                .curve
                .iter()
                .zip(&r.curve)
                .all(|(a, b)| (a - b).abs() <= 1e-12 * b.abs().max(1.0));
        assert!(
            filed.model_version == 2
                && filed.chosen_level() == r.level
                && close
                && filed.noise_levels() == NoiseLevel::ADA_SWEEP.to_vec(),
            "pair {id}: {filed:?} vs {r:?}"
        );
    }
    let stats = live.stop();
    assert_eq!(stats.unscorable, 0);
    assert_eq!(stats.scored, 2 * pairs as u64);
    assert_eq!(stats.snapshots, 2);
}

/// `share: ∞` re-scores every pair at every snapshot, also at a snapshot with nothing trained
/// since the one before (no batch in between).
#[test]
fn an_unlimited_share_rescores_every_pair_at_every_snapshot() {
    let cache = memory_cache(1 << 20);
    let generator = open_generator(Arc::clone(&cache), 64);
    let augmenter =
        Arc::new(Augmenter::new(policy(2), keys(), cache, Some(generator), config(true)).unwrap());
    let batcher = GenieBatcher::new(Identity, Arc::clone(&augmenter));
    let device = Device::default();
    let pairs = augmenter.stats().pairs.max(1);
    wait_until("every level of every pair", || {
        batcher.batch(batch(7), &device);
        let s = augmenter.stats();
        s.pairs >= pairs && s.ada_scorable == s.pairs
    });
    let pairs = augmenter.stats().pairs;
    let live = LiveModel::start(Arc::clone(&augmenter), MeanColour, {
        let mut options = LiveConfig::default();
        options.every = 1;
        options.share = f64::INFINITY;
        options
    })
    .unwrap();
    let model = colour_model();
    for version in 1..=3u64 {
        live.observe(&model);
        live.sync();
        assert_eq!(live.version(), version);
        let records = augmenter.ada_records();
        assert_eq!(records.len(), pairs);
        assert!(records.iter().all(|(_, r)| r.model_version == version));
    }
    assert_eq!(live.stop().scored, 3 * pairs as u64);
}

#[test]
fn memory_held_hard_negatives_stay_within_the_budget() {
    // Room for about three 8×8 images in memory; many more pairs than that.
    let budget = 3 * (SIDE * SIDE * 3) as usize + 3 * genie::cache::ENTRY_OVERHEAD_BYTES;
    let cache = memory_cache(budget);
    let generator = open_generator(Arc::clone(&cache), 256);
    let augmenter = Arc::new(
        Augmenter::new(policy(50), keys(), Arc::clone(&cache), Some(generator), {
            let mut options = config(false);
            options.item_memory_bytes = 3 * item(0, 0).heap_bytes() + 100;
            options
        })
        .unwrap(),
    );
    let batcher = GenieBatcher::new(Identity, Arc::clone(&augmenter));
    let device = Device::default();
    for round in 0..60 {
        batcher.batch(batch(round), &device);
        let usage = cache.memory_usage();
        assert!(usage.used_bytes <= usage.budget_bytes, "{usage:?}");
        let items = augmenter.item_memory();
        assert!(items.used_bytes <= items.budget_bytes, "{items:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
    let stats = augmenter.stats();
    assert!(stats.pairs > 10 && stats.mixed > 10, "{stats:?}");
    assert!(augmenter.item_memory().items <= 3);
}

#[test]
fn batcher_updates_the_class_statistics_of_every_batch() {
    let cache = memory_cache(1 << 20);
    let generator = open_generator(Arc::clone(&cache), 64);
    let augmenter = Augmenter::new(policy(8), keys(), cache, Some(generator), config(false));
    let batcher = GenieBatcher::new(Identity, Arc::new(augmenter.unwrap()));
    let mut batches = run_until_mixed(&batcher);
    // A batch that already holds a hard negative (e.g. from a GenieDataset): it is no real item.
    let mut with_generated = batch(500);
    with_generated[0] = batches
        .last()
        .unwrap()
        .iter()
        .find(|i| i.is_generated())
        .unwrap()
        .clone();
    batches.push(batcher.batch(with_generated, &Device::default()));

    let counts = batcher.augmenter().batch_counts();
    let rounds = batches.len() as u64;
    assert_eq!(counts.seen, vec![13 * rounds - 1, rounds, rounds, rounds]);
    assert_eq!(counts.unknown_labels, 0);
    let generated = |b: &Vec<ImageItem>| b.iter().filter(|i| i.is_generated()).count();
    let mixed: usize = batches.iter().map(generated).sum::<usize>() - 1;
    assert!(mixed > 0);
    assert_eq!(
        counts.mixed,
        vec![0, 0, 0, mixed as u64],
        "hard negatives of the target only"
    );
    assert_eq!(
        counts.replaced,
        vec![mixed as u64, 0, 0, 0],
        "the over-represented class gave way"
    );
    // What reached training, per class, is exactly what the batches' outputs hold.
    for class in 0..CLASSES {
        let out: usize = batches
            .iter()
            .map(|b| b.iter().filter(|i| i.label() == Some(class)).count())
            .sum();
        let fed_generated = usize::from(class == 3);
        assert_eq!(
            counts.trained(class) as usize,
            out - fed_generated,
            "class {class}"
        );
    }
}

#[test]
fn batcher_counts_the_first_epoch_then_targets_its_few_classes() {
    let cache = memory_cache(1 << 20);
    let generator = open_generator(Arc::clone(&cache), 64);
    // One epoch is 10 of our batches: 130 items of class 0, 10 of each other class.
    let policy = Policy::long_tail_from_batches(CLASSES, 160, PolicyConfig::long_tail()).unwrap();
    let augmenter = Augmenter::new(policy, keys(), cache, Some(generator), config(false));
    let batcher = GenieBatcher::new(Identity, Arc::new(augmenter.unwrap()));
    let device = Device::default();
    for round in 0..9 {
        let out = batcher.batch(batch(round), &device);
        assert!(!out.iter().any(GenieItem::is_generated));
    }
    assert_eq!(
        batcher.augmenter().stats().pairs,
        0,
        "no pairs before the epoch is counted"
    );
    assert!(!batcher.augmenter().with_policy(Policy::targets_decided));
    batcher.batch(batch(9), &device);
    batcher.augmenter().with_policy(|p| {
        assert!(p.targets_decided());
        assert_eq!(p.stats().counts(), &[130, 10, 10, 10]);
        assert_eq!(p.targets(), vec![1, 2, 3]);
    });
    let batches = run_until_mixed(&batcher);
    let generated = batches.last().unwrap().iter().filter(|i| i.is_generated());
    for g in generated {
        assert!(
            (1..CLASSES).contains(&g.label().unwrap()),
            "{:?}",
            g.label()
        );
    }
}

#[test]
fn genie_dataset_follows_the_quotas() {
    let mut items = Vec::new();
    for (class, &count) in stats().counts().iter().enumerate() {
        items.extend((0..count).map(|n| item(class, n)));
    }
    let inner = InMemDataset::new(items);
    let policy = policy(6);
    let keys = keys();
    let level = NoiseLevel::GENIE_DEFAULT;
    let plan = OfflinePlan::new(&inner, &policy, &keys, &[level], None).unwrap();
    assert_eq!(plan.negatives.len(), 6);
    assert!(plan.negatives.iter().all(|n| n.target == 3));
    let cache = memory_cache(0);
    // Pre-warm four of the six through the generator.
    let generator = open_generator(Arc::clone(&cache), 64);
    let partial = OfflinePlan {
        negatives: plan.negatives[..4].to_vec(),
        ..plan.clone()
    };
    assert_eq!(
        partial.request_missing(&inner, &keys, &generator).unwrap(),
        4
    );
    Arc::into_inner(generator)
        .unwrap()
        .shutdown(Shutdown::Drain);
    assert_eq!(plan.missing(&cache).unwrap().len(), 2);

    let dataset = GenieDataset::new(inner, Arc::clone(&cache), &plan).unwrap();
    let originals = 300 + 120 + 60 + 5;
    assert_eq!(dataset.len(), originals + 4);
    for i in 0..4 {
        let negative = dataset.get(originals + i).unwrap();
        assert!(negative.is_generated());
        assert_eq!(negative.label(), Some(3));
        let source = dataset.get(plan.negatives[i].source_index).unwrap();
        assert_ne!(source.label(), Some(3));
    }
    assert_eq!(dataset.get(0).unwrap().label(), Some(0));
}

#[test]
fn confusion_metric_feeds_the_policy_matrix() {
    use burn::data::dataset::Dataset as _;
    use burn::train::metric::{Adaptor, Metric, MetricMetadata};
    use burn::train::ClassificationOutput;
    let _ = InMemDataset::<u8>::new(vec![]).len();
    let device = Device::default();
    let confusion = SharedConfusion::new(3);
    let mut metric = ConfusionMetric::new(confusion.clone());
    // Predictions: 0→0, 1→2, 2→2, 2→1.
    let logits = Tensor::<2>::from_data(
        TensorData::new(
            vec![5.0f32, 0., 0., 0., 0., 5., 0., 0., 5., 0., 5., 0.],
            [4, 3],
        ),
        &device,
    );
    let targets = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 2], [4]), &device);
    let output = ClassificationOutput {
        loss: Tensor::zeros([1], &device),
        output: logits,
        targets,
    };
    let metadata = MetricMetadata {
        progress: burn::data::dataloader::Progress {
            items_processed: 4,
            items_total: 4,
            unit: None,
        },
        iteration: Some(0),
        lr: None,
    };
    metric.update(&output.adapt(), &metadata).unwrap();
    let m = confusion.snapshot();
    assert_eq!(m.get(1, 2), 1.0);
    assert_eq!(m.get(2, 1), 1.0);
    assert_eq!(m.get(2, 2), 1.0);
    assert_eq!(m.most_confused_with(2, 4), vec![1]);
    metric.clear();
    assert_eq!(confusion.snapshot().get(1, 2), 0.5);
}

#[test]
fn end_to_end_through_the_real_engine_on_a_disk_cache() {
    use genie::classes::ClassInfo;
    use genie::diffusion::{tiny, EngineOptions, ModelSource};
    use genie::factory::SdEngineFactory;
    let model = tempfile::tempdir().unwrap();
    tiny::write_tiny_model(model.path(), 5).unwrap();
    let factory = SdEngineFactory::new(ModelSource::Local(model.path().into()), {
        let mut options = EngineOptions::default();
        options.steps = 4;
        options
    })
    .unwrap();
    let plan = factory.plan().clone();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(Cache::open_dir(cache_dir.path(), 1 << 20).unwrap());
    let generator = Arc::new(
        Generator::start(
            Arc::new(factory),
            Arc::clone(&cache),
            GeneratorConfig::default(),
        )
        .unwrap(),
    );
    // The keys come from the engine itself: the plan the factory made is what they must match.
    let classes = names().into_iter().map(ClassInfo::named).collect();
    let augmenter = Augmenter::builder(policy(2), classes, cache)
        .generator(generator)
        .ada(false)
        .build()
        .unwrap();
    assert_eq!(augmenter.keys().fingerprint(), &plan.fingerprint);
    assert_eq!(augmenter.keys().resolution(), plan.resolution);
    let batcher = GenieBatcher::new(Identity, Arc::clone(&augmenter));
    let device = Device::default();
    let mut mixed = Vec::new();
    wait_until("a hard negative from the tiny model", || {
        let b = batcher.batch(batch(1), &device);
        assert_eq!(b.len(), 16);
        mixed = b.into_iter().filter(|i| i.is_generated()).collect();
        !mixed.is_empty()
    });
    for g in &mixed {
        assert_eq!(g.label(), Some(3));
        assert_eq!(g.rgb().unwrap().dimensions(), (SIDE, SIDE));
        // The pixels are the cached image, resized to the item's size.
        let key: genie::cache::CacheKey = g.path[genie::loader::GENERATED_PATH_PREFIX.len()..]
            .parse()
            .unwrap();
        let cached = augmenter.cache().get_image(&key).unwrap().unwrap();
        let resized =
            image::imageops::resize(&*cached, SIDE, SIDE, image::imageops::FilterType::Triangle);
        assert_eq!(g.rgb().unwrap(), resized);
    }
    // Every pair shows an item of another class (pixel (0, 0) encodes its class) as class 3.
    let pairs = augmenter.stats().pairs;
    assert!((1..=2).contains(&pairs));
    for id in 0..pairs {
        let (source, target, level) = augmenter.pair_info(id).unwrap();
        assert_eq!((target, level), (3, NoiseLevel::GENIE_DEFAULT));
        assert_ne!(
            source.get_pixel(0, 0)[0],
            3,
            "a target-class item is never a source"
        );
        assert!(augmenter.pair_key(id, NoiseLevel::GENIE_DEFAULT).is_some());
    }
}

#[test]
fn generator_says_when_its_queue_is_full() {
    use genie::generator::Priority;
    let cache = memory_cache(1 << 20);
    let gate = Arc::new(Gate::default()); // closed: the worker holds its first batch
    let generator = generator(Arc::clone(&cache), Arc::clone(&gate), 1);
    assert!(generator.has_room(Priority::Online));
    let keys = keys();
    let mut n = 0;
    wait_until("a full online queue", || {
        n += 1;
        let source = keys.source(&item(0, n).rgb().unwrap()).unwrap();
        let request = keys.request(
            source,
            3,
            vec![NoiseLevel::GENIE_DEFAULT],
            0,
            Priority::Online,
        );
        generator.request(request).unwrap();
        !generator.has_room(Priority::Online)
    });
    assert!(
        generator.has_room(Priority::Prewarm),
        "the pre-warm queue is separate"
    );
    gate.open();
    wait_until("room again", || generator.has_room(Priority::Online));
}

/// `OfflinePlan` with the five levels takes each pair's r* from a model given at build time,
/// and `GenieDataset` then serves each pair at its r*; another model chooses otherwise.
#[test]
fn offline_plan_takes_each_pairs_level_from_the_model_given() {
    let mut items = Vec::new();
    for (class, &count) in [20usize, 20, 20, 5].iter().enumerate() {
        items.extend((0..count).map(|n| item(class, n)));
    }
    let inner = InMemDataset::new(items.clone());
    let keys = keys();
    let mut plan =
        OfflinePlan::new(&inner, &policy(4), &keys, &NoiseLevel::ADA_SWEEP, None).unwrap();
    assert_eq!(plan.negatives.len(), 4);
    assert!(plan
        .negatives
        .iter()
        .all(|n| n.level == NoiseLevel::GENIE_DEFAULT && n.keys.len() == 5));
    let cache = memory_cache(1 << 20);
    let generator = open_generator(Arc::clone(&cache), 64);
    assert_eq!(
        plan.request_missing(&inner, &keys, &generator).unwrap(),
        4 * 5
    );
    Arc::into_inner(generator)
        .unwrap()
        .shutdown(Shutdown::Drain);
    assert!(plan.missing(&cache).unwrap().is_empty());

    let outcome = plan
        .choose_levels(&inner, &cache, &colour_model(), &MeanColour)
        .unwrap();
    assert_eq!(outcome.chosen, 4, "{outcome:?}");
    let six = NoiseLevel::parse("0.6").unwrap();
    assert!(plan.negatives.iter().all(|n| n.level == six));
    let dataset = GenieDataset::new(InMemDataset::new(items), Arc::clone(&cache), &plan).unwrap();
    for i in 0..4 {
        let negative = dataset.get(dataset.len() - 1 - i).unwrap();
        assert_eq!(negative.rgb().unwrap().get_pixel(2, 2), &level_colour(six));
    }

    let outcome = plan
        .choose_levels(&inner, &cache, &blind_model(), &MeanColour)
        .unwrap();
    assert_eq!(outcome.chosen, 4, "{outcome:?}");
    for n in &plan.negatives {
        assert!(n.level > six, "{:?}", n.level);
        let at = NoiseLevel::ADA_SWEEP
            .iter()
            .position(|&l| l == n.level)
            .unwrap();
        assert_eq!(n.key, n.keys[at]);
    }
    // Out of range is an error, not a panic.
    assert!(dataset.get(dataset.len()).is_err());
}

/// Writes an image-folder dataset of PNGs (`side` px, one colour per class, the image's number
/// in its left half) and returns it scanned.
fn image_folder(
    dir: &std::path::Path,
    counts: &[(&str, usize)],
    side: u32,
) -> genie::warm::ImageFolder {
    for (class, (name, count)) in counts.iter().enumerate() {
        let class_dir = dir.join(name);
        std::fs::create_dir_all(&class_dir).unwrap();
        for n in 0..*count {
            let img = RgbImage::from_fn(side, side, |x, _| {
                if x < side / 2 {
                    Rgb([40 * class as u8, (n * 7 % 256) as u8, 100])
                } else {
                    Rgb([40 * class as u8, 200, 9])
                }
            });
            img.save(class_dir.join(format!("{n:03}.png"))).unwrap();
        }
    }
    genie::warm::ImageFolder::scan(dir).unwrap()
}

/// Training items of a folder: small thumbnails that remember their file.
fn folder_items(folder: &genie::warm::ImageFolder) -> Vec<ImageItem> {
    folder
        .images
        .iter()
        .map(|(path, label)| {
            let img = genie::image_io::open_rgb(path).unwrap();
            let thumb = genie::image_io::resize_center_crop(&img, 4).unwrap();
            image_item(&thumb, *label, path.display().to_string())
        })
        .collect()
}

/// A pre-warm plan and training are one plan: after `build_plan` and a pre-warm of exactly
/// its keys, training with the generator off mixes only cache hits, and uses every pair.
#[test]
fn a_loaded_plan_is_exactly_what_training_mixes_from_a_pre_warmed_cache() {
    use genie::policy::SourceStrategy;
    use genie::warm::{build_plan, plan_pairs, PlanMode, PlanOptions};
    let dir = tempfile::tempdir().unwrap();
    let folder = image_folder(
        dir.path(),
        &[("alpha", 30), ("beta", 24), ("delta", 12), ("gamma", 4)],
        16,
    );
    let keys = KeySpace::new(fingerprint(), SIDE, folder.classes.clone());
    let mut options = PlanOptions::default();
    options.mode = PlanMode::LongTail;
    options.levels = NoiseLevel::ADA_SWEEP.to_vec();
    options.per_class = Some(6);
    options.sources = SourceStrategy::Uniform;
    options.confusion = None;
    options.variants = 1;
    options.seed = 3;
    let (entries, _) = build_plan(&folder, &options, &keys).unwrap();
    let pairs = plan_pairs(&entries);
    assert_eq!(pairs.len(), 12, "two Few classes, six each");

    // Pre-warm exactly the plan, as `genie warm run` does.
    let cache = memory_cache(1 << 20);
    let generator = open_generator(Arc::clone(&cache), 256);
    for p in &pairs {
        let source = keys
            .source(&genie::image_io::open_rgb(&p.source).unwrap())
            .unwrap();
        let target = keys.class_index(&p.target).unwrap();
        let levels = p.levels.iter().map(|&(l, _)| l).collect();
        let request = keys.request(
            source,
            target,
            levels,
            p.seed,
            genie::generator::Priority::Prewarm,
        );
        generator.request(request).unwrap();
    }
    Arc::into_inner(generator)
        .unwrap()
        .shutdown(Shutdown::Drain);
    for e in &entries {
        assert!(cache.contains(&e.key).unwrap(), "{} was pre-warmed", e.key);
    }

    // Training: thumbnails of the same files, no generator.
    let items = folder_items(&folder);
    let stats = ClassStats::from_labels(folder.labels(), folder.classes.len()).unwrap();
    let policy = Policy::long_tail(stats, PolicyConfig::long_tail()).unwrap();
    let augmenter = Arc::new(
        Augmenter::new(policy, keys.clone(), Arc::clone(&cache), None, config(true))
            .unwrap()
            .with_plan(&pairs)
            .unwrap(),
    );
    let batcher = GenieBatcher::new(Identity, Arc::clone(&augmenter));
    let planned: std::collections::HashSet<String> =
        entries.iter().map(|e| e.key.to_string()).collect();
    let device = Device::default();
    let mut mixed = 0;
    for epoch in 0..4 {
        // A fixed shuffle per epoch.
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.rotate_left(epoch * 17 % items.len());
        for chunk in order.chunks(16) {
            let batch = chunk.iter().map(|&i| items[i].clone()).collect();
            for out in batcher.batch(batch, &device) {
                if out.is_generated() {
                    let key = &out.path[genie::loader::GENERATED_PATH_PREFIX.len()..];
                    assert!(planned.contains(key), "{key} is not in the plan");
                    mixed += 1;
                }
            }
        }
    }
    let stats = augmenter.stats();
    assert_eq!(stats.planned, 12);
    assert_eq!(stats.pairs, 12, "every planned pair started: {stats:?}");
    assert_eq!(stats.lookups_failed, 0, "every mix was a cache hit");
    assert_eq!(stats.mixed, mixed as u64);
    for id in 0..stats.pairs {
        assert!(augmenter.uses(id) >= 1, "pair {id} was never mixed");
    }
    augmenter.with_policy(|p| {
        let targets: Vec<&str> = p
            .targets()
            .iter()
            .map(|&t| folder.classes[t].as_str())
            .collect();
        assert_eq!(targets, ["delta", "gamma"]);
    });

    // The offline protocol takes the same plan: every pair found in the dataset, all cached.
    let inner = InMemDataset::new(items.clone());
    let offline =
        OfflinePlan::from_plan(&inner, &pairs, &keys, &[NoiseLevel::GENIE_DEFAULT]).unwrap();
    assert_eq!(offline.negatives.len(), 12);
    assert!(offline.missing(&cache).unwrap().is_empty());
    let with_negatives = GenieDataset::new(inner, Arc::clone(&cache), &offline).unwrap();
    assert_eq!(with_negatives.len(), items.len() + 12);
    // A plan source the dataset lacks is an error that names it.
    let without_source: Vec<_> = items
        .iter()
        .filter(|i| i.source_id() != pairs[0].source_id())
        .cloned()
        .collect();
    assert_eq!(without_source.len(), items.len() - 1);
    let err = OfflinePlan::from_plan(
        &InMemDataset::new(without_source),
        &pairs,
        &keys,
        &[NoiseLevel::GENIE_DEFAULT],
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("not in the dataset"), "{err}");
    // The plan must fit this run: other levels, or another engine, are errors up front.
    let fixed_only = || {
        Augmenter::<ImageItem>::new(
            Policy::long_tail(
                ClassStats::from_labels(folder.labels(), 4).unwrap(),
                PolicyConfig::long_tail(),
            )
            .unwrap(),
            keys.clone(),
            Arc::clone(&cache),
            None,
            config(true),
        )
        .unwrap()
    };
    let eight_only: Vec<_> = entries
        .iter()
        .filter(|e| e.r == NoiseLevel::GENIE_DEFAULT)
        .cloned()
        .collect();
    let err = fixed_only()
        .with_plan(&plan_pairs(&eight_only))
        .err()
        .unwrap();
    assert!(
        matches!(err, genie::loader::AugmenterError::PlanLevel { .. }),
        "{err}"
    );
    let other_engine = KeySpace::new(
        EngineFingerprint {
            steps: 2,
            ..fingerprint()
        },
        SIDE,
        folder.classes.clone(),
    );
    let err = Augmenter::<ImageItem>::new(
        Policy::long_tail(
            ClassStats::from_labels(folder.labels(), 4).unwrap(),
            PolicyConfig::long_tail(),
        )
        .unwrap(),
        other_engine,
        cache,
        None,
        config(true),
    )
    .unwrap()
    .with_plan(&pairs)
    .err()
    .unwrap();
    assert!(
        matches!(err, genie::loader::AugmenterError::PlanKey { .. }),
        "{err}"
    );
}

/// Diffusion starts from the item's original file, not its small training copy: the pair's
/// key hashes the original resized to the engine's size.
#[test]
fn sources_are_read_from_the_original_file_at_full_resolution() {
    let dir = tempfile::tempdir().unwrap();
    let folder = image_folder(dir.path(), &[("alpha", 30), ("beta", 3)], 64);
    let items = folder_items(&folder);
    let keys = KeySpace::new(fingerprint(), SIDE, folder.classes.clone());
    let cache = memory_cache(1 << 20);
    let generator = open_generator(Arc::clone(&cache), 64);
    let stats = ClassStats::from_labels(folder.labels(), 2).unwrap();
    let augmenter = Arc::new(
        Augmenter::new(
            Policy::long_tail(stats, PolicyConfig::long_tail()).unwrap(),
            keys.clone(),
            cache,
            Some(generator),
            config(false),
        )
        .unwrap(),
    );
    let batcher = GenieBatcher::new(Identity, Arc::clone(&augmenter));
    batcher.batch(items[..16].to_vec(), &Device::default());
    let pairs = augmenter.with_policy(|p| p.pairs().to_vec());
    assert!(!pairs.is_empty());
    for pair in pairs {
        let item = items
            .iter()
            .find(|i| {
                keys.source(&genie::image_io::open_rgb(std::path::Path::new(&i.path)).unwrap())
                    .unwrap()
                    .hash
                    == pair.source_hash
            })
            .expect("the pair's source hash is an original file's, at the engine's size");
        let thumb = keys.source(&item.rgb().unwrap()).unwrap();
        assert_ne!(thumb.hash, pair.source_hash, "not the upscaled thumbnail");
    }
}

/// The builder takes the cache keys from the generator's engine (or from the engine that
/// pre-warmed the cache), refuses a generator and a pre-warm engine that differ, and refuses to
/// guess when given neither.
#[test]
fn the_builder_derives_keys_from_the_engine_and_refuses_mismatches() {
    use genie::classes::ClassInfo;
    use genie::loader::AugmenterError;
    let classes = || {
        names()
            .into_iter()
            .map(ClassInfo::named)
            .collect::<Vec<_>>()
    };
    let cache = || Arc::new(Cache::new(Arc::new(MemoryStore::new()), 1 << 20));
    let generator = open_generator(cache(), 8);

    let built = Augmenter::<ImageItem>::builder(policy(2), classes(), cache())
        .generator(Arc::clone(&generator))
        .pre_warmed_by(&fingerprint())
        .superclass("colour")
        .config(config(true))
        .ada(false)
        .build()
        .unwrap();
    assert_eq!(built.keys().fingerprint(), &fingerprint());
    assert_eq!(built.keys().resolution(), SIDE);
    assert_eq!(
        built.keys().prompt(1),
        "a photo of a beta, a type of colour."
    );
    assert_eq!(
        built.levels(),
        &[NoiseLevel::GENIE_DEFAULT],
        "ada(false) after config"
    );

    let other = engine_fingerprint("another-engine", SIDE);
    match Augmenter::<ImageItem>::builder(policy(2), classes(), cache())
        .generator(Arc::clone(&generator))
        .pre_warmed_by(&other)
        .build()
    {
        Err(AugmenterError::FingerprintMismatch { generator, keys }) => {
            assert!(generator.starts_with("colour-engine ("), "{generator}");
            assert!(keys.starts_with("another-engine ("), "{keys}");
        }
        other => panic!(
            "expected a fingerprint mismatch, got {:?}",
            other.map(|_| ())
        ),
    }
    let offline = Augmenter::<ImageItem>::builder(policy(2), classes(), cache())
        .pre_warmed_by(&other)
        .build()
        .unwrap();
    assert_eq!(offline.keys().fingerprint(), &other);
    assert!(matches!(
        Augmenter::<ImageItem>::builder(policy(2), classes(), cache()).build(),
        Err(AugmenterError::NoEngine)
    ));
    assert!(matches!(
        Augmenter::<ImageItem>::builder(policy(2), classes()[..3].to_vec(), cache())
            .pre_warmed_by(&other)
            .build(),
        Err(AugmenterError::ClassNames { .. })
    ));
}
