//! [`Policy`]: a run's targets, quotas and (source image, target) pairs, and which batch items
//! each batch's hard negatives replace.

use std::collections::HashSet;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::{
    BatchCounts, ClassStats, ConfusionMatrix, Group, Mixing, PolicyConfig, PolicyError,
    SourceStrategy,
};

/// Index of a pair in its [`Policy`].
pub type PairId = usize;

/// One hard negative to make: this source image, shown as the target class (one of
/// [`PolicyConfig::variants`] per source and target).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    /// Its id in the policy.
    pub id: PairId,
    /// The source image's class.
    pub source_class: usize,
    /// The class it is shown as (its label).
    pub target: usize,
    /// Pixel hash of the preprocessed source image (as in the cache key).
    pub source_hash: [u8; 32],
    /// Which of the source's variants for this target (its own noise seed).
    pub variant: u32,
}

/// What mixing reads and writes of each pair every batch, kept compact.
#[derive(Clone, Copy, Debug)]
struct MixSlot {
    uses: u32,
    target: u32,
    /// The pair may be mixed again once this many real items have been seen.
    next_use: u64,
}

/// A batch item that could start a new pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// Index of the source item in the batch.
    pub index: usize,
    /// The class it would be shown as.
    pub target: usize,
}

/// How to change one batch: `insert[i]` goes in place of the item at `replace[i]` (or is
/// appended, when `replace` is shorter).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MixPlan {
    /// Batch positions to overwrite.
    pub replace: Vec<usize>,
    /// The pairs whose images go in, in order.
    pub insert: Vec<PairId>,
}

/// Targets, quotas and pairs for one training run.
#[derive(Debug)]
pub struct Policy {
    config: PolicyConfig,
    stats: ClassStats,
    is_target: Vec<bool>,
    pairs: Vec<Pair>,
    by_target: Vec<Vec<PairId>>,
    known: HashSet<([u8; 32], usize, u32)>,
    /// One per pair, same index.
    mix_slots: Vec<MixSlot>,
    counts: BatchCounts,
    /// Real items per epoch: the dataset's size, for [`PolicyConfig::uses_per_epoch`].
    items_per_epoch: u64,
    /// `Some(n)` while the targets wait for `n` real items to be seen in batches
    /// ([`Policy::long_tail_from_batches`]).
    decide_after: Option<u64>,
    rng: ChaCha8Rng,
}

impl Policy {
    /// Long-tail mode: the targets are the Few classes of `stats`.
    pub fn long_tail(stats: ClassStats, config: PolicyConfig) -> Result<Self, PolicyError> {
        let targets = stats.classes_in(Group::Few, &config.thresholds);
        Self::with_targets(stats, &targets, config)
    }

    /// Long-tail mode without a pass over the dataset's labels: the class statistics are
    /// counted from the batches, and once `items_per_epoch` real items have been seen (one
    /// epoch: the counts are then exact) the targets become the Few classes of those counts.
    /// Until then there are no targets, so nothing is generated or mixed.
    ///
    /// For datasets whose labels are costly to list up front (e.g. an image folder whose
    /// items decode their image when read). With a loader that drops the last partial batch,
    /// pass the number of items it yields per epoch.
    pub fn long_tail_from_batches(
        num_classes: usize,
        items_per_epoch: usize,
        config: PolicyConfig,
    ) -> Result<Self, PolicyError> {
        if num_classes == 0 {
            return Err(PolicyError::Zero("the number of classes"));
        }
        if items_per_epoch == 0 {
            return Err(PolicyError::Zero("the number of items per epoch"));
        }
        let mut policy =
            Self::with_targets(ClassStats::from_counts(vec![0; num_classes]), &[], config)?;
        policy.decide_after = Some(items_per_epoch as u64);
        policy.items_per_epoch = items_per_epoch as u64;
        Ok(policy)
    }

