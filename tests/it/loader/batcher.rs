//! GenieBatcher: mixes hard negatives without ever blocking, labels them with their target,
//! keeps the batch size and memory budget, updates the class statistics and the confusion
//! matrix; one end-to-end run on the tiny model.

use super::*;

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
