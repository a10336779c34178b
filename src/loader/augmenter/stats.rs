//! What an augmenter reports: its counters, how often each hard negative was used, and the
//! keys and images of one pair.

use std::sync::atomic::{AtomicU64, Ordering};

use image::RgbImage;

use super::Augmenter;
use crate::cache::CacheKey;
use crate::engine::NoiseLevel;
use crate::loader::item::GenieItem;
use crate::policy::{BatchCounts, PairId};

/// Counters of the online loop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AugmenterStats {
    /// Batches augmented.
    pub batches: u64,
    /// Hard negatives put into batches.
    pub mixed: u64,
    /// (source item, target class) pairs started.
    pub pairs: usize,
    /// Pairs whose image at their current level is known to be cached.
    pub ready: usize,
    /// Levels the generator accepted (queued) for us.
    pub requested: u64,
    /// Levels the generator dropped or deferred (full queue, backoff); retried later.
    pub deferred: u64,
    /// Planned hard negatives that could not be read back (evicted, corrupt) or built.
    pub lookups_failed: u64,
    /// Source items whose pixels could not be read (or no longer match their plan entry).
    pub bad_items: u64,
    /// Pairs with a GeNIe-Ada choice from some model version.
    pub ada_choices: usize,
    /// Pairs GeNIe-Ada can score: every level known to be cached, and real images of the
    /// target kept for its prototype.
    pub ada_scorable: usize,
    /// Pairs of the loaded pre-warm plan (0 without a plan); `pairs` of them have started.
    pub planned: usize,
    /// Batches whose sources came from a confusion snapshot at a fixed batch count (a matrix
    /// recorded by a metric thread).
    pub confusion_snapshots: u64,
    /// Times the metric thread did not reach a snapshot's batch count in time; from the first,
    /// the live matrix is read (proposals then depend on the metric thread's timing).
    pub confusion_timeouts: u64,
}

/// How often the hard negatives were mixed: uses per pair (each pair is one generated image
/// at a time, its Ada choice or the fixed level), over the pairs ready or used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exposure {
    /// Pairs counted.
    pub images: usize,
    /// Fewest uses of a pair.
    pub min: u64,
    /// Median uses.
    pub median: u64,
    /// Most uses of a pair.
    pub max: u64,
    /// All uses.
    pub total: u64,
}

impl<I: GenieItem> Augmenter<I> {
    /// Items this augmenter has handed to training so far, hard negatives included: the
    /// measure of training work that GeNIe-Ada's scoring budget is a share of.
    pub fn items_batched(&self) -> u64 {
        self.counters.items.load(Ordering::Relaxed)
    }

    /// Per-class counts of what the batches held: real items seen and given up, hard negatives
    /// mixed in (the class statistics every batch updates).
    pub fn batch_counts(&self) -> BatchCounts {
        self.state().policy.batch_counts().clone()
    }

    /// Counters of the online loop so far.
    pub fn stats(&self) -> AugmenterStats {
        let state = self.state();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AugmenterStats {
            batches: load(&self.counters.batches),
            mixed: load(&self.counters.mixed),
            pairs: state.pairs.len(),
            ready: state.status.iter().filter(|st| st.is_ready()).count(),
            requested: load(&self.counters.requested),
            deferred: load(&self.counters.deferred),
            lookups_failed: load(&self.counters.lookups_failed),
            bad_items: load(&self.counters.bad_items),
            ada_choices: state
                .pairs
                .iter()
                .filter(|e| e.choice.as_ref().is_some_and(|c| c.level.is_some()))
                .count(),
            ada_scorable: self.scorable(&state).count(),
            planned: state.plan.as_ref().map_or(0, |p| p.slots.len()),
            confusion_snapshots: load(&self.counters.confusion_snapshots),
            confusion_timeouts: load(&self.counters.confusion_timeouts),
        }
    }

    /// Uses per hard negative so far (min / median / max over the pairs that are ready to mix
    /// or were mixed).
    pub fn exposure(&self) -> Exposure {
        let state = self.state();
        let mut uses: Vec<u64> = (0..state.pairs.len())
            .map(|id| (id, state.policy.uses(id)))
            .filter(|&(id, n)| n > 0 || state.status[id].is_ready())
            .map(|(_, n)| n)
            .collect();
        uses.sort_unstable();
        match (uses.first(), uses.last()) {
            (Some(&min), Some(&max)) => Exposure {
                images: uses.len(),
                min,
                median: uses[uses.len() / 2],
                max,
                total: uses.iter().sum(),
            },
            _ => Exposure::default(),
        }
    }

    /// How many times pair `id` was mixed into a batch.
    pub fn uses(&self, id: PairId) -> u64 {
        self.state().policy.uses(id)
    }

    /// The source image, target and current level of a pair (for reports and tests).
    pub fn pair_info(&self, id: PairId) -> Option<(RgbImage, usize, NoiseLevel)> {
        let state = self.state();
        let e = state.pairs.get(id)?;
        let rgb = e.item.rgb().ok()?;
        Some((
            rgb,
            e.target,
            self.levels[state.status[id].current as usize],
        ))
    }

    /// The key pair `id`'s GeNIe-Ada choices are filed under in the cache
    /// ([`Cache::ada_choice`](crate::cache::Cache::ada_choice); what `genie sheet` reads).
    pub fn pair_record_key(&self, id: PairId) -> Option<CacheKey> {
        self.state().pairs.get(id).map(|e| e.pair_key)
    }

    /// The cache key of pair `id` at `level`, if that level is generated for it.
    pub fn pair_key(&self, id: PairId, level: NoiseLevel) -> Option<CacheKey> {
        let index = self.levels.iter().position(|&l| l == level)?;
        self.state().pairs.get(id).map(|e| e.keys[index])
    }
}
