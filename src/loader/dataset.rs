//! [`GenieDataset`]: the paper's offline protocol as a burn `Dataset`: the original items plus
//! the cached hard negatives the policy's quotas (or a pre-warm plan) allow, with a fixed length;
//! each pair's level fixed, or chosen by GeNIe-Ada with a model given at build time.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use burn::data::dataset::{Dataset, DatasetError};

use super::item::GenieItem;
use super::live::{embed, FeatureExtractor};
use super::LoaderError;
use crate::cache::{Cache, CacheKey};
use crate::engine::NoiseLevel;
use crate::generator::KeySpace;
use crate::generator::{Generator, HardNegativeGenerator, LevelOutcome, Priority};
use crate::policy::{ConfusionMatrix, Policy};
use crate::warm::PlannedPair;

/// One hard negative of an offline plan: a (source item, target, variant) and its keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedNegative {
    /// Index of the source item in the original dataset.
    pub source_index: usize,
    /// The target class.
    pub target: usize,
    /// Which noise of the pair.
    pub variant: u32,
    /// The pair's noise seed ([`KeySpace::pair_seed`]).
    pub seed: u64,
    /// Pixel hash of the source as the engine takes it.
    pub source_hash: [u8; 32],
    /// One key per level of [`OfflinePlan::levels`], in that order.
    pub keys: Vec<CacheKey>,
    /// The level the hard negative is taken at: the plan's fixed level, or the pair's GeNIe-Ada
    /// choice after [`OfflinePlan::choose_levels`].
    pub level: NoiseLevel,
    /// The key of `level`.
    pub key: CacheKey,
}

impl PlannedNegative {
    /// Variant `variant` of the pair (source item `source` = (index, pixel hash), `target`): its
    /// seed drawn from `run_seed` as every plan's is, its keys at `levels`, taken at `level`.
    fn new(
        keys: &KeySpace,
        run_seed: u64,
        (source_index, source_hash): (usize, [u8; 32]),
        target: usize,
        variant: u32,
        levels: &[NoiseLevel],
        level: NoiseLevel,
    ) -> Self {
        let seed = keys.pair_seed(run_seed, source_hash, target, variant);
        PlannedNegative {
            source_index,
            target,
            variant,
            seed,
            source_hash,
            keys: levels
                .iter()
                .map(|&l| keys.key(source_hash, target, l, seed))
                .collect(),
            level,
            key: keys.key(source_hash, target, level, seed),
        }
    }
}

/// Every hard negative the quotas allow for a dataset, with its cache keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OfflinePlan {
    /// The levels generated per pair: one, or the GeNIe-Ada sweep.
    pub levels: Vec<NoiseLevel>,
    /// Every planned hard negative.
    pub negatives: Vec<PlannedNegative>,
}

/// What [`OfflinePlan::choose_levels`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdaOutcome {
    /// Pairs whose level is now their GeNIe-Ada choice.
    pub chosen: usize,
    /// Pairs that keep the fixed level: a level not cached yet.
    pub incomplete: usize,
    /// Pairs that keep the fixed level: degenerate embeddings (e.g. prototype = source).
    pub unscorable: usize,
}

/// Real items per class embedded for a target's prototype (the first ones of the dataset): a
/// few-shot support set is smaller, a long-tail Few class too; this bounds the embedding call of
/// a large target class.
const PROTOTYPE_ITEMS: usize = 64;

/// The level a plan mixes before (or without) GeNIe-Ada: GeNIe's 0.8 when generated, else the
/// first.
fn fixed_level(levels: &[NoiseLevel]) -> Option<NoiseLevel> {
    levels
        .iter()
        .copied()
        .find(|&l| l == NoiseLevel::GENIE_DEFAULT)
        .or_else(|| levels.first().copied())
}

