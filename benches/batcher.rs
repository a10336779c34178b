//! What GenieBatcher costs a training loop:
//! - `batch_assembly`: one batch of 32 (32×32) items through the plain batcher vs GenieBatcher
//!   with every hard negative already cached (8 of 32 items replaced: mixing limited by the batch
//!   fraction only, the most work a batch can have), that wrapper's own work alone
//!   (`genie_augment_only`, which includes cloning the batch's items), and GenieBatcher with a
//!   loaded pre-warm plan (`genie_plan_loaded`, no generator, default exposure);
//! - `pair_seed`: deriving one pair's noise seed;
//! - `train_step`: a full step of the example CNN (batch, forward, backward, Adam) with the plain
//!   batcher vs GenieBatcher while the generator is saturated (its engine never finishes, its
//!   queue is full) and the cache is empty, so every batch starts pairs and is refused.
//! - The same with the generator behind `genie serve` on loopback (a server in this process,
//!   reached through a `RemoteGenerator`): `genie_remote_all_cached` and its paired ratio, and
//!   `genie_remote_saturated_server`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::data::dataloader::batcher::Batcher;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::Device;
use criterion::{criterion_group, criterion_main, Criterion};
use genie::cache::EntryMeta;
use genie::cache::{Cache, MemoryStore};
use genie::classes::ClassInfo;
use genie::generator::{Generator, GeneratorConfig};
use genie::loader::ImageItem;
use genie::loader::{image_item, Augmenter, GenieBatcher, GenieItem, KeySpace};
use genie::policy::{ClassStats, Policy, PolicyConfig};
use genie::remote::server::{BackgroundServer, ServeConfig};
use genie::remote::{RemoteConfig, RemoteGenerator};
use genie::testing::{FakeFactory, Gate};
use genie::warm::PlannedPair;
use genie::{synthetic, EngineFingerprint, NoiseLevel};
use image::RgbImage;

#[path = "../examples/common/mod.rs"]
mod common;
use common::{Cnn, ImageBatch, ImageBatcher};

const SIDE: u32 = 32;
const ENGINE_SIDE: u32 = 64;
const BATCH: usize = 32;

fn fingerprint() -> EngineFingerprint {
    EngineFingerprint {
        model: "bench-engine".into(),
        scheduler: "none".into(),
        steps: 1,
        guidance: "1".into(),
        resolution: ENGINE_SIDE,
        dtype: "f32".into(),
        algorithm_version: 1,
    }
}

/// Flat grey images, instantly once `gate` is open.
fn flat_factory(gate: Arc<Gate>) -> Arc<FakeFactory> {
    Arc::new(
        FakeFactory::new(fingerprint(), ENGINE_SIDE, |_, _| image::Rgb([90; 3])).with_gate(gate),
    )
}

/// The long-tail example's dataset: 500 … 5 images over 10 classes.
fn dataset() -> (Vec<ImageItem>, ClassStats) {
    let counts = synthetic::long_tail_counts(10, 500, 5);
    let items: Vec<_> = synthetic::long_tail_dataset(&counts, SIDE, 0)
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(n, s)| {
            let class = synthetic::CLASS_NAMES[s.label];
            image_item(&s.image, s.label, format!("data/{class}/{n:04}.png"))
        })
        .collect();
    (items, ClassStats::from_counts(counts))
}

/// Deterministic batches cycling through the dataset with a stride (like a shuffled loader).
fn batches(items: &[ImageItem], count: usize) -> Vec<Vec<ImageItem>> {
    (0..count)
        .map(|b| {
            (0..BATCH)
                .map(|i| items[(b * BATCH + i) * 7919 % items.len()].clone())
                .collect()
        })
        .collect()
}

