//! The GeNIe policy: groups, quotas, top-k confused sources and batch mixing plans.

use genie::policy::{
    few_shot_quota, ClassStats, ConfusionMatrix, Group, Mixing, Policy, PolicyConfig,
    SourceStrategy,
};

/// 10 classes from 500 down to 5 images, like the long-tail example.
fn long_tail_stats() -> ClassStats {
    ClassStats::from_counts(vec![500, 300, 180, 110, 65, 40, 24, 14, 8, 5])
}

fn hash(n: usize) -> [u8; 32] {
    *blake3::hash(&n.to_le_bytes()).as_bytes()
}

#[test]
fn long_tail_targets_are_the_few_classes() {
    let policy = Policy::long_tail(long_tail_stats(), PolicyConfig::long_tail()).unwrap();
    assert_eq!(policy.targets(), vec![7, 8, 9]);
    assert_eq!(policy.group(0), Group::Many);
    assert_eq!(policy.group(4), Group::Medium);
    assert_eq!(policy.group(9), Group::Few);
}

#[test]
fn paper_quotas() {
    assert_eq!(PolicyConfig::long_tail().per_target, 50);
    assert_eq!(few_shot_quota(1), 4);
    assert_eq!(few_shot_quota(5), 20);
    assert_eq!(PolicyConfig::few_shot(5).per_target, 20);
    assert_eq!(PolicyConfig::few_shot(1).sources, SourceStrategy::Uniform);
}

#[test]
fn register_stops_at_the_quota_and_refuses_duplicates() {
    let mut config = PolicyConfig::long_tail();
    config.per_target = 3;
    let mut policy = Policy::long_tail(long_tail_stats(), config).unwrap();
    assert!(policy.register(0, 9, hash(1), 0).is_some());
    assert_eq!(policy.register(0, 9, hash(1), 0), None, "duplicate pair");
    assert!(policy.register(1, 9, hash(2), 0).is_some());
    assert!(policy.register(2, 9, hash(3), 0).is_some());
    assert_eq!(policy.register(3, 9, hash(4), 0), None, "quota full");
    assert_eq!(policy.pairs_of(9).len(), 3);
    assert_eq!(
        policy.register(0, 2, hash(5), 0),
        None,
        "class 2 is not a target"
    );
    assert_eq!(
        policy.register(9, 9, hash(6), 0),
        None,
        "source equals target"
    );
    // The same image may serve another target.
    assert!(policy.register(0, 8, hash(1), 0).is_some());
    // A full target is no longer proposed.
    assert!(!policy.targets_for_source(0, None).contains(&9));
    assert!(policy.targets_for_source(0, None).contains(&8));
}

#[test]
fn top_k_sources_follow_a_planted_confusion_matrix() {
    let stats = long_tail_stats();
    let mut m = ConfusionMatrix::new(10);
    // Plant: target 9 is confused with 3 (most), 0, 5 and 6; 1 only slightly; 8 with 2.
    let plant = [
        (3, 9, 40),
        (9, 3, 10),
        (0, 9, 30),
        (5, 9, 20),
        (9, 6, 15),
        (1, 9, 2),
        (2, 8, 9),
    ];
    for (truth, pred, n) in plant {
        m.record(&vec![pred; n], &vec![truth; n]);
    }
    let policy = Policy::long_tail(stats, PolicyConfig::long_tail()).unwrap();
    assert_eq!(policy.sources_for(9, Some(&m)), vec![3, 0, 5, 6]);
    assert_eq!(policy.sources_for(8, Some(&m)), vec![2]);
    // No data for target 7: uniform over the other classes.
    assert_eq!(
        policy.sources_for(7, Some(&m)),
        vec![0, 1, 2, 3, 4, 5, 6, 8, 9]
    );
    // Proposals from a batch only pair items with targets that take their class as a source.
    let mut policy = policy;
    let labels: Vec<usize> = (0..10).cycle().take(200).collect();
    for _ in 0..20 {
        for p in policy.propose(&labels, Some(&m)) {
            let sources = policy.sources_for(p.target, Some(&m));
            assert!(sources.contains(&labels[p.index]), "{p:?}");
        }
    }
    // Over many batches, target 9's sources are exactly the planted classes.
    let mut seen = std::collections::BTreeSet::new();
    for round in 0..50 {
        for p in policy.propose(&labels, Some(&m)) {
            if p.target == 9 {
                seen.insert(labels[p.index]);
            }
            policy.register(labels[p.index], p.target, hash(round * 1000 + p.index), 0);
        }
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![0, 3, 5, 6]);
}