impl OfflinePlan {
    /// Plans `policy`'s quotas over `dataset` at `levels` (one level, or
    /// [`NoiseLevel::ADA_SWEEP`] to choose r per pair with [`OfflinePlan::choose_levels`]);
    /// sources from `confusion` when the policy asks for the top-confused classes. Reads every
    /// item once. The pairs are [`Policy::offline_plan`]'s, as `genie warm plan` chooses them.
    pub fn new<D: Dataset<I>, I: GenieItem>(
        dataset: &D,
        policy: &Policy,
        keys: &KeySpace,
        levels: &[NoiseLevel],
        confusion: Option<&ConfusionMatrix>,
    ) -> Result<Self, LoaderError> {
        let fixed = fixed_level(levels).ok_or(LoaderError::NoLevels)?;
        let mut labels = Vec::with_capacity(dataset.len());
        for index in 0..dataset.len() {
            let item = get(dataset, index)?;
            // Items without a class label can be neither sources nor targets.
            labels.push(item.label().unwrap_or(usize::MAX));
        }
        let run_seed = policy.config().seed;
        let mut negatives = Vec::new();
        let mut hashes: HashMap<usize, [u8; 32]> = HashMap::new();
        for (source_index, target, variant) in policy.offline_plan(&labels, confusion) {
            let source = (
                source_index,
                source_hash(&mut hashes, dataset, keys, source_index)?,
            );
            negatives.push(PlannedNegative::new(
                keys, run_seed, source, target, variant, levels, fixed,
            ));
        }
        Ok(OfflinePlan {
            levels: levels.to_vec(),
            negatives,
        })
    }

    /// The paper's same-class baselines with this plan's image counts: for each target, as many
    /// images as this plan has for it, each from an image of the target class itself (its real
    /// items in turn, variants 1, 2, … once each has been used), at `level` — Img2Img-L (r =
    /// 0.3), Img2Img-H (r = 0.7), or Txt2Img at [`NoiseLevel::TEXT_TO_IMAGE`] (the source then only
    /// seeds the noise). A target without real items gets none. Seeds come from `run_seed` as
    /// every plan's do, so the keys repeat across runs.
    pub fn own_class<D: Dataset<I>, I: GenieItem>(
        &self,
        dataset: &D,
        keys: &KeySpace,
        level: NoiseLevel,
        run_seed: u64,
    ) -> Result<Self, LoaderError> {
        let mut wanted: Vec<(usize, usize)> = Vec::new();
        for n in &self.negatives {
            match wanted.iter_mut().find(|(t, _)| *t == n.target) {
                Some((_, count)) => *count += 1,
                None => wanted.push((n.target, 1)),
            }
        }
        let mut own: HashMap<usize, Vec<usize>> = HashMap::new();
        for index in 0..dataset.len() {
            let item = get(dataset, index)?;
            if let Some(label) = item.label().filter(|_| !item.is_generated()) {
                if wanted.iter().any(|&(t, _)| t == label) {
                    own.entry(label).or_default().push(index);
                }
            }
        }
        let mut negatives = Vec::new();
        let mut hashes: HashMap<usize, [u8; 32]> = HashMap::new();
        for (target, count) in wanted {
            let Some(sources) = own.get(&target) else {
                continue;
            };
            for i in 0..count {
                let source_index = sources[i % sources.len()];
                let variant = (i / sources.len()) as u32;
                let source = (
                    source_index,
                    source_hash(&mut hashes, dataset, keys, source_index)?,
                );
                negatives.push(PlannedNegative::new(
                    keys,
                    run_seed,
                    source,
                    target,
                    variant,
                    &[level],
                    level,
                ));
            }
        }
        Ok(OfflinePlan {
            levels: vec![level],
            negatives,
        })
    }

