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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use image::RgbImage;

use super::item::GenieItem;
use crate::cache::{AdaChoiceRecord, Cache, CacheKey};
use crate::engine::NoiseLevel;
use crate::generator::KeySpace;
use crate::generator::{
    Generator, HardNegativeGenerator, LevelOutcome, Priority, Receipt, SourceImage,
};
use crate::policy::{
    BatchCounts, ConfusionMatrix, PairId, Policy, Proposal, SharedConfusion, SNAPSHOT_EVERY,
};
use crate::warm::PlannedPair;

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

struct PairEntry<I> {
    /// The source item, kept to embed it for Ada and as the shape of its hard negatives.
    item: I,
    target: usize,
    seed: u64,
    /// What the keys were made from; a source read again for a request must still match.
    source_hash: [u8; 32],
    /// One key per level of `Augmenter::levels`.
    keys: Vec<CacheKey>,
    /// The pair's own key, under which its Ada choice is filed in the cache.
    pair_key: CacheKey,
    choice: Option<AdaRecord>,
    /// When the selector last gave a verdict on it (0: never), so that it scores the pairs
    /// never scored first, then the least recently scored, and starves none.
    scored_seq: u64,
}

/// One pair of a loaded plan, ready to start when its source item passes.
struct PlanSlot {
    source_class: usize,
    target: usize,
    variant: u32,
    seed: u64,
    source_hash: [u8; 32],
    keys: Vec<CacheKey>,
}

/// The loaded plan: its pairs by source id, and whether each source has passed yet.
struct PlanIndex {
    by_source: HashMap<String, (bool, Vec<usize>)>,
    slots: Vec<PlanSlot>,
    sources_left: usize,
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

/// Ready-made hard-negative items by cache key, within a byte budget.
struct BuiltItems<I> {
    items: lru::LruCache<CacheKey, (I, usize)>,
    used: usize,
    budget: usize,
}

impl<I: GenieItem> BuiltItems<I> {
    fn get(&mut self, key: &CacheKey) -> Option<I> {
        self.items.get(key).map(|(item, _)| item.clone())
    }

    fn insert(&mut self, key: CacheKey, item: I) {
        let bytes = item.heap_bytes();
        if bytes > self.budget {
            return;
        }
        if let Some((_, old)) = self.items.pop(&key) {
            self.used -= old;
        }
        while self.used + bytes > self.budget {
            match self.items.pop_lru() {
                Some((_, (_, old))) => self.used -= old,
                None => break,
            }
        }
        self.used += bytes;
        self.items.put(key, (item, bytes));
    }

    fn remove(&mut self, key: &CacheKey) {
        if let Some((_, old)) = self.items.pop(key) {
            self.used -= old;
        }
    }
}

/// Bytes held in memory by an augmenter's ready-made items.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ItemMemory {
    /// Items held.
    pub items: usize,
    /// Their estimated bytes.
    pub used_bytes: usize,
    /// [`AugmenterConfig::item_memory_bytes`].
    pub budget_bytes: usize,
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

/// How a batch reads the confusion matrix ([`Augmenter::confusion_read`]).
enum ConfusionRead {
    /// The live matrix (or none attached).
    Live,
    /// A snapshot at a fixed batch count; `None` before the first.
    Fixed(Option<Arc<ConfusionMatrix>>),
}

/// Batches a metric thread may trail the batch being built by before the augmenter waits for it:
/// the snapshot read is the last one at least this many batches back.
const CONFUSION_LAG: u64 = 2;

/// How long a batch waits for the metric thread to reach a snapshot before giving up on
/// snapshots for the run.
const CONFUSION_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

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