/// The paper's long-tail policy with mixing limited by the batch fraction only.
fn unlimited() -> PolicyConfig {
    let mut options = PolicyConfig::long_tail();
    options.uses_per_epoch = None;
    options
}

#[test]
fn mixing_respects_the_fraction_and_keeps_the_batch_size() {
    let mut policy = Policy::long_tail(long_tail_stats(), unlimited()).unwrap();
    let pairs: Vec<usize> = (0..12)
        .filter_map(|i| policy.register(i % 7, 7 + i % 3, hash(i), 0))
        .collect();
    assert_eq!(pairs.len(), 12);
    // A batch dominated by class 0, with a few of classes 1 and 9.
    let mut labels = vec![0; 20];
    labels.extend([1, 1, 1, 9, 9, 2, 3, 4, 5, 6, 0, 0]);
    let plan = policy.plan_mix(&labels, &pairs);
    assert_eq!(plan.insert.len(), labels.len() / 4);
    assert_eq!(plan.replace.len(), plan.insert.len());
    assert!(plan.replace.iter().all(|&i| labels[i] == 0), "{plan:?}");
    // Spread over the three targets.
    for t in 7..10 {
        let n = plan
            .insert
            .iter()
            .filter(|&&id| policy.pair(id).unwrap().target == t)
            .count();
        assert!(n >= 2, "target {t} got {n}");
    }
    // Least-used first: the next plan takes every pair not used yet.
    let next = policy.plan_mix(&labels, &pairs);
    let unused: Vec<usize> = pairs
        .iter()
        .copied()
        .filter(|id| !plan.insert.contains(id))
        .collect();
    assert_eq!(unused.len(), 4);
    assert!(unused.iter().all(|id| next.insert.contains(id)), "{next:?}");
    // No ready pair or a tiny batch: nothing changes.
    assert_eq!(policy.plan_mix(&labels, &[]).insert.len(), 0);
    assert_eq!(policy.plan_mix(&[0, 0, 0], &pairs).insert.len(), 0);
}

#[test]
fn replacement_takes_target_items_last_and_append_mode_replaces_nothing() {
    let mut config = unlimited();
    config.mix_fraction = 0.5;
    let mut policy = Policy::long_tail(long_tail_stats(), config.clone()).unwrap();
    let pairs: Vec<usize> = (0..4)
        .filter_map(|i| policy.register(0, 9, hash(i), 0))
        .collect();
    let labels = vec![9, 9, 9, 9, 9, 1, 2, 3];
    let plan = policy.plan_mix(&labels, &pairs);
    // The three non-target items first, then one item of the target class 9.
    assert_eq!(plan.replace, vec![4, 5, 6, 7]);
    let mut policy = Policy::long_tail(long_tail_stats(), {
        let mut options = config;
        options.mixing = Mixing::Append;
        options
    })
    .unwrap();
    let pairs: Vec<usize> = (0..4)
        .filter_map(|i| policy.register(0, 9, hash(i), 0))
        .collect();
    let plan = policy.plan_mix(&labels, &pairs);
    assert!(plan.replace.is_empty());
    assert_eq!(plan.insert.len(), 4);
}