    /// The pairs of a pre-warm plan (`genie warm plan`, [`crate::warm::plan_pairs`]) over
    /// `dataset`, at `levels`: each plan source is found among the dataset's items by
    /// [`GenieItem::source_id`] (one pass over the dataset). A plan source the dataset lacks,
    /// a level the plan lacks, or a key this run's key space would not make is an error.
    pub fn from_plan<D: Dataset<I>, I: GenieItem>(
        dataset: &D,
        pairs: &[PlannedPair],
        keys: &KeySpace,
        levels: &[NoiseLevel],
    ) -> Result<Self, LoaderError> {
        let fixed = fixed_level(levels).ok_or(LoaderError::NoLevels)?;
        let mut index_of: HashMap<String, usize> = HashMap::new();
        for index in 0..dataset.len() {
            let item = get(dataset, index)?;
            if let Some(id) = item.source_id() {
                index_of.entry(id.to_string()).or_insert(index);
            }
        }
        let mut negatives = Vec::with_capacity(pairs.len());
        for p in pairs {
            let plan_error = |message: String| LoaderError::Plan {
                path: p.source.display().to_string(),
                message,
            };
            let source_index = p
                .source_id()
                .and_then(|id| index_of.get(id).copied())
                .ok_or_else(|| plan_error("not in the dataset".into()))?;
            let target = keys
                .class_index(&p.target)
                .ok_or_else(|| plan_error(format!("unknown target class {:?}", p.target)))?;
            let mut level_keys = Vec::with_capacity(levels.len());
            for &level in levels {
                let key = p
                    .key(level)
                    .ok_or_else(|| plan_error(format!("the plan has no r = {level}")))?;
                if key != keys.key(p.source_hash, target, level, p.seed) {
                    return Err(plan_error(format!(
                        "the key at r = {level} was made with another engine, other options or \
                         other class names"
                    )));
                }
                level_keys.push(key);
            }
            let key = level_keys[levels.iter().position(|&l| l == fixed).unwrap_or(0)];
            negatives.push(PlannedNegative {
                source_index,
                target,
                variant: p.variant,
                seed: p.seed,
                source_hash: p.source_hash,
                keys: level_keys,
                level: fixed,
                key,
            });
        }
        Ok(OfflinePlan {
            levels: levels.to_vec(),
            negatives,
        })
    }

    /// The plan as a pre-warm plan's pairs, for [`crate::loader::Augmenter::with_plan`]: a
    /// training run then mixes exactly these pairs (e.g. generated before it starts). Each
    /// source is named by its item's [`GenieItem::source_id`]; an item without one is an error.
    pub fn pairs<D: Dataset<I>, I: GenieItem>(
        &self,
        dataset: &D,
        keys: &KeySpace,
    ) -> Result<Vec<PlannedPair>, LoaderError> {
        let mut pairs = Vec::with_capacity(self.negatives.len());
        for n in &self.negatives {
            let item = get(dataset, n.source_index)?;
            let source = item.source_id().ok_or_else(|| LoaderError::Plan {
                path: format!("dataset item {}", n.source_index),
                message: "the item has no source id (`<class>/<file>`) to find it by".into(),
            })?;
            let source_class = item.label().map_or_else(String::new, |l| keys.class_id(l));
            let mut levels: Vec<(NoiseLevel, CacheKey)> = self
                .levels
                .iter()
                .copied()
                .zip(n.keys.iter().copied())
                .collect();
            levels.sort_unstable();
            pairs.push(PlannedPair {
                source: source.into(),
                source_class,
                target: keys.class_id(n.target),
                variant: n.variant,
                seed: n.seed,
                source_hash: n.source_hash,
                levels,
            });
        }
        Ok(pairs)
    }

    /// The planned negatives `cache` does not hold every level of yet.
    pub fn missing(&self, cache: &Cache) -> Result<Vec<&PlannedNegative>, LoaderError> {
        let mut missing = Vec::new();
        for n in &self.negatives {
            for key in &n.keys {
                if !cache.contains(key)? {
                    missing.push(n);
                    break;
                }
            }
        }
        Ok(missing)
    }