    fn confusion_guard(&self) -> Option<MutexGuard<'_, ConfusionMatrix>> {
        self.confusion.as_ref().map(SharedConfusion::lock)
    }

    /// How the batch after `earlier` batches reads the confusion matrix. A matrix recorded on
    /// the training thread is read live: it holds exactly the batches before this one. One a
    /// metric thread records (burn's `SupervisedTraining`) is read as its snapshot after a fixed
    /// number of batches — the last multiple of [`SNAPSHOT_EVERY`] at least
    /// [`CONFUSION_LAG`] batches back, waited for if the metric thread is behind — so that the
    /// sources proposed do not depend on that thread's timing.
    fn confusion_read(&self, earlier: u64) -> ConfusionRead {
        let Some(confusion) = &self.confusion else {
            return ConfusionRead::Live;
        };
        let gave_up = self.counters.confusion_timeouts.load(Ordering::Relaxed) > 0;
        if !confusion.is_recorded_asynchronously() || gave_up {
            return ConfusionRead::Live;
        }
        let tag = earlier.saturating_sub(CONFUSION_LAG) / SNAPSHOT_EVERY * SNAPSHOT_EVERY;
        if tag == 0 {
            return ConfusionRead::Fixed(None);
        }
        let mut last = crate::sync::lock(&self.confusion_snapshot);
        if let Some((_, matrix)) = last.as_ref().filter(|(seen, _)| *seen == tag) {
            self.counters
                .confusion_snapshots
                .fetch_add(1, Ordering::Relaxed);
            return ConfusionRead::Fixed(Some(Arc::clone(matrix)));
        }
        match confusion.snapshot_after(tag, CONFUSION_WAIT) {
            Some(matrix) => {
                let matrix = Arc::new(matrix);
                *last = Some((tag, Arc::clone(&matrix)));
                self.counters
                    .confusion_snapshots
                    .fetch_add(1, Ordering::Relaxed);
                ConfusionRead::Fixed(Some(matrix))
            }
            None => {
                self.counters
                    .confusion_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    batches = tag,
                    recorded = confusion.batches(),
                    "the confusion metric did not record {tag} batches within {CONFUSION_WAIT:?} \
                     (is it registered with the training loop?): the live matrix is read from \
                     now on, so the sources proposed depend on the metric thread's timing"
                );
                ConfusionRead::Live
            }
        }
    }

    /// The level index a pair with this Ada record is mixed at: its choice, else the fixed
    /// level.
    fn level_index(&self, record: &AdaRecord) -> usize {
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

    /// Phase 1: the class statistics see the batch's real items, target classes' real images
    /// are kept for their prototypes, and either the plan's pairs of these items start or the
    /// policy proposes (source item, target) pairs.
    fn observe(
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
    fn start_pairs(&self, items: &[I], labelled: &[(usize, usize)], proposals: Vec<Proposal>) {
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

    /// Phase 3 (after the follow-ups: late receipts, retries, probes): ready hard negatives
    /// replace items of over-represented classes (or are appended); those that turn out to be
    /// gone from the cache are marked not ready.
    fn mix(&self, items: &mut Vec<I>, labelled: &[(usize, usize)], labels: &[usize]) {
        let mut state = self.state();
        let ready: Vec<PairId> = state
            .status
            .iter()
            .enumerate()
            .filter(|(_, st)| st.is_ready())
            .map(|(id, _)| id)
            .collect();
        let plan = state.policy.plan_mix(labels, &ready);
        let picks: Vec<(PairId, usize, CacheKey, usize)> = plan
            .insert
            .iter()
            .map(|&id| {
                let e = &state.pairs[id];
                let level = state.status[id].current as usize;
                (id, level, e.keys[level], e.target)
            })
            .collect();
        drop(state);

        let mut appended = Vec::new();
        let mut gone = Vec::new();
        let mut replaced_labels = Vec::new();
        let mut mixed_targets = Vec::new();
        // Ready-made items under one lock; the rest are read from the cache one by one.
        let mut ready_made: Vec<Option<I>> = {
            let mut built = self.built();
            picks.iter().map(|(_, _, key, _)| built.get(key)).collect()
        };
        for (n, (id, level, key, target)) in picks.into_iter().enumerate() {
            let slot = plan.replace.get(n).map(|&i| labelled[i]);
            let item = ready_made[n]
                .take()
                .or_else(|| self.hard_negative(id, &key, target));
            match item {
                Some(item) => {
                    self.counters.mixed.fetch_add(1, Ordering::Relaxed);
                    mixed_targets.push(target);
                    match slot {
                        Some((i, label)) => {
                            if !items[i].is_generated() {
                                replaced_labels.push(label);
                            }
                            items[i] = item;
                        }
                        None => appended.push(item),
                    }
                }
                None => gone.push((id, level)),
            }
        }
        if !gone.is_empty() || !mixed_targets.is_empty() {
            let mut state = self.state();
            state.policy.record_mix(&replaced_labels, &mixed_targets);
            for (id, level) in gone {
                state.status[id].cached &= !(1 << level);
                self.built().remove(&state.pairs[id].keys[level]);
            }
        }
        items.extend(appended);
    }

    /// Items this augmenter has handed to training so far, hard negatives included: the
    /// measure of training work that GeNIe-Ada's scoring budget is a share of.
    pub fn items_batched(&self) -> u64 {
        self.counters.items.load(Ordering::Relaxed)
    }

    fn push_pair(
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
    fn start_planned(&self, state: &mut State<I>, items: &[I], labelled: &[(usize, usize)]) {
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

    fn keep_prototypes(&self, state: &mut State<I>, items: &[I], labelled: &[(usize, usize)]) {
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

    /// The item's source as the engine takes it: its original at full resolution
    /// ([`GenieItem::source_rgb`]), resized and cropped to the engine's size, hashed.
    fn source_of(&self, item: &I) -> Option<SourceImage> {
        let source = item
            .source_rgb()
            .map_err(|e| e.to_string())
            .and_then(|rgb| self.keys.source(&rgb).map_err(|e| e.to_string()));
        match source {
            Ok(s) => Some(s),
            Err(e) => {
                self.counters.bad_items.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "skipping a source item whose pixels cannot be read");
                None
            }
        }
    }

    /// The hard negative of `key`, not ready-made, as an item shaped like pair `id`'s source:
    /// read from the cache and built (then kept ready-made). `None` (counted) when it is gone.
    fn hard_negative(&self, id: PairId, key: &CacheKey, target: usize) -> Option<I> {
        let source = self.state().pairs[id].item.clone();
        let built = match self.cache.get_image(key) {
            Ok(Some(image)) => source
                .with_generated(&image, target, &key.to_string())
                .map_err(|e| tracing::warn!(%key, error = %e, "cannot build an item"))
                .ok(),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(%key, error = %e, "cache read failed");
                None
            }
        };
        match &built {
            Some(item) => self.built().insert(*key, item.clone()),
            None => {
                self.counters.lookups_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        built
    }

    fn built(&self) -> MutexGuard<'_, BuiltItems<I>> {
        crate::sync::lock(&self.built)
    }

    /// Memory held by ready-made hard-negative items (the decoded images are in the cache's
    /// memory tier, under its own budget).
    pub fn item_memory(&self) -> ItemMemory {
        let built = self.built();
        ItemMemory {
            items: built.items.len(),
            used_bytes: built.used,
            budget_bytes: built.budget,
        }
    }

    fn request(&self, id: PairId, source: SourceImage) {
        let Some(generator) = &self.generator else {
            return;
        };
        let (target, seed, hash) = {
            let state = self.state();
            let e = &state.pairs[id];
            (e.target, e.seed, e.source_hash)
        };
        if source.hash != hash {
            // The source changed since its keys were made (e.g. a file rewritten after
            // planning): its images would land under keys nobody reads.
            self.counters.bad_items.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                pair = id,
                "a source no longer has the pixels its keys were made from; not requested"
            );
            return;
        }
        let request =
            self.keys
                .request(source, target, self.levels.clone(), seed, Priority::Online);
        let receipt = match generator.request(request) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "generator refused a request");
                self.state().retry.push_back(id);
                return;
            }
        };
        let mut state = self.state();
        self.apply_receipt(&mut state, id, &receipt);
    }

    /// Records what the generator said of a pair's levels (at once, or later for a remote one).
    fn apply_receipt(&self, state: &mut State<I>, id: PairId, receipt: &Receipt) {
        let mut deferred = false;
        for (_, key, outcome) in &receipt.levels {
            let Some(i) = state.pairs[id].keys.iter().position(|k| k == key) else {
                continue;
            };
            match outcome {
                LevelOutcome::AlreadyCached => state.status[id].cached |= 1 << i,
                LevelOutcome::Queued => {
                    self.counters.requested.fetch_add(1, Ordering::Relaxed);
                }
                // The answer comes later, as a late receipt.
                LevelOutcome::AlreadyPending | LevelOutcome::Sent => {}
                LevelOutcome::BackingOff | LevelOutcome::Dropped => {
                    self.counters.deferred.fetch_add(1, Ordering::Relaxed);
                    deferred = true;
                }
            }
        }
        if deferred {
            state.retry.push_back(id);
        }
    }

    /// Applies a remote generator's answers to requests sent in earlier batches.
    fn take_late_receipts(&self) {
        let Some(generator) = &self.generator else {
            return;
        };
        let receipts = generator.late_receipts();
        if receipts.is_empty() {
            return;
        }
        let mut state = self.state();
        for receipt in receipts {
            let id = receipt
                .levels
                .iter()
                .find_map(|(_, key, _)| state.by_key.get(key).copied());
            if let Some(id) = id {
                self.apply_receipt(&mut state, id, &receipt);
            }
        }
    }

    fn retry_deferred(&self) {
        let Some(generator) = &self.generator else {
            return;
        };
        for _ in 0..self.config.retries_per_batch {
            // A full queue would refuse the retry after its source was hashed again.
            if !generator.has_room(Priority::Online) {
                return;
            }
            let (id, item, missing) = {
                let mut state = self.state();
                let Some(id) = state.retry.pop_front() else {
                    return;
                };
                let cached = state.status[id].cached;
                let missing: Vec<(usize, CacheKey)> = state.pairs[id]
                    .keys
                    .iter()
                    .enumerate()
                    .filter(|&(level, _)| cached & (1 << level) == 0)
                    .map(|(level, &key)| (level, key))
                    .collect();
                (id, state.pairs[id].item.clone(), missing)
            };
            // Pre-warmed levels need no request, and no reading or hashing of the source.
            let found: Vec<usize> = missing
                .iter()
                .filter(|(_, key)| self.cache.contains(key).unwrap_or(false))
                .map(|&(level, _)| level)
                .collect();
            if !found.is_empty() {
                let mut state = self.state();
                for level in &found {
                    state.status[id].cached |= 1 << level;
                }
            }
            if found.len() == missing.len() {
                continue;
            }
            if let Some(source) = self.source_of(&item) {
                self.request(id, source);
            }
        }
    }

    /// Checks a few not-yet-ready (pair, level)s against the cache, current levels first.
    fn probe(&self) {
        let budget = self.config.probes_per_batch;
        let todo: Vec<(PairId, usize, CacheKey)> = {
            let mut state = self.state();
            let n = state.pairs.len();
            let full = (1u32 << self.levels.len()) - 1;
            let mut todo = Vec::new();
            let start = state.probe_cursor;
            let mut scanned = 0;
            while todo.len() < budget && scanned < n {
                let id = (start + scanned) % n;
                scanned += 1;
                let st = state.status[id];
                if st.cached == full {
                    continue;
                }
                let keys = &state.pairs[id].keys;
                let order = std::iter::once(st.current as usize).chain(0..self.levels.len());
                for level in order {
                    if st.cached & (1 << level) == 0
                        && todo.len() < budget
                        && !todo.contains(&(id, level, keys[level]))
                    {
                        todo.push((id, level, keys[level]));
                    }
                }
            }
            state.probe_cursor = if n == 0 { 0 } else { (start + scanned) % n };
            todo
        };
        let found: Vec<(PairId, usize)> = todo
            .into_iter()
            .filter(|(_, _, key)| self.cache.contains(key).unwrap_or(false))
            .map(|(id, level, _)| (id, level))
            .collect();
        if !found.is_empty() {
            let mut state = self.state();
            for (id, level) in found {
                state.status[id].cached |= 1 << level;
            }
        }
    }

    /// Whether the Ada selector has anything to score: a pair with every level cached and a
    /// prototype for its target.
    pub(crate) fn has_ada_candidates(&self) -> bool {
        self.scorable(&self.state()).next().is_some()
    }

    /// The pairs GeNIe-Ada can score: every level cached, and a prototype for the target.
    fn scorable<'a>(&self, state: &'a State<I>) -> impl Iterator<Item = PairId> + 'a {
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
    /// ([`Cache::ada_choice`]; what `genie sheet` reads).
    pub fn pair_record_key(&self, id: PairId) -> Option<CacheKey> {
        self.state().pairs.get(id).map(|e| e.pair_key)
    }

    /// The cache key of pair `id` at `level`, if that level is generated for it.
    pub fn pair_key(&self, id: PairId, level: NoiseLevel) -> Option<CacheKey> {
        let index = self.levels.iter().position(|&l| l == level)?;
        self.state().pairs.get(id).map(|e| e.keys[index])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::MemoryStore;
    use crate::engine::EngineFingerprint;
    use crate::loader::image_item;
    use crate::policy::{ClassStats, PolicyConfig};

    fn augmenter() -> Augmenter<burn_dataset::vision::ImageDatasetItem> {
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
        augmenter: &Augmenter<burn_dataset::vision::ImageDatasetItem>,
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
        augmenter: &Augmenter<burn_dataset::vision::ImageDatasetItem>,
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
