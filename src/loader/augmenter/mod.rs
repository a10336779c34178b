//! The shared state of one run's online hard negatives: pairs and their source items, which
//! levels are cached, the Ada choices, and the per-batch work of [`crate::loader::GenieBatcher`].
//!
//! One [`Augmenter`] is shared (in an `Arc`) by the batcher, the Ada selector of
//! [`crate::loader::LiveModel`] and the caller. Its lock guards bookkeeping only: cache reads,
//! disk probes and generator requests happen outside it.
//!
//! Pairs start in one of two ways. Online (the default), batch items of source classes start
//! new pairs as they pass, a few per batch. With a pre-warm plan ([`Augmenter::with_plan`]),
//! exactly the plan's pairs start, each when its source item first passes: a training run then
//! mixes only what `genie warm run` made.
//!
//! This file holds the type, its configuration and one batch's path ([`Augmenter::augment`]);
//! each phase of that path is a room of its own: `pairs` (which pairs start), `confusion` (how
//! sources are read from the confusion matrix), `requests` (asking the generator and following
//! its answers), `mixing` (ready images into the batch), `ada` (the contract with
//! [`crate::loader::LiveModel`]) and `stats` (what it reports).

mod ada;
mod confusion;
mod mixing;
mod pairs;
mod requests;
mod stats;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::item::GenieItem;
use crate::cache::{Cache, CacheKey};
use crate::engine::NoiseLevel;
use crate::generator::KeySpace;
use crate::generator::{Generator, HardNegativeGenerator};
use crate::policy::{ConfusionMatrix, PairId, Policy, SharedConfusion};
use mixing::BuiltItems;
use pairs::{PairEntry, PlanIndex};

pub use ada::AdaRecord;
pub(crate) use ada::{AdaRound, AdaWork};
pub use mixing::ItemMemory;
pub use stats::{AugmenterStats, Exposure};

/// Knobs of the online loop beyond the policy's.
///
/// New settings may be added: start from [`AugmenterConfig::default`] and set fields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AugmenterConfig {
    /// Choose r per pair with GeNIe-Ada (generates every level of [`NoiseLevel::ADA_SWEEP`]);
    /// otherwise only `fixed_level` is generated.
    pub ada: bool,
    /// The level used without Ada, and with Ada until a pair has a choice (GeNIe's 0.8).
    pub fixed_level: NoiseLevel,
    /// Real images kept per target class for its Ada prototype.
    pub prototype_images: usize,
    /// Cache probes per batch for pairs whose images are not known to be ready.
    pub probes_per_batch: usize,
    /// Requests retried per batch after the generator dropped or deferred them.
    pub retries_per_batch: usize,
    /// Bytes of ready-made hard-negative items kept (least recently used first out), so that a
    /// hard negative is decoded and resized once, not at every use.
    pub item_memory_bytes: usize,
}

impl Default for AugmenterConfig {
    fn default() -> Self {
        AugmenterConfig {
            ada: true,
            fixed_level: NoiseLevel::GENIE_DEFAULT,
            prototype_images: 16,
            probes_per_batch: 16,
            retries_per_batch: 4,
            item_memory_bytes: 32 << 20,
        }
    }
}

/// Why an augmenter cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AugmenterError {
    /// The class names do not match the policy's class count.
    #[error("{classes} class names for a policy over {expected} classes")]
    ClassNames {
        /// Names given.
        classes: usize,
        /// Classes of the policy.
        expected: usize,
    },
    /// The generator runs another engine than the one the keys are made for.
    #[error(
        "the generator's engine ({generator}) is not the one the keys are made for ({keys}): \
         its images would never be found"
    )]
    FingerprintMismatch {
        /// The generator's engine.
        generator: String,
        /// The keys' engine.
        keys: String,
    },
    /// The builder has neither a generator nor a pre-warm fingerprint.
    #[error(
        "no engine to take the cache keys from: give the builder a generator, or the fingerprint \
         of the engine that pre-warmed the cache"
    )]
    NoEngine,
    /// A plan entry names a class this run does not have.
    #[error("the plan names class {0:?}, which is not one of the run's class ids")]
    PlanClass(String),
    /// A plan entry's source path has no class folder.
    #[error("the plan's source {0} has no `<class>/<file>` path to find it in the dataset by")]
    PlanSource(String),
    /// A plan entry lacks a level this run generates.
    #[error(
        "the plan has no r = {level} for {path} as {target:?}, which this run generates \
         (plan with the same levels, or turn GeNIe-Ada off to use the fixed level only)"
    )]
    PlanLevel {
        /// The source's path.
        path: String,
        /// The target class.
        target: String,
        /// The missing level.
        level: NoiseLevel,
    },
    /// A plan entry's key is not the one this run computes (another engine or classes).
    #[error(
        "the plan's key for {path} as {target:?} at r = {level} is not this run's: the plan was \
         made with another engine, other engine options, or other class names or superclasses"
    )]
    PlanKey {
        /// The source's path.
        path: String,
        /// The target class.
        target: String,
        /// The level.
        level: NoiseLevel,
    },
}

/// The online hard-negative state of one training run; see the module docs.
pub struct Augmenter<I> {
    keys: KeySpace,
    cache: Arc<Cache>,
    generator: Option<Arc<dyn HardNegativeGenerator>>,
    confusion: Option<SharedConfusion>,
    /// The confusion snapshot read last (its batch count), so a snapshot is copied once.
    confusion_snapshot: Mutex<Option<(u64, Arc<ConfusionMatrix>)>>,
    config: AugmenterConfig,
    levels: Vec<NoiseLevel>,
    fixed_index: usize,
    state: Mutex<State<I>>,
    built: Mutex<BuiltItems<I>>,
    counters: Counters,
}