#[test]
fn offline_plan_follows_quotas_and_is_deterministic() {
    let stats = long_tail_stats();
    let labels: Vec<usize> = stats
        .counts()
        .iter()
        .enumerate()
        .flat_map(|(c, &n)| std::iter::repeat_n(c, n))
        .collect();
    let policy = Policy::long_tail(stats.clone(), PolicyConfig::long_tail()).unwrap();
    let plan = policy.offline_plan(&labels, None);
    for t in [7, 8, 9] {
        let mine: Vec<_> = plan.iter().filter(|(_, target, _)| *target == t).collect();
        assert_eq!(mine.len(), 50);
        assert!(mine.iter().all(|(i, _, v)| labels[*i] != t && *v == 0));
        let distinct: std::collections::HashSet<_> = mine.iter().map(|(i, _, _)| i).collect();
        assert_eq!(distinct.len(), 50);
    }
    assert_eq!(plan, policy.offline_plan(&labels, None));
    // Few-shot: 5-way 1-shot, every class a target, 4 each, but only 4 other images exist.
    let episode = ClassStats::from_counts(vec![1; 5]);
    let policy =
        Policy::with_targets(episode, &[0, 1, 2, 3, 4], PolicyConfig::few_shot(1)).unwrap();
    let plan = policy.offline_plan(&[0, 1, 2, 3, 4], None);
    assert_eq!(plan.len(), 5 * 4);
}

#[test]
fn bad_configuration_is_a_typed_error() {
    let mut bad = PolicyConfig::long_tail();
    bad.mix_fraction = 1.5;
    assert!(Policy::long_tail(long_tail_stats(), bad).is_err());
    assert!(Policy::with_targets(long_tail_stats(), &[12], PolicyConfig::long_tail()).is_err());
    let mut zero_k = PolicyConfig::long_tail();
    zero_k.sources = SourceStrategy::TopConfused { k: 0 };
    assert!(Policy::long_tail(long_tail_stats(), zero_k).is_err());
    for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let mut bad = PolicyConfig::long_tail();
        bad.uses_per_epoch = Some(rate);
        assert!(Policy::long_tail(long_tail_stats(), bad).is_err(), "{rate}");
    }
    let mut no_variants = PolicyConfig::long_tail();
    no_variants.variants = 0;
    assert!(Policy::long_tail(long_tail_stats(), no_variants).is_err());
}

#[test]
fn variants_count_towards_the_quota_and_are_distinct_pairs() {
    let mut config = PolicyConfig::long_tail();
    config.per_target = 5;
    config.variants = 2;
    let mut policy = Policy::long_tail(long_tail_stats(), config.clone()).unwrap();
    assert!(policy.register(0, 9, hash(1), 0).is_some());
    assert!(
        policy.register(0, 9, hash(1), 1).is_some(),
        "a second variant"
    );
    assert_eq!(
        policy.register(0, 9, hash(1), 1),
        None,
        "the same variant twice"
    );
    let labels: Vec<usize> = long_tail_stats()
        .counts()
        .iter()
        .enumerate()
        .flat_map(|(c, &n)| std::iter::repeat_n(c, n))
        .collect();
    let plan = Policy::long_tail(long_tail_stats(), config)
        .unwrap()
        .offline_plan(&labels, None);
    let mine: Vec<_> = plan.iter().filter(|p| p.1 == 9).collect();
    assert_eq!(
        mine.len(),
        5,
        "the quota counts hard negatives, not sources"
    );
    let sources: std::collections::BTreeSet<_> = mine.iter().map(|p| p.0).collect();
    assert_eq!(
        sources.len(),
        3,
        "two variants of two sources, one of a third"
    );
    assert_eq!(mine.iter().filter(|p| p.2 == 1).count(), 2);
}