    /// Asks `generator` for every missing level at pre-warm priority (the levels of one pair in
    /// one request, so that they share one chain grid); returns how many levels it queued (the
    /// rest were pending, cached, or dropped by a full queue: call again later).
    pub fn request_missing<D: Dataset<I>, I: GenieItem>(
        &self,
        dataset: &D,
        keys: &KeySpace,
        generator: &Generator,
    ) -> Result<usize, LoaderError> {
        self.request_missing_from(dataset, keys, generator.cache(), generator)
    }

    /// [`request_missing`](Self::request_missing) from any generator, e.g. a
    /// [`RemoteGenerator`](crate::remote::RemoteGenerator): `cache` is the one it stores into. A
    /// remote generator's levels count when they are sent.
    pub fn request_missing_from<D: Dataset<I>, I: GenieItem>(
        &self,
        dataset: &D,
        keys: &KeySpace,
        cache: &Cache,
        generator: &dyn HardNegativeGenerator,
    ) -> Result<usize, LoaderError> {
        let mut queued = 0;
        for n in self.missing(cache)? {
            let source = source_of(dataset, keys, n.source_index)?;
            let receipt = generator.request(keys.request(
                source,
                n.target,
                self.levels.clone(),
                n.seed,
                Priority::Prewarm,
            ))?;
            queued += receipt.count(LevelOutcome::Queued) + receipt.count(LevelOutcome::Sent);
        }
        Ok(queued)
    }

    /// GeNIe-Ada with a model given now (e.g. the frozen backbone of the few-shot protocol):
    /// for each pair whose levels are all cached, embeds its source, its generated images and
    /// its target's real items of `dataset` (the prototype, from up to 64 of them) with
    /// `extractor`, and takes the level Algorithm 1 chooses. Other pairs keep the fixed level.
    pub fn choose_levels<D: Dataset<I>, I: GenieItem, M, F: FeatureExtractor<M, I>>(
        &mut self,
        dataset: &D,
        cache: &Cache,
        model: &M,
        extractor: &F,
    ) -> Result<AdaOutcome, LoaderError> {
        let mut outcome = AdaOutcome::default();
        if self.levels.len() < 2 {
            outcome.incomplete = self.negatives.len();
            return Ok(outcome);
        }
        let mut by_class: HashMap<usize, Vec<usize>> = HashMap::new();
        for index in 0..dataset.len() {
            let item = get(dataset, index)?;
            if let Some(label) = item.label().filter(|_| !item.is_generated()) {
                let members = by_class.entry(label).or_default();
                if members.len() < PROTOTYPE_ITEMS {
                    members.push(index);
                }
            }
        }
        let mut prototypes: HashMap<usize, Option<Vec<f64>>> = HashMap::new();
        let levels = self.levels.clone();
        for n in &mut self.negatives {
            let prototype = match prototypes.get(&n.target) {
                Some(p) => p.clone(),
                None => {
                    let members = by_class.get(&n.target).map_or(&[][..], Vec::as_slice);
                    let items = members
                        .iter()
                        .map(|&i| get(dataset, i))
                        .collect::<Result<Vec<_>, _>>()?;
                    let p = if items.is_empty() {
                        None
                    } else {
                        embed(extractor, model, items)
                            .ok()
                            .and_then(|e| crate::ada::prototype(&e).ok())
                    };
                    prototypes.insert(n.target, p.clone());
                    p
                }
            };
            let Some(prototype) = prototype else {
                outcome.unscorable += 1;
                continue;
            };
            let source = get(dataset, n.source_index)?;
            let mut generated = Vec::with_capacity(n.keys.len());
            for key in &n.keys {
                let Some(image) = cache.get_image(key)? else {
                    break;
                };
                let item = source
                    .with_generated(&image, n.target, &key.to_string())
                    .map_err(|e| LoaderError::Item {
                        index: n.source_index,
                        source: e,
                    })?;
                generated.push(item);
            }
            if generated.len() < n.keys.len() {
                outcome.incomplete += 1;
                continue;
            }
            match super::live::choose(extractor, model, &levels, source, generated, &prototype) {
                Ok(choice) => {
                    let at = levels.iter().position(|&l| l == choice.level).unwrap_or(0);
                    n.level = choice.level;
                    n.key = n.keys[at];
                    outcome.chosen += 1;
                }
                Err(reason) => {
                    tracing::debug!(%reason, "GeNIe-Ada cannot score an offline pair");
                    outcome.unscorable += 1;
                }
            }
        }
        Ok(outcome)
    }
}