fn augmenter(
    stats: ClassStats,
    queue_capacity: usize,
    gate: Arc<Gate>,
) -> (Arc<Augmenter<ImageItem>>, Arc<Generator>) {
    let cache = Arc::new(Cache::new(Arc::new(MemoryStore::new()), 256 << 20));
    let generator = Arc::new(
        Generator::start(flat_factory(gate), Arc::clone(&cache), {
            let mut options = GeneratorConfig::default();
            options.queue_capacity = queue_capacity;
            options
        })
        .unwrap(),
    );
    let policy = Policy::long_tail(stats, most_mixing()).unwrap();
    let augmenter = Augmenter::builder(policy, classes(), cache)
        .generator(Arc::clone(&generator))
        .ada(false)
        .build()
        .unwrap();
    (augmenter, generator)
}

/// [`augmenter`] with its generator behind `genie serve` on loopback: the server writes into the
/// cache the augmenter reads (shared here; a folder or bucket between machines).
fn remote_augmenter(
    stats: ClassStats,
    queue_capacity: usize,
    gate: Arc<Gate>,
) -> (Arc<Augmenter<ImageItem>>, BackgroundServer) {
    let cache = Arc::new(Cache::new(Arc::new(MemoryStore::new()), 256 << 20));
    let generator = Generator::start(flat_factory(gate), Arc::clone(&cache), {
        let mut options = GeneratorConfig::default();
        options.queue_capacity = queue_capacity;
        options
    })
    .unwrap();
    let server = BackgroundServer::start(generator, "127.0.0.1:0", ServeConfig::default()).unwrap();
    let remote =
        RemoteGenerator::connect(&server.url(), &fingerprint(), RemoteConfig::default()).unwrap();
    let policy = Policy::long_tail(stats, most_mixing()).unwrap();
    let augmenter = Augmenter::builder(policy, classes(), cache)
        .generator(Arc::new(remote))
        .ada(false)
        .build()
        .unwrap();
    (augmenter, server)
}

fn classes() -> Vec<ClassInfo> {
    synthetic::CLASS_NAMES.map(ClassInfo::named).to_vec()
}

fn keys() -> KeySpace {
    KeySpace::with_classes(fingerprint(), ENGINE_SIDE, classes())
}

/// The paper's long-tail policy, mixing up to the batch fraction in every batch.
fn most_mixing() -> PolicyConfig {
    let mut options = PolicyConfig::long_tail();
    options.uses_per_epoch = None;
    options
}

/// An augmenter with a loaded plan (the offline plan of the long-tail policy at r = 0.8, every
/// key pre-warmed in its cache), no generator, and every planned pair started and ready.
fn planned_augmenter(items: &[ImageItem], stats: ClassStats) -> Arc<Augmenter<ImageItem>> {
    let keys = keys();
    let cache = Arc::new(Cache::new(Arc::new(MemoryStore::new()), 256 << 20));
    let policy = Policy::long_tail(stats.clone(), PolicyConfig::long_tail()).unwrap();
    let labels: Vec<usize> = items.iter().map(|i| i.label().unwrap()).collect();
    let level = NoiseLevel::GENIE_DEFAULT;
    let mut pairs = Vec::new();
    for (index, target, variant) in policy.offline_plan(&labels, None) {
        let item = &items[index];
        let hash = keys.source(&item.rgb().unwrap()).unwrap().hash;
        let seed = keys.pair_seed(0, hash, target, variant);
        let key = keys.key(hash, target, level, seed);
        let meta = EntryMeta {
            target: keys.class_label(target),
            prompt: keys.prompt(target),
            level,
            seed,
            source: None,
            fingerprint: fingerprint(),
            width: 0,
            height: 0,
        };
        let image = RgbImage::from_pixel(ENGINE_SIDE, ENGINE_SIDE, image::Rgb([90; 3]));
        cache.put_image(&key, &image, meta).unwrap();
        pairs.push(PlannedPair {
            source: item.path.clone().into(),
            source_class: keys.class_id(labels[index]),
            target: keys.class_id(target),
            variant,
            seed,
            source_hash: hash,
            levels: vec![(level, key)],
        });
    }
    let planned = pairs.len();
    let augmenter = Augmenter::builder(policy, classes(), cache)
        .pre_warmed_by(keys.fingerprint())
        .ada(false)
        .plan(pairs)
        .build()
        .unwrap();
    for b in batches(items, 200) {
        augmenter.augment(b);
    }
    let s = augmenter.stats();
    assert!(
        s.pairs == s.planned && s.ready == s.planned && s.planned == planned,
        "the plan did not start: {s:?}"
    );
    augmenter
}