/// Few images ready, many batches: each is mixed at the configured rate per epoch, not in
/// every batch.
#[test]
fn few_ready_hard_negatives_are_mixed_at_the_configured_rate() {
    let labels = shuffled_epoch(3);
    let epoch = labels.len();
    for rate in [1.0, 2.0, 0.5] {
        let mut config = PolicyConfig::long_tail();
        config.uses_per_epoch = Some(rate);
        let mut policy = Policy::long_tail(long_tail_stats(), config).unwrap();
        assert_eq!(policy.items_per_epoch(), epoch as u64);
        let ready: Vec<usize> = (0..3)
            .filter_map(|i| policy.register(0, 9, hash(i), 0))
            .collect();
        let epochs = 6;
        let mut per_epoch = vec![vec![0u64; ready.len()]; epochs];
        for uses in per_epoch.iter_mut() {
            for batch in labels.chunks(32) {
                policy.observe(batch.iter().copied());
                for id in policy.plan_mix(batch, &ready).insert {
                    uses[id] += 1;
                }
            }
        }
        let cap = rate.ceil() as u64;
        for (e, uses) in per_epoch.iter().enumerate() {
            assert!(
                uses.iter().all(|&n| n <= cap),
                "rate {rate}, epoch {e}: {uses:?}"
            );
        }
        let total: u64 = ready.iter().map(|&id| policy.uses(id)).sum();
        let expected = (rate * epochs as f64 * ready.len() as f64) as u64;
        assert!(
            total + ready.len() as u64 >= expected && total <= expected + ready.len() as u64,
            "rate {rate}: {total} uses in {epochs} epochs of {} images",
            ready.len()
        );
    }
    // Without a rate, a few ready images fill every batch's budget.
    let mut policy = Policy::long_tail(long_tail_stats(), unlimited()).unwrap();
    let ready: Vec<usize> = (0..3)
        .filter_map(|i| policy.register(0, 9, hash(i), 0))
        .collect();
    for batch in labels.chunks(32) {
        policy.observe(batch.iter().copied());
        policy.plan_mix(batch, &ready);
    }
    assert!(policy.uses(ready[0]) > 10);
}

/// The labels of a shuffled epoch of `long_tail_stats()`.
fn shuffled_epoch(seed: u64) -> Vec<usize> {
    let mut labels: Vec<usize> = long_tail_stats()
        .counts()
        .iter()
        .enumerate()
        .flat_map(|(class, &n)| std::iter::repeat_n(class, n))
        .collect();
    // A plain LCG keeps the order independent of any rand version.
    let mut state = seed;
    for i in (1..labels.len()).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        labels.swap(i, (state >> 33) as usize % (i + 1));
    }
    labels
}

#[test]
fn observe_counts_real_labels_and_unknown_ones() {
    let mut policy = Policy::long_tail(long_tail_stats(), PolicyConfig::long_tail()).unwrap();
    policy.observe([0, 0, 9, 3, 42]);
    policy.observe([9]);
    let counts = policy.batch_counts();
    assert_eq!(counts.seen, vec![2, 0, 0, 1, 0, 0, 0, 0, 0, 2]);
    assert_eq!(counts.unknown_labels, 1);
    assert_eq!(counts.seen_total(), 5);
    policy.record_mix(&[0, 0, 77], &[9, 8]);
    let counts = policy.batch_counts();
    assert_eq!(counts.replaced[0], 2);
    assert_eq!(counts.mixed[9], 1);
    assert_eq!(counts.mixed[8], 1);
    // Trained = seen − replaced + mixed.
    assert_eq!(counts.trained(0), 0);
    assert_eq!(counts.trained(9), 3);
    assert_eq!(counts.trained(8), 1);
    assert_eq!(counts.trained(99), 0);
    // With the dataset's statistics, observing never changes the groups or targets.
    assert_eq!(policy.stats(), &long_tail_stats());
    assert_eq!(policy.targets(), vec![7, 8, 9]);
}

#[test]
fn targets_counted_from_batches_wait_for_one_epoch_then_match_the_dataset_statistics() {
    let labels = shuffled_epoch(7);
    let epoch = labels.len();
    let mut online = Policy::long_tail_from_batches(10, epoch, PolicyConfig::long_tail()).unwrap();
    let batches: Vec<&[usize]> = labels.chunks(32).collect();
    let (last, before) = batches.split_last().unwrap();
    for batch in before {
        online.observe(batch.iter().copied());
        assert!(!online.targets_decided());
        assert!(online.targets().is_empty());
        assert!(
            online.propose(batch, None).is_empty(),
            "no pairs before the statistics are known"
        );
        assert_eq!(online.register(0, 9, hash(1), 0), None);
    }
    online.observe(last.iter().copied());
    assert!(online.targets_decided());
    let offline = Policy::long_tail(long_tail_stats(), PolicyConfig::long_tail()).unwrap();
    assert_eq!(online.stats(), offline.stats());
    assert_eq!(online.targets(), offline.targets());
    assert_eq!(online.group(4), Group::Medium);
    // Later epochs keep counting but never move the groups.
    online.observe([9; 100]);
    assert_eq!(online.batch_counts().seen[9], 105);
    assert_eq!(online.stats().count(9), 5);
    assert!(!online.propose(&labels[..64], None).is_empty());
    assert!(online.register(0, 9, hash(1), 0).is_some());
}

