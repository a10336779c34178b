//! GenieDataset's quotas, pre-warm plans loaded into training, sources read from the original
//! file, and the builder's keys and refusals.

use super::*;

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
