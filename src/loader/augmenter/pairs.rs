//! Which pairs start: the policy's proposals or a pre-warm plan's pairs as their source items
//! pass, and the real items of target classes kept for their prototypes.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::ada::AdaRecord;
use super::confusion::ConfusionRead;
use super::{Augmenter, AugmenterError, PairStatus, State};
use crate::cache::CacheKey;
use crate::loader::item::GenieItem;
use crate::policy::Proposal;
use crate::warm::PlannedPair;

pub(super) struct PairEntry<I> {
    /// The source item, kept to embed it for Ada and as the shape of its hard negatives.
    pub(super) item: I,
    pub(super) target: usize,
    pub(super) seed: u64,
    /// What the keys were made from; a source read again for a request must still match.
    pub(super) source_hash: [u8; 32],
    /// One key per level of `Augmenter::levels`.
    pub(super) keys: Vec<CacheKey>,
    /// The pair's own key, under which its Ada choice is filed in the cache.
    pub(super) pair_key: CacheKey,
    pub(super) choice: Option<AdaRecord>,
    /// When the selector last gave a verdict on it (0: never), so that it scores the pairs
    /// never scored first, then the least recently scored, and starves none.
    pub(super) scored_seq: u64,
}

/// One pair of a loaded plan, ready to start when its source item passes.
pub(super) struct PlanSlot {
    pub(super) source_class: usize,
    pub(super) target: usize,
    pub(super) variant: u32,
    pub(super) seed: u64,
    pub(super) source_hash: [u8; 32],
    pub(super) keys: Vec<CacheKey>,
}

/// The loaded plan: its pairs by source id, and whether each source has passed yet.
pub(super) struct PlanIndex {
    pub(super) by_source: HashMap<String, (bool, Vec<usize>)>,
    pub(super) slots: Vec<PlanSlot>,
    pub(super) sources_left: usize,
}

impl<I: GenieItem> Augmenter<I> {
    /// Starts exactly the pairs of a pre-warm plan (`genie warm plan`, read with
    /// [`crate::warm::read_plan`] and grouped with [`crate::warm::plan_pairs`]) and no others:
    /// each pair starts when its source item first passes through a batch, found by
    /// [`GenieItem::source_id`] (`<class folder>/<file name>`). The plan's targets become
    /// targets; its quotas and sources stand in for the policy's (the live confusion matrix is
    /// then not used to pick sources).
    ///
    /// Every key is checked against this run's key space first: a plan made with another
    /// engine, other options or other class names is an error, not a silent miss. Each pair
    /// must have every level this augmenter generates (the Ada sweep, with Ada on).
    pub fn with_plan(self, pairs: &[PlannedPair]) -> Result<Self, AugmenterError> {
        let mut index = PlanIndex {
            by_source: HashMap::new(),
            slots: Vec::with_capacity(pairs.len()),
            sources_left: 0,
        };
        let class = |id: &str| {
            self.keys
                .class_index(id)
                .ok_or_else(|| AugmenterError::PlanClass(id.to_string()))
        };
        let mut targets = Vec::new();
        for p in pairs {
            let source = p.source.display().to_string();
            let source_id = p
                .source_id()
                .ok_or_else(|| AugmenterError::PlanSource(source.clone()))?;
            let (source_class, target) = (class(&p.source_class)?, class(&p.target)?);
            let mut keys = Vec::with_capacity(self.levels.len());
            for &level in &self.levels {
                let key = p.key(level).ok_or_else(|| AugmenterError::PlanLevel {
                    path: source.clone(),
                    target: p.target.clone(),
                    level,
                })?;
                if key != self.keys.key(p.source_hash, target, level, p.seed) {
                    return Err(AugmenterError::PlanKey {
                        path: source,
                        target: p.target.clone(),
                        level,
                    });
                }
                keys.push(key);
            }
            targets.push(target);
            let slot = index.slots.len();
            index.slots.push(PlanSlot {
                source_class,
                target,
                variant: p.variant,
                seed: p.seed,
                source_hash: p.source_hash,
                keys,
            });
            index
                .by_source
                .entry(source_id.to_string())
                .or_insert_with(|| (false, Vec::new()))
                .1
                .push(slot);
        }
        index.sources_left = index.by_source.len();
        targets.sort_unstable();
        targets.dedup();
        {
            let mut state = self.state();
            // Every target was just resolved to one of the policy's classes.
            let _ = state.policy.add_targets(&targets);
            state.plan = Some(index);
        }
        Ok(self)
    }

    /// Phase 1: the class statistics see the batch's real items, target classes' real images
    /// are kept for their prototypes, and either the plan's pairs of these items start or the
    /// policy proposes (source item, target) pairs.
    pub(super) fn observe(
        &self,
        items: &[I],
        labelled: &[(usize, usize)],
        labels: &[usize],
        earlier: u64,
    ) -> Vec<Proposal> {
        {
            let mut state = self.state();
            let real = labelled.iter().filter(|&&(i, _)| !items[i].is_generated());
            state.policy.observe(real.map(|&(_, l)| l));
            self.keep_prototypes(&mut state, items, labelled);
            if state.plan.is_some() {
                self.start_planned(&mut state, items, labelled);
                return Vec::new();
            }
            // Only a batch that can start pairs reads (and may wait for) a confusion snapshot:
            // once every quota is full the batcher never waits on the metric thread.
            if !state.policy.proposes() {
                return Vec::new();
            }
        }
        // Read unlocked: it may wait for the metric thread.
        let confusion = self.confusion_read(earlier);
        let mut state = self.state();
        match confusion {
            ConfusionRead::Live => {
                let live = self.confusion_guard();
                state.policy.propose(labels, live.as_deref())
            }
            ConfusionRead::Fixed(matrix) => state.policy.propose(labels, matrix.as_deref()),
        }
    }

