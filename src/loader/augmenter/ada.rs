//! GeNIe-Ada's side of the augmenter, the one contract [`crate::loader::LiveModel`] talks to:
//! the pairs a round scores, the choices it files, and the level each pair is mixed at.

use std::collections::BTreeMap;

use super::{Augmenter, State};
use crate::cache::{AdaChoiceRecord, CacheKey};
use crate::engine::NoiseLevel;
use crate::loader::item::GenieItem;
use crate::policy::PairId;

/// GeNIe-Ada's choice for one pair, from one model version.
#[derive(Clone, Debug, PartialEq)]
pub struct AdaRecord {
    /// `None` when the pair could not be scored (e.g. its prototype equals its source); the
    /// fixed level is then used until the next model version.
    pub level: Option<NoiseLevel>,
    /// The projection onto the source → prototype line at each swept level.
    pub curve: Vec<f64>,
    /// The live model's version it was scored with.
    pub model_version: u64,
}

/// Work the Ada selector can do for one pair: all levels cached.
pub(crate) struct AdaWork<I> {
    pub pair: PairId,
    pub source: I,
    pub target: usize,
    pub keys: Vec<CacheKey>,
}

/// The pairs the Ada selector scores with one model version, in order, with the real items of
/// their targets (for the prototypes) as they were when the round was planned.
pub(crate) struct AdaRound<I> {
    pub pairs: Vec<AdaWork<I>>,
    pub prototypes: Vec<(usize, Vec<I>)>,
    /// Items the round embeds within the budget (re-scoring).
    pub cost: u64,
    /// Items it embeds outside the budget (first choices, or everything when unbudgeted).
    pub first: u64,
}

impl<I: GenieItem> Augmenter<I> {
    /// The level index a pair with this Ada record is mixed at: its choice, else the fixed
    /// level.
    pub(super) fn level_index(&self, record: &AdaRecord) -> usize {
        record
            .level
            .and_then(|l| self.levels.iter().position(|&x| x == l))
            .unwrap_or(self.fixed_index)
    }

    /// The level pair `id` is mixed at now.
    pub fn current_level(&self, id: PairId) -> Option<NoiseLevel> {
        let state = self.state();
        state
            .status
            .get(id)
            .map(|st| self.levels[st.current as usize])
    }

    /// Whether the Ada selector has anything to score: a pair with every level cached and a
    /// prototype for its target.
    pub(crate) fn has_ada_candidates(&self) -> bool {
        self.scorable(&self.state()).next().is_some()
    }