#[test]
fn targets_counted_from_batches_refuse_zero_sizes() {
    assert!(Policy::long_tail_from_batches(0, 10, PolicyConfig::long_tail()).is_err());
    assert!(Policy::long_tail_from_batches(10, 0, PolicyConfig::long_tail()).is_err());
    let mut bad = PolicyConfig::long_tail();
    bad.mix_fraction = -0.1;
    assert!(Policy::long_tail_from_batches(10, 10, bad).is_err());
}

/// Plans on random histories keep the mixing contract: distinct pairs, as many as the budget
/// allows, least used first, and, when at most 4× the budget pairs are ready (beyond that the
/// spread is among a sample), on the last tier of uses spread over targets: a target left out
/// there has at most one pick fewer than any target picked there.
#[test]
fn mixing_plans_keep_least_used_first_and_spread_on_random_histories() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |bound: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize % bound
    };
    let mut spread_checked = 0;
    for case in 0..400 {
        let mut policy = Policy::long_tail(long_tail_stats(), unlimited()).unwrap();
        let n_pairs = 1 + next(150);
        let pairs: Vec<usize> = (0..n_pairs)
            .filter_map(|i| policy.register(i % 7, 7 + next(3), hash(case * 1000 + i), 0))
            .collect();
        let labels = vec![0; 8 + next(56)];
        let budget = labels.len() / 4;
        for _ in 0..next(20) {
            let ready: Vec<usize> = pairs.iter().copied().filter(|_| next(3) > 0).collect();
            policy.plan_mix(&labels, &ready);
        }
        let mut ready: Vec<usize> = pairs.iter().copied().filter(|_| next(4) > 0).collect();
        ready.extend(ready.clone().into_iter().take(next(3))); // a few listed twice
        let uses: Vec<u64> = pairs.iter().map(|&id| policy.uses(id)).collect();
        let plan = policy.plan_mix(&labels, &ready);

        let mut distinct = ready.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let mut inserted = plan.insert.clone();
        inserted.sort_unstable();
        inserted.dedup();
        assert_eq!(
            inserted.len(),
            plan.insert.len(),
            "case {case}: a pair twice"
        );
        assert_eq!(plan.insert.len(), budget.min(distinct.len()), "case {case}");
        let Some(top) = plan.insert.iter().map(|&id| uses[id]).max() else {
            continue;
        };
        let left_out: Vec<usize> = distinct
            .iter()
            .copied()
            .filter(|id| !plan.insert.contains(id))
            .collect();
        assert!(
            left_out.iter().all(|&id| uses[id] >= top),
            "case {case}: a less used pair was left out"
        );
        let target = |id: usize| policy.pair(id).unwrap().target;
        let picks = |t: usize| plan.insert.iter().filter(|&&id| target(id) == t).count();
        if ready.len() > 4 * budget {
            continue;
        }
        spread_checked += 1;
        for &c in left_out.iter().filter(|&&id| uses[id] == top) {
            for &p in plan.insert.iter().filter(|&&id| uses[id] == top) {
                assert!(
                    picks(target(p)) <= picks(target(c)) + 1,
                    "case {case}: target {} left out with {} picks while {} got {}",
                    target(c),
                    picks(target(c)),
                    target(p),
                    picks(target(p))
                );
            }
        }
    }
    assert!(
        spread_checked > 50,
        "only {spread_checked} cases checked the spread"
    );
}
