//! GeNIe-Ada with the live model: the batcher mixes the level the model chose, an unlimited
//! share rescores every pair, and offline plans take each pair's level from the model given.

use super::*;

#[test]
fn batcher_uses_the_level_ada_chose_with_the_live_model() {
    let (augmenter, batcher) = ada_batcher();
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
    let (augmenter, batcher) = ada_batcher();
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

/// A GeNIe-Ada augmenter (two images per target) with an open generator, and a batcher over it.
fn ada_batcher() -> (Arc<Augmenter<ImageItem>>, GenieBatcher<Identity, ImageItem>) {
    let cache = memory_cache(1 << 20);
    let generator = open_generator(Arc::clone(&cache), 64);
    let augmenter =
        Arc::new(Augmenter::new(policy(2), keys(), cache, Some(generator), config(true)).unwrap());
    (
        Arc::clone(&augmenter),
        GenieBatcher::new(Identity, augmenter),
    )
}