    /// The pairs GeNIe-Ada can score: every level cached, and a prototype for the target.
    pub(super) fn scorable<'a>(&self, state: &'a State<I>) -> impl Iterator<Item = PairId> + 'a {
        let full = (1u32 << self.levels.len()) - 1;
        state
            .pairs
            .iter()
            .enumerate()
            .filter(move |&(id, e)| {
                state.status[id].cached == full && !state.prototypes[e.target].is_empty()
            })
            .map(|(id, _)| id)
    }

    /// The selector's next round for `model_version`. Due are the pairs with every level
    /// cached, no verdict from this version yet and a prototype. Every due pair never scored
    /// is in it, outside the budget: its first choice is part of making its hard negative, like
    /// its diffusion, and waits for nothing. Re-scoring costs at most `budget` embedded items (a
    /// pair costs its source and one image per level; a target, once, its prototype items): the
    /// least recently scored pairs first, of one target per round (the most overdue pair's, so
    /// that its prototype is embedded once for all of them and targets take turns), so that no
    /// pair starves however small the budget. `u64::MAX` takes every due pair. Everything the
    /// round reads of the run (items, prototypes) is copied now, so that its outcome depends on
    /// this moment only.
    pub(crate) fn ada_round(&self, model_version: u64, budget: u64) -> AdaRound<I> {
        let state = self.state();
        let mut due: Vec<(bool, u64, PairId)> = self
            .scorable(&state)
            .map(|id| (id, &state.pairs[id]))
            .filter(|(_, e)| {
                e.choice
                    .as_ref()
                    .is_none_or(|c| c.model_version < model_version)
            })
            .map(|(id, e)| (e.scored_seq != 0, e.scored_seq, id))
            .collect();
        due.sort_unstable();
        let per_pair = self.levels.len() as u64 + 1;
        let mut round = AdaRound {
            pairs: Vec::new(),
            prototypes: Vec::new(),
            cost: 0,
            first: 0,
        };
        let mut only = None;
        for (rescore, _, id) in due {
            let e = &state.pairs[id];
            let charged = rescore && budget != u64::MAX;
            if charged && *only.get_or_insert(e.target) != e.target {
                continue;
            }
            let new_target = !round.prototypes.iter().any(|(t, _)| *t == e.target);
            let prototype = &state.prototypes[e.target];
            let mut cost = per_pair;
            if new_target {
                cost += prototype.len() as u64;
            }
            if charged {
                if round.cost + cost > budget {
                    // Strictly in order: skipping to a cheaper pair could starve a costly one.
                    break;
                }
                round.cost += cost;
            } else {
                round.first += cost;
            }
            if new_target {
                round.prototypes.push((e.target, prototype.clone()));
            }
            round.pairs.push(AdaWork {
                pair: id,
                source: e.item.clone(),
                target: e.target,
                keys: e.keys.clone(),
            });
        }
        round
    }

    /// Records the selector's verdict for a pair, and files a scored one in the cache (for
    /// `genie sheet` and reports; a failed write only costs that record).
    pub(crate) fn record_choice(&self, id: PairId, record: AdaRecord) {
        let filed = {
            let mut state = self.state();
            let state = &mut *state;
            let (Some(e), Some(st)) = (state.pairs.get_mut(id), state.status.get_mut(id)) else {
                return;
            };
            st.current = self.level_index(&record) as u32;
            e.choice = Some(record.clone());
            state.score_seq += 1;
            e.scored_seq = state.score_seq;
            (e.pair_key, self.keys.class_label(e.target))
        };
        if record.level.is_some() {
            let (pair_key, target) = filed;
            let note = AdaChoiceRecord::new(
                target,
                &self.levels,
                &record.curve,
                record.level,
                record.model_version,
            );
            if let Err(e) = self.cache.put_ada_choice(&pair_key, &note) {
                tracing::warn!(%pair_key, error = %e, "could not file a GeNIe-Ada choice in the cache");
            }
        }
    }

    /// The latest Ada record of each pair that has one.
    pub fn ada_records(&self) -> Vec<(PairId, AdaRecord)> {
        self.state()
            .pairs
            .iter()
            .enumerate()
            .filter_map(|(id, e)| e.choice.clone().map(|c| (id, c)))
            .collect()
    }

    /// How many pairs currently use each level (Ada's r*, or the fixed level without a choice).
    pub fn level_histogram(&self) -> BTreeMap<NoiseLevel, usize> {
        let state = self.state();
        let mut histogram = BTreeMap::new();
        for st in &state.status {
            *histogram
                .entry(self.levels[st.current as usize])
                .or_insert(0) += 1;
        }
        histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Cache;
    use crate::cache::MemoryStore;
    use crate::engine::EngineFingerprint;
    use crate::generator::KeySpace;
    use crate::loader::augmenter::AugmenterConfig;
    use crate::loader::image_item;
    use crate::policy::{ClassStats, Policy, PolicyConfig};
    use std::sync::Arc;

    fn augmenter() -> Augmenter<crate::loader::ImageItem> {
        let fingerprint = EngineFingerprint {
            model: "m".into(),
            scheduler: "s".into(),
            steps: 1,
            guidance: "1".into(),
            resolution: 4,
            dtype: "f32".into(),
            algorithm_version: 1,
        };
        let keys = KeySpace::new(fingerprint, 4, vec!["a".into(), "b".into(), "c".into()]);
        let policy = Policy::with_targets(
            ClassStats::from_counts(vec![100, 5, 5]),
            &[1, 2],
            PolicyConfig::long_tail(),
        )
        .unwrap();
        let cache = Arc::new(Cache::new(Arc::new(MemoryStore::new()), 0));
        Augmenter::new(policy, keys, cache, None, AugmenterConfig::default()).unwrap()
    }

    /// Versions come faster than the selector re-scores every pair: the first round gives every
    /// pair its first choice (outside the budget); with a budget of 50 pairs per version after
    /// that, each of 1200 pairs is scored again within ⌈1200 / 50⌉ = 24 versions (the least
    /// recently scored first).
    #[test]
    fn the_selector_starves_no_pair() {
        let augmenter = augmenter();
        let (pairs, budget) = (1200usize, 50usize);
        add_scorable_pairs(&augmenter, pairs, |_| 1);
        starve_no_pair(&augmenter, pairs, budget);
    }

    /// Two targets, their pairs interleaved: each budgeted re-scoring round serves one target
    /// (its prototype embedded once), the targets take turns, and no pair waits longer than a
    /// full pass takes.
    #[test]
    fn budgeted_rounds_serve_one_target_at_a_time_and_starve_none() {
        let augmenter = augmenter();
        let (pairs, budget) = (600usize, 30usize);
        add_scorable_pairs(&augmenter, pairs, |i| 1 + i % 2);
        starve_no_pair(&augmenter, pairs, budget);
        // Unbudgeted, a round takes every due pair of every target.
        let all = augmenter.ada_round(u64::MAX - 1, u64::MAX);
        assert_eq!((all.pairs.len(), all.prototypes.len()), (pairs, 2));
    }

    /// Adds `pairs` pairs with every level cached, pair `i` towards `target(i)`, and a prototype
    /// item for each target.
    fn add_scorable_pairs(
        augmenter: &Augmenter<crate::loader::ImageItem>,
        pairs: usize,
        target: impl Fn(usize) -> usize,
    ) {
        let item = image_item(&image::RgbImage::new(4, 4), 0, "x");
        let mut state = augmenter.state();
        let full = (1u32 << augmenter.levels.len()) - 1;
        for i in 0..pairs {
            let mut hash = [0u8; 32];
            hash[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let keys = vec![CacheKey::from_bytes(hash); augmenter.levels.len()];
            let t = target(i);
            augmenter.push_pair(&mut state, item.clone(), t, i as u64, hash, keys);
            state.status[i].cached = full;
            if state.prototypes[t].is_empty() {
                state.prototypes[t].push(item.clone());
            }
        }
    }

    /// Scores a first round (every pair, outside the budget), then budgeted rounds of `budget`
    /// pairs, and checks that every pair is scored again within ⌈pairs / budget⌉ rounds and
    /// that every target is served.
    fn starve_no_pair(
        augmenter: &Augmenter<crate::loader::ImageItem>,
        pairs: usize,
        budget: usize,
    ) {
        let mut targets_served = std::collections::BTreeSet::new();
        let rounds = pairs.div_ceil(budget) as u64;
        let per_pair = augmenter.levels.len() as u64 + 1;
        let mut last_scored = vec![0u64; pairs];
        for version in 1..=4 * rounds {
            // A budget of exactly `budget` pairs, plus the target's one prototype item.
            let round = augmenter.ada_round(version, budget as u64 * per_pair + 1);
            if version == 1 {
                // First choices are outside the budget: every pair has one after the first round.
                assert_eq!(round.pairs.len(), pairs);
                assert_eq!(round.cost, 0);
                let prototypes = round.prototypes.len() as u64;
                assert_eq!(round.first, pairs as u64 * per_pair + prototypes);
            } else {
                assert_eq!(round.pairs.len(), budget);
                assert_eq!((round.cost, round.first), (budget as u64 * per_pair + 1, 0));
                assert_eq!(round.prototypes.len(), 1);
                assert!(round
                    .pairs
                    .iter()
                    .all(|w| w.target == round.prototypes[0].0));
                targets_served.insert(round.pairs[0].target);
            }
            for w in round.pairs {
                last_scored[w.pair] = version;
                augmenter.record_choice(
                    w.pair,
                    AdaRecord {
                        // Every other pair unscorable: a verdict either way.
                        level: (w.pair % 2 == 0).then_some(NoiseLevel::GENIE_DEFAULT),
                        curve: Vec::new(),
                        model_version: version,
                    },
                );
            }
            if version > rounds {
                let stale = last_scored
                    .iter()
                    .filter(|&&v| v + rounds <= version)
                    .count();
                assert_eq!(stale, 0, "version {version}: {stale} pairs waited too long");
            }
        }
        let targets: std::collections::BTreeSet<usize> = (0..pairs)
            .map(|id| augmenter.state().pairs[id].target)
            .collect();
        assert_eq!(targets_served, targets);
    }
}