struct State<I> {
    policy: Policy,
    pairs: Vec<PairEntry<I>>,
    /// One per pair, same index.
    status: Vec<PairStatus>,
    /// Real items of each target class, for its Ada prototype.
    prototypes: Vec<Vec<I>>,
    retry: VecDeque<PairId>,
    /// The pair each level key belongs to, for answers that come after the request (remote).
    by_key: HashMap<CacheKey, PairId>,
    probe_cursor: usize,
    plan: Option<PlanIndex>,
    score_seq: u64,
}

/// What every batch reads of each pair, kept apart from [`PairEntry`] so that scanning all
/// pairs touches a few bytes each, not their items and keys.
#[derive(Clone, Copy)]
struct PairStatus {
    /// Bit `i`: level `i` is known to be cached.
    cached: u32,
    /// Index of the level it is mixed at now: its Ada choice, else the fixed level.
    current: u32,
}

impl PairStatus {
    fn is_ready(self) -> bool {
        self.cached & (1 << self.current) != 0
    }
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    confusion_snapshots: AtomicU64,
    confusion_timeouts: AtomicU64,
    /// Items handed to training (after mixing).
    items: AtomicU64,
    mixed: AtomicU64,
    requested: AtomicU64,
    deferred: AtomicU64,
    lookups_failed: AtomicU64,
    bad_items: AtomicU64,
}

impl<I: GenieItem> Augmenter<I> {
    /// An augmenter that mixes hard negatives from `cache` and, when `generator` is given, asks
    /// it for the missing ones. Without a generator only pre-warmed images are used.
    pub fn new(
        policy: Policy,
        keys: KeySpace,
        cache: Arc<Cache>,
        generator: Option<Arc<Generator>>,
        config: AugmenterConfig,
    ) -> Result<Self, AugmenterError> {
        let generator = generator.map(|g| g as Arc<dyn HardNegativeGenerator>);
        if keys.num_classes() != policy.num_classes() {
            return Err(AugmenterError::ClassNames {
                classes: keys.num_classes(),
                expected: policy.num_classes(),
            });
        }
        if let Some(g) = generator
            .as_ref()
            .filter(|g| g.fingerprint() != keys.fingerprint())
        {
            return Err(AugmenterError::FingerprintMismatch {
                generator: g.fingerprint().to_string(),
                keys: keys.fingerprint().to_string(),
            });
        }
        let mut levels = if config.ada {
            NoiseLevel::ADA_SWEEP.to_vec()
        } else {
            Vec::new()
        };
        if !levels.contains(&config.fixed_level) {
            levels.push(config.fixed_level);
            levels.sort_unstable();
        }
        let fixed_index = levels
            .iter()
            .position(|&l| l == config.fixed_level)
            .unwrap_or(0);
        let classes = policy.num_classes();
        let item_budget = config.item_memory_bytes;
        Ok(Augmenter {
            keys,
            cache,
            generator,
            confusion: None,
            confusion_snapshot: Mutex::new(None),
            config,
            levels,
            fixed_index,
            state: Mutex::new(State {
                policy,
                pairs: Vec::new(),
                status: Vec::new(),
                prototypes: vec![Vec::new(); classes],
                retry: VecDeque::new(),
                by_key: HashMap::new(),
                probe_cursor: 0,
                plan: None,
                score_seq: 0,
            }),
            built: Mutex::new(BuiltItems {
                items: lru::LruCache::unbounded(),
                used: 0,
                budget: item_budget,
            }),
            counters: Counters::default(),
        })
    }

    /// Asks `generator` for hard negatives instead of the one given to [`Augmenter::new`]: a
    /// [`RemoteGenerator`](crate::remote::RemoteGenerator) (`genie serve` in another process)
    /// or any other [`HardNegativeGenerator`]. Its images must land in this augmenter's cache.
    pub fn with_generator(mut self, generator: Arc<dyn HardNegativeGenerator>) -> Self {
        self.generator = Some(generator);
        self
    }

    /// Reads source classes from this confusion matrix (for `SourceStrategy::TopConfused`).
    pub fn with_confusion(mut self, confusion: SharedConfusion) -> Self {
        self.confusion = Some(confusion);
        self
    }

    /// How this augmenter's cache keys are made.
    pub fn keys(&self) -> &KeySpace {
        &self.keys
    }

    /// The cache its hard negatives are read from.
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// The levels generated per pair (the Ada sweep, or the fixed level alone).
    pub fn levels(&self) -> &[NoiseLevel] {
        &self.levels
    }

    /// Its configuration.
    pub fn config(&self) -> &AugmenterConfig {
        &self.config
    }

    fn state(&self) -> MutexGuard<'_, State<I>> {
        crate::sync::lock(&self.state)
    }

    /// Runs `f` on the policy (e.g. to read its targets or groups).
    pub fn with_policy<R>(&self, f: impl FnOnce(&Policy) -> R) -> R {
        f(&self.state().policy)
    }

    /// One batch's work: count its classes, record target images, start new pairs, retry and
    /// probe, then replace (or extend) items with ready hard negatives. Never waits for generation.
    pub fn augment(&self, mut items: Vec<I>) -> Vec<I> {
        let earlier = self.counters.batches.fetch_add(1, Ordering::Relaxed);
        // (index in the batch, label) of the labelled items.
        let labelled: Vec<(usize, usize)> = items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| item.label().map(|l| (i, l)))
            .collect();
        let labels: Vec<usize> = labelled.iter().map(|&(_, l)| l).collect();
        let proposals = self.observe(&items, &labelled, &labels, earlier);
        self.start_pairs(&items, &labelled, proposals);
        self.take_late_receipts();
        self.retry_deferred();
        self.probe();
        self.mix(&mut items, &labelled, &labels);
        self.counters
            .items
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        items
    }
}