fn get<D: Dataset<I>, I>(dataset: &D, index: usize) -> Result<I, LoaderError> {
    dataset.get(index).map_err(|e| LoaderError::Dataset {
        index,
        message: e.to_string(),
    })
}

/// Item `index`'s source as the engine takes it: its original ([`GenieItem::source_rgb`]),
/// resized and cropped to the engine's size, hashed.
/// The pixel hash of item `index` as the engine takes it, computed once per item.
fn source_hash<D: Dataset<I>, I: GenieItem>(
    hashes: &mut HashMap<usize, [u8; 32]>,
    dataset: &D,
    keys: &KeySpace,
    index: usize,
) -> Result<[u8; 32], LoaderError> {
    if let Some(&hash) = hashes.get(&index) {
        return Ok(hash);
    }
    let hash = source_of(dataset, keys, index)?.hash;
    hashes.insert(index, hash);
    Ok(hash)
}

fn source_of<D: Dataset<I>, I: GenieItem>(
    dataset: &D,
    keys: &KeySpace,
    index: usize,
) -> Result<crate::generator::SourceImage, LoaderError> {
    let rgb = get(dataset, index)?
        .source_rgb()
        .map_err(|source| LoaderError::Item { index, source })?;
    keys.source(&rgb)
        .map_err(|source| LoaderError::Image { index, source })
}

/// The original dataset followed by the planned hard negatives that were cached when it was
/// built (burn reads `len()` once, so the length never changes).
pub struct GenieDataset<D, I> {
    inner: D,
    extra: Vec<PlannedNegative>,
    cache: Arc<Cache>,
    _items: PhantomData<fn() -> I>,
}

impl<D: Dataset<I>, I: GenieItem> GenieDataset<D, I> {
    /// `inner` plus the negatives of `plan` that `cache` holds now, each at its level.
    pub fn new(inner: D, cache: Arc<Cache>, plan: &OfflinePlan) -> Result<Self, LoaderError> {
        let mut extra = Vec::new();
        for n in &plan.negatives {
            if n.source_index < inner.len() && cache.contains(&n.key)? {
                extra.push(n.clone());
            }
        }
        Ok(GenieDataset {
            inner,
            extra,
            cache,
            _items: PhantomData,
        })
    }

    /// The hard negatives after the original items, in plan order.
    pub fn negatives(&self) -> &[PlannedNegative] {
        &self.extra
    }

    /// The wrapped dataset.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    fn negative(&self, n: &PlannedNegative) -> Result<I, LoaderError> {
        let image = self
            .cache
            .get_image(&n.key)?
            .ok_or(LoaderError::MissingEntry(n.key))?;
        get(&self.inner, n.source_index)?
            .with_generated(&image, n.target, &n.key.to_string())
            .map_err(|source| LoaderError::Item {
                index: n.source_index,
                source,
            })
    }
}

impl<D: Dataset<I>, I: GenieItem> Dataset<I> for GenieDataset<D, I> {
    fn get(&self, index: usize) -> Result<I, DatasetError> {
        let originals = self.inner.len();
        if index < originals {
            return self.inner.get(index);
        }
        let n = self
            .extra
            .get(index - originals)
            .ok_or(LoaderError::OutOfRange {
                index,
                len: self.len(),
            })
            .map_err(DatasetError::new)?;
        self.negative(n).map_err(DatasetError::new)
    }

    fn len(&self) -> usize {
        self.inner.len() + self.extra.len()
    }
}