    /// Explicit targets, e.g. every class of a few-shot episode.
    pub fn with_targets(
        stats: ClassStats,
        targets: &[usize],
        config: PolicyConfig,
    ) -> Result<Self, PolicyError> {
        config.validate()?;
        let classes = stats.num_classes();
        let mut is_target = vec![false; classes];
        for &t in targets {
            *is_target.get_mut(t).ok_or(PolicyError::UnknownTarget(t))? = true;
        }
        let rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0x6765_6e69_6570_6f6c);
        let items_per_epoch = (stats.counts().iter().sum::<usize>() as u64).max(1);
        Ok(Policy {
            config,
            stats,
            is_target,
            pairs: Vec::new(),
            by_target: vec![Vec::new(); classes],
            known: HashSet::new(),
            mix_slots: Vec::new(),
            counts: BatchCounts::new(classes),
            items_per_epoch,
            decide_after: None,
            rng,
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Per-class image counts the groups are made from: the dataset's, or (with
    /// [`Policy::long_tail_from_batches`]) the first epoch's batches once it is complete.
    pub fn stats(&self) -> &ClassStats {
        &self.stats
    }

    /// What the batches held so far, per class.
    pub fn batch_counts(&self) -> &BatchCounts {
        &self.counts
    }

    /// False while [`Policy::long_tail_from_batches`] is still counting its first epoch.
    pub fn targets_decided(&self) -> bool {
        self.decide_after.is_none()
    }

    /// Counts one batch's real (not generated) items by label; with
    /// [`Policy::long_tail_from_batches`], decides the targets once an epoch has been seen.
    pub fn observe(&mut self, labels: impl IntoIterator<Item = usize>) {
        for label in labels {
            match self.counts.seen.get_mut(label) {
                Some(n) => *n += 1,
                None => self.counts.unknown_labels += 1,
            }
        }
        if let Some(after) = self.decide_after {
            if self.counts.seen_total() >= after {
                self.decide_targets();
            }
        }
    }

    fn decide_targets(&mut self) {
        let counts = self.counts.seen.iter().map(|&n| n as usize).collect();
        self.stats = ClassStats::from_counts(counts);
        let few = self.stats.classes_in(Group::Few, &self.config.thresholds);
        for &t in &few {
            self.is_target[t] = true;
        }
        self.decide_after = None;
        tracing::info!(
            items = self.counts.seen_total(),
            targets = ?few,
            "class statistics counted from one epoch of batches: targets are the Few classes"
        );
    }

    /// Counts a mix that happened: real items of `replaced` classes given up, hard negatives
    /// of `targets` put in (labels outside the classes are ignored).
    pub fn record_mix(&mut self, replaced: &[usize], targets: &[usize]) {
        for &c in replaced {
            if let Some(n) = self.counts.replaced.get_mut(c) {
                *n += 1;
            }
        }
        for &t in targets {
            if let Some(n) = self.counts.mixed.get_mut(t) {
                *n += 1;
            }
        }
    }

    /// Classes of the dataset.
    pub fn num_classes(&self) -> usize {
        self.stats.num_classes()
    }

    /// The target classes, ascending.
    pub fn targets(&self) -> Vec<usize> {
        (0..self.is_target.len())
            .filter(|&c| self.is_target[c])
            .collect()
    }

    /// Makes these classes targets too (e.g. those of a pre-warm plan); an unknown class is an
    /// error.
    pub fn add_targets(&mut self, targets: &[usize]) -> Result<(), PolicyError> {
        for &t in targets {
            *self
                .is_target
                .get_mut(t)
                .ok_or(PolicyError::UnknownTarget(t))? = true;
        }
        Ok(())
    }

    /// Whether hard negatives are made for `class`.
    pub fn is_target(&self, class: usize) -> bool {
        self.is_target.get(class).copied().unwrap_or(false)
    }

    /// The group (head, tail, few-shot) of `class`.
    pub fn group(&self, class: usize) -> Group {
        self.stats.group(class, &self.config.thresholds)
    }

    /// Every pair started so far, by id.
    pub fn pairs(&self) -> &[Pair] {
        &self.pairs
    }

    /// The pair `id`, if started.
    pub fn pair(&self, id: PairId) -> Option<&Pair> {
        self.pairs.get(id)
    }

    /// Pairs started for `target` so far (never more than the quota).
    pub fn pairs_of(&self, target: usize) -> &[PairId] {
        self.by_target.get(target).map_or(&[], Vec::as_slice)
    }

    /// How many times each pair has been mixed into a batch.
    pub fn uses(&self, id: PairId) -> u64 {
        self.mix_slots.get(id).map_or(0, |s| u64::from(s.uses))
    }

    /// Real items per epoch, the unit of [`PolicyConfig::uses_per_epoch`].
    pub fn items_per_epoch(&self) -> u64 {
        self.items_per_epoch
    }

    /// Source classes of `target`'s hard negatives, ascending for `Uniform`, most confused first
    /// for `TopConfused`. Classes with no training images are never sources.
    pub fn sources_for(&self, target: usize, confusion: Option<&ConfusionMatrix>) -> Vec<usize> {
        let uniform = || {
            (0..self.num_classes())
                .filter(|&c| c != target && self.stats.count(c) > 0)
                .collect::<Vec<_>>()
        };
        match (self.config.sources, confusion) {
            (SourceStrategy::TopConfused { k }, Some(m)) => {
                let top: Vec<usize> = m
                    .most_confused_with(target, k)
                    .into_iter()
                    .filter(|&c| self.stats.count(c) > 0)
                    .collect();
                if top.is_empty() {
                    uniform()
                } else {
                    top
                }
            }
            _ => uniform(),
        }
    }

    fn quota_left(&self, target: usize) -> bool {
        self.pairs_of(target).len() < self.config.per_target
    }

    /// Targets that still need pairs and take `source_class` as a source.
    pub fn targets_for_source(
        &self,
        source_class: usize,
        confusion: Option<&ConfusionMatrix>,
    ) -> Vec<usize> {
        (0..self.num_classes())
            .filter(|&t| t != source_class && self.is_target(t) && self.quota_left(t))
            .filter(|&t| self.sources_for(t, confusion).contains(&source_class))
            .collect()
    }

    /// Whether [`propose`](Self::propose) can start pairs at all: new pairs per batch above zero
    /// and some target's quota not yet full.
    pub fn proposes(&self) -> bool {
        self.config.new_pairs_per_batch > 0
            && (0..self.num_classes()).any(|t| self.is_target(t) && self.quota_left(t))
    }

    /// Up to `new_pairs_per_batch` batch items that could start new pairs, each with one target
    /// (chosen at random among those it can serve). Nothing is recorded until [`Policy::register`].
    pub fn propose(
        &mut self,
        labels: &[usize],
        confusion: Option<&ConfusionMatrix>,
    ) -> Vec<Proposal> {
        let limit = self.config.new_pairs_per_batch;
        if !self.proposes() {
            return Vec::new();
        }
        let mut order: Vec<usize> = (0..labels.len()).collect();
        shuffle(&mut order, &mut self.rng);
        let mut proposals = Vec::new();
        for index in order {
            if proposals.len() == limit {
                break;
            }
            let targets = self.targets_for_source(labels[index], confusion);
            if targets.is_empty() {
                continue;
            }
            let target = targets[self.rng.next_u64() as usize % targets.len()];
            proposals.push(Proposal { index, target });
        }
        proposals
    }

    /// Records variant `variant` of the pair (source image `source_hash` of `source_class`,
    /// `target`); `None` when the target's quota is full, the pair already exists, or the
    /// classes are not a valid pair.
    pub fn register(
        &mut self,
        source_class: usize,
        target: usize,
        source_hash: [u8; 32],
        variant: u32,
    ) -> Option<PairId> {
        if !self.is_target(target) || !self.quota_left(target) {
            return None;
        }
        self.insert_pair(source_class, target, source_hash, variant)
    }

    /// Records a pair a pre-warm plan chose: the plan's quotas and targets stand (the target
    /// becomes a target); `None` for a duplicate or a pair of one class with itself.
    pub fn register_planned(
        &mut self,
        source_class: usize,
        target: usize,
        source_hash: [u8; 32],
        variant: u32,
    ) -> Option<PairId> {
        *self.is_target.get_mut(target)? = true;
        self.insert_pair(source_class, target, source_hash, variant)
    }

    fn insert_pair(
        &mut self,
        source_class: usize,
        target: usize,
        source_hash: [u8; 32],
        variant: u32,
    ) -> Option<PairId> {
        if source_class == target
            || source_class >= self.num_classes()
            || target >= self.num_classes()
            || !self.known.insert((source_hash, target, variant))
        {
            return None;
        }
        let id = self.pairs.len();
        self.pairs.push(Pair {
            id,
            source_class,
            target,
            source_hash,
            variant,
        });
        self.by_target[target].push(id);
        self.mix_slots.push(MixSlot {
            uses: 0,
            target: target as u32,
            next_use: 0,
        });
        Some(id)
    }

    /// Plans how `ready` pairs (their images are available) enter a batch with `labels`: at most
    /// `⌊mix_fraction · len⌋` of them, least-used first and spread over targets, each replacing an
    /// item of the batch's most over-represented class (or appended). Counts the planned uses.
    ///
    /// With [`PolicyConfig::uses_per_epoch`] a pair used now waits `1 / rate` of an epoch (in
    /// real items seen) before it can be used again, so a few ready images are not shown in
    /// every batch.
    ///
    /// The spread is exact when at most 4× the budget pairs are ready; beyond that it is among a
    /// sample of the 4× budget least used (random among equals), which keeps a batch's cost
    /// linear in the ready pairs. Across batches every pair is used equally either way.
    pub fn plan_mix(&mut self, labels: &[usize], ready: &[PairId]) -> MixPlan {
        let budget = (self.config.mix_fraction * labels.len() as f64).floor() as usize;
        if budget == 0 || ready.is_empty() {
            return MixPlan::default();
        }
        // Least used first (random among equals), then spread over targets. One u64 sort key
        // per candidate: uses in the high half, a per-batch random tiebreak in the low half.
        // Selecting the 4·budget least used first keeps this linear in the number of ready pairs.
        let salt = self.rng.next_u64();
        let now = self.counts.seen_total();
        let mut candidates: Vec<(u64, PairId)> = Vec::with_capacity(ready.len());
        candidates.extend(ready.iter().filter_map(|&id| {
            let slot = self.mix_slots.get(id)?;
            (slot.next_use <= now).then(|| {
                (
                    (u64::from(slot.uses) << 32) | (mix64(salt ^ id as u64) >> 32),
                    id,
                )
            })
        }));
        if candidates.is_empty() {
            return MixPlan::default();
        }
        let pool = (4 * budget).min(candidates.len());
        if pool < candidates.len() {
            candidates.select_nth_unstable(pool);
            candidates.truncate(pool);
        }
        candidates.sort_unstable();
        // A pair listed twice in `ready` is used once.
        candidates.dedup();
        // Greedy: the least used candidate whose target has had the fewest picks so far, ties in
        // key order. Within one tier of uses that is an order by (picks of its target before
        // it, key): the j-th candidate of a target comes after j of that target's picks.
        let mut insert = Vec::with_capacity(budget);
        let mut taken_per_target = vec![0u32; self.num_classes()];
        let mut ranked = Vec::with_capacity(candidates.len());
        let mut tier_start = 0;
        while tier_start < candidates.len() && insert.len() < budget {
            let tier = candidates[tier_start].0 >> 32;
            ranked.clear();
            for &(key, id) in candidates[tier_start..]
                .iter()
                .take_while(|&&(k, _)| k >> 32 == tier)
            {
                let taken = &mut taken_per_target[self.mix_slots[id].target as usize];
                ranked.push((*taken, key, id));
                *taken += 1;
            }
            tier_start += ranked.len();
            ranked.sort_unstable();
            let room = budget - insert.len();
            insert.extend(ranked.iter().take(room).map(|&(_, _, id)| id));
        }
        let wait = self.config.uses_per_epoch.map_or(0, |rate| {
            ((self.items_per_epoch as f64 / rate).ceil() as u64).max(1)
        });
        for &id in &insert {
            let slot = &mut self.mix_slots[id];
            slot.uses = slot.uses.saturating_add(1);
            slot.next_use = now.saturating_add(wait);
        }
        let replace = match self.config.mixing {
            Mixing::Append => Vec::new(),
            Mixing::Replace => self.over_represented(labels, insert.len()),
        };
        MixPlan { replace, insert }
    }

    /// `n` batch indices to give up: repeatedly the last item of the class with the most items
    /// left in the batch (ties: the class with more training images, then the lower class).
    /// Target-class items go last.
    fn over_represented(&self, labels: &[usize], n: usize) -> Vec<usize> {
        // Counts per class present in the batch; labels outside the classes count as class-less.
        let mut left = vec![0usize; self.num_classes() + 1];
        let slot = |l: usize| l.min(self.num_classes());
        for &l in labels {
            left[slot(l)] += 1;
        }
        let mut taken = vec![false; labels.len()];
        let mut chosen = Vec::with_capacity(n);
        while chosen.len() < n {
            let best = (0..left.len()).filter(|&c| left[c] > 0).max_by(|&a, &b| {
                (!self.is_target(a))
                    .cmp(&!self.is_target(b))
                    .then(left[a].cmp(&left[b]))
                    .then(self.stats.count(a).cmp(&self.stats.count(b)))
                    .then(b.cmp(&a))
            });
            let Some(class) = best else { break };
            // The last item of that class not given up yet.
            let Some(index) = (0..labels.len())
                .rev()
                .find(|&i| !taken[i] && slot(labels[i]) == class)
            else {
                break;
            };
            taken[index] = true;
            left[class] -= 1;
            chosen.push(index);
        }
        chosen.sort_unstable();
        chosen
    }

    /// The offline plan of the paper's protocol: for every target, up to the quota of hard
    /// negatives from distinct source items drawn (seeded, without replacement) from its source
    /// classes, [`PolicyConfig::variants`] per source. `labels[i]` is the label of dataset item
    /// `i`; returns (item index, target, variant) sorted by target, then item, then variant.
    ///
    /// Pre-warm plans (`genie warm plan`) and [`crate::loader::OfflinePlan`] are both made here,
    /// so the same dataset, policy and seed give the same pairs.
    pub fn offline_plan(
        &self,
        labels: &[usize],
        confusion: Option<&ConfusionMatrix>,
    ) -> Vec<(usize, usize, u32)> {
        let variants = self.config.variants.max(1) as usize;
        let mut plan = Vec::new();
        for target in self.targets() {
            let sources = self.sources_for(target, confusion);
            let mut pool: Vec<usize> = (0..labels.len())
                .filter(|&i| sources.contains(&labels[i]))
                .collect();
            let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed ^ ((target as u64) << 20));
            shuffle(&mut pool, &mut rng);
            pool.truncate(self.config.per_target.div_ceil(variants));
            pool.sort_unstable();
            let pairs = pool
                .into_iter()
                .flat_map(|i| (0..variants as u32).map(move |v| (i, target, v)))
                .take(self.config.per_target);
            plan.extend(pairs);
        }
        plan
    }
}

/// SplitMix64's finaliser: a cheap, well-mixed tiebreak per (batch, pair).
fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Fisher–Yates with our seeded generator, so plans do not depend on a `rand` version.
fn shuffle<T>(items: &mut [T], rng: &mut ChaCha8Rng) {
    for i in (1..items.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}