    /// Phase 2: each proposal becomes a pair per variant (its source read and hashed unlocked,
    /// the costly part), and the generator is asked for its levels.
    pub(super) fn start_pairs(
        &self,
        items: &[I],
        labelled: &[(usize, usize)],
        proposals: Vec<Proposal>,
    ) {
        let mut to_request = Vec::new();
        for p in proposals {
            let (index, source_class) = labelled[p.index];
            let Some(source) = self.source_of(&items[index]) else {
                continue;
            };
            let mut state = self.state();
            let run_seed = state.policy.config().seed;
            for variant in 0..state.policy.config().variants {
                let Some(id) = state
                    .policy
                    .register(source_class, p.target, source.hash, variant)
                else {
                    continue;
                };
                let seed = self
                    .keys
                    .pair_seed(run_seed, source.hash, p.target, variant);
                let keys = self
                    .levels
                    .iter()
                    .map(|&l| self.keys.key(source.hash, p.target, l, seed))
                    .collect();
                self.push_pair(
                    &mut state,
                    items[index].clone(),
                    p.target,
                    seed,
                    source.hash,
                    keys,
                );
                to_request.push((id, source.clone()));
            }
        }
        for (id, source) in to_request {
            self.request(id, source);
        }
    }

    pub(super) fn push_pair(
        &self,
        state: &mut State<I>,
        item: I,
        target: usize,
        seed: u64,
        source_hash: [u8; 32],
        keys: Vec<CacheKey>,
    ) {
        let id = state.pairs.len();
        for key in &keys {
            state.by_key.insert(*key, id);
        }
        state.pairs.push(PairEntry {
            item,
            target,
            seed,
            source_hash,
            keys,
            pair_key: self.keys.pair_key(source_hash, target, seed),
            choice: None,
            scored_seq: 0,
        });
        state.status.push(PairStatus {
            cached: 0,
            current: self.fixed_index as u32,
        });
    }

    /// Starts the planned pairs of the batch's real items that pass for the first time; with a
    /// generator, queues them to be checked against the cache and requested if missing.
    pub(super) fn start_planned(
        &self,
        state: &mut State<I>,
        items: &[I],
        labelled: &[(usize, usize)],
    ) {
        let Some(plan) = state.plan.as_mut() else {
            return;
        };
        if plan.sources_left == 0 {
            return;
        }
        // After a whole epoch every item has passed: planned sources still unseen are not in
        // this dataset. Say so once, and stop looking (it costs every batch a lookup per item).
        let seen = state.policy.batch_counts().seen_total();
        if seen > state.policy.items_per_epoch() + labelled.len() as u64 {
            tracing::warn!(
                missing = plan.sources_left,
                "planned sources never passed through a batch in a whole epoch: they are not in \
                 this dataset (or their items have no `<class>/<file>` source id); their pairs are \
                 not used"
            );
            plan.sources_left = 0;
            return;
        }
        let mut started = Vec::new();
        for &(i, label) in labelled {
            let item = &items[i];
            if item.is_generated() {
                continue;
            }
            let Some(source) = item.source_id() else {
                continue;
            };
            let Some((seen, slots)) = plan.by_source.get_mut(source) else {
                continue;
            };
            if std::mem::replace(seen, true) {
                continue;
            }
            plan.sources_left -= 1;
            for &slot in slots.iter() {
                if plan.slots[slot].source_class == label {
                    started.push((slot, i));
                } else {
                    self.counters.bad_items.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        source,
                        label,
                        "a planned source's item has another label than the plan; skipped"
                    );
                }
            }
        }
        let mut new_pairs = Vec::new();
        for (slot, i) in started {
            let Some(plan) = state.plan.as_ref() else {
                return;
            };
            let p = &plan.slots[slot];
            let (class, target, variant, seed, hash) =
                (p.source_class, p.target, p.variant, p.seed, p.source_hash);
            let keys = p.keys.clone();
            if let Some(id) = state.policy.register_planned(class, target, hash, variant) {
                self.push_pair(state, items[i].clone(), target, seed, hash, keys);
                new_pairs.push(id);
            }
        }
        if self.generator.is_some() {
            state.retry.extend(new_pairs);
        }
    }

    pub(super) fn keep_prototypes(
        &self,
        state: &mut State<I>,
        items: &[I],
        labelled: &[(usize, usize)],
    ) {
        if !self.config.ada {
            return;
        }
        for &(i, label) in labelled {
            if !state.policy.is_target(label) || items[i].is_generated() {
                continue;
            }
            let cap = self.config.prototype_images;
            if let Some(kept) = state.prototypes.get_mut(label).filter(|k| k.len() < cap) {
                kept.push(items[i].clone());
            }
        }
    }
}