fn batch_assembly(c: &mut Criterion) {
    let (items, stats) = dataset();
    let device = Device::flex();
    let plain = ImageBatcher { side: SIDE };
    let gate = Gate::closed();
    gate.open();
    let (augmenter, generator) = augmenter(stats, 4096, gate);
    let genie = GenieBatcher::new(plain.clone(), Arc::clone(&augmenter));
    // Fill every quota and wait until every hard negative is cached and probed.
    let warm = batches(&items, 400);
    for round in 0..50 {
        for b in &warm {
            let _: ImageBatch = genie.batch(b.clone(), &device);
        }
        let s = augmenter.stats();
        if s.pairs == 150 && s.ready == 150 && generator.stats().queue_len == 0 {
            break;
        }
        assert!(round < 49, "warm-up did not converge: {s:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let work = batches(&items, 64);
    let mut group = c.benchmark_group("batch_assembly");
    // The difference is a few per cent of ~150 µs: long runs keep the VM's noise below it.
    group.measurement_time(Duration::from_secs(15));
    let mut i = 0;
    group.bench_function("plain", |b| {
        b.iter(|| {
            i = (i + 1) % work.len();
            let _: ImageBatch = plain.batch(work[i].clone(), &device);
        })
    });
    let before = augmenter.stats().mixed;
    group.bench_function("genie_all_cached", |b| {
        b.iter(|| {
            i = (i + 1) % work.len();
            let _: ImageBatch = genie.batch(work[i].clone(), &device);
        })
    });
    // Cloning a batch (every case above pays it), then the wrapper's own work on top of it.
    group.bench_function("clone_only", |b| {
        b.iter(|| {
            i = (i + 1) % work.len();
            work[i].clone()
        })
    });
    group.bench_function("genie_augment_only", |b| {
        b.iter(|| {
            i = (i + 1) % work.len();
            augmenter.augment(work[i].clone())
        })
    });
    let planned = planned_augmenter(&items, dataset().1);
    let genie_planned = GenieBatcher::new(plain.clone(), Arc::clone(&planned));
    group.bench_function("genie_plan_loaded", |b| {
        b.iter(|| {
            i = (i + 1) % work.len();
            let _: ImageBatch = genie_planned.batch(work[i].clone(), &device);
        })
    });
    let (remote, _server) = remote_augmenter(dataset().1, 4096, {
        let gate = Gate::closed();
        gate.open();
        gate
    });
    let genie_remote = GenieBatcher::new(plain.clone(), Arc::clone(&remote));
    for round in 0..100 {
        for b in &warm {
            let _: ImageBatch = genie_remote.batch(b.clone(), &device);
        }
        let s = remote.stats();
        if s.pairs == 150 && s.ready == 150 {
            break;
        }
        assert!(round < 99, "remote warm-up did not converge: {s:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    group.bench_function("genie_remote_all_cached", |b| {
        b.iter(|| {
            i = (i + 1) % work.len();
            let _: ImageBatch = genie_remote.batch(work[i].clone(), &device);
        })
    });
    group.finish();
    paired_ratio("all cached, most mixing", &plain, &genie, &work, &device);
    paired_ratio(
        "remote client, all cached, most mixing",
        &plain,
        &genie_remote,
        &work,
        &device,
    );
    paired_ratio("plan loaded", &plain, &genie_planned, &work, &device);
    let p = planned.stats();
    assert!(p.mixed > 0 && p.lookups_failed == 0, "{p:?}");
    let s = augmenter.stats();
    assert!(s.mixed > before, "no hard negative was mixed: {s:?}");
    eprintln!(
        "batch_assembly: {} hard negatives mixed, {} lookups failed",
        s.mixed - before,
        s.lookups_failed
    );
}

/// The two batchers timed alternately on the same batch, so that the VM's drift between two
/// criterion runs does not enter their ratio; medians of 20 000 pairs.
fn paired_ratio(
    what: &str,
    plain: &ImageBatcher,
    genie: &GenieBatcher<ImageBatcher, ImageItem>,
    work: &[Vec<ImageItem>],
    device: &Device,
) {
    const PAIRS: usize = 20_000;
    let mut times = [Vec::with_capacity(PAIRS), Vec::with_capacity(PAIRS)];
    for n in 0..PAIRS {
        let items = &work[n % work.len()];
        // Alternate which one goes first, so neither always finds the caches warmed by the other.
        for k in [n % 2, 1 - n % 2] {
            let batch = items.clone();
            let start = Instant::now();
            let out: ImageBatch = if k == 0 {
                plain.batch(batch, device)
            } else {
                genie.batch(batch, device)
            };
            drop(black_box(out));
            times[k].push(start.elapsed());
        }
    }
    let [p, g] = times.map(|mut t| {
        t.sort_unstable();
        t[t.len() / 2]
    });
    eprintln!(
        "batch_assembly paired, {what} ({PAIRS} alternating pairs, medians): plain {:.1} µs, \
         GenieBatcher {:.1} µs, ratio {:.3}",
        p.as_secs_f64() * 1e6,
        g.as_secs_f64() * 1e6,
        g.as_secs_f64() / p.as_secs_f64()
    );
}

fn train_step(c: &mut Criterion) {
    let (items, stats) = dataset();
    let device = Device::flex().autodiff();
    let plain = ImageBatcher { side: SIDE };
    let gate = Gate::closed();
    let (augmenter, _generator) = augmenter(stats, 8, Arc::clone(&gate));
    let genie = GenieBatcher::new(plain.clone(), Arc::clone(&augmenter));
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let work = batches(&items, 64);

    let mut group = c.benchmark_group("train_step");
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(20));
    let mut run = |name: &str, batcher: &dyn Batcher<ImageItem, ImageBatch>| {
        let mut model = Some(Cnn::new(10, &device));
        let mut optim = AdamConfig::new().init();
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % work.len();
                let batch = batcher.batch(work[i].clone(), &device);
                let m = model.take().unwrap();
                let loss = loss_fn.forward(m.forward(batch.images), batch.targets);
                let grads = GradientsParams::from_grads(loss.backward(), &m);
                model = Some(optim.step(1e-3, m, grads));
            })
        });
    };
    let (remote, server) = remote_augmenter(dataset().1, 8, Arc::clone(&gate));
    let genie_remote = GenieBatcher::new(plain.clone(), Arc::clone(&remote));
    run("plain", &plain);
    run("genie_saturated_generator", &genie);
    run("genie_remote_saturated_server", &genie_remote);
    group.finish();
    let r = remote.stats();
    eprintln!(
        "train_step, remote: {} pairs started, {} levels deferred, {} mixed",
        r.pairs, r.deferred, r.mixed
    );
    // The server drains its queue when it stops: let its engine finish first.
    gate.open();
    drop(server);
    let s = augmenter.stats();
    assert_eq!(s.mixed, 0);
    eprintln!(
        "train_step: {} pairs started, {} levels deferred by the full queue",
        s.pairs, s.deferred
    );
    gate.open();
}

/// Deriving a pair's noise seed (once per pair, when it starts).
fn pair_seed(c: &mut Criterion) {
    let keys = keys();
    let mut n = 0u64;
    c.bench_function("pair_seed", |b| {
        b.iter(|| {
            n += 1;
            let mut hash = [7u8; 32];
            hash[..8].copy_from_slice(&n.to_le_bytes());
            keys.pair_seed(black_box(3), black_box(hash), black_box(7), 0)
        })
    });
}

criterion_group!(benches, batch_assembly, pair_seed, train_step);
criterion_main!(benches);
