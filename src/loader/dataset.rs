//! [`GenieDataset`]: the paper's offline protocol as a burn `Dataset`: the original items plus
//! the cached hard negatives the policy's quotas allow, with a fixed length.

use std::marker::PhantomData;
use std::sync::Arc;

use burn::data::dataset::{Dataset, DatasetError};

use super::item::GenieItem;
use super::LoaderError;
use crate::cache::{Cache, CacheKey};
use crate::engine::NoiseLevel;
use crate::generator::KeySpace;
use crate::generator::{Generator, LevelOutcome, Priority};
use crate::policy::{ConfusionMatrix, Policy};

/// One hard negative of an offline plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedNegative {
    /// Index of the source item in the original dataset.
    pub source_index: usize,
    pub target: usize,
    pub level: NoiseLevel,
    pub seed: u64,
    pub key: CacheKey,
}

/// Every hard negative the quotas allow for a dataset, with its cache key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OfflinePlan {
    pub negatives: Vec<PlannedNegative>,
}

impl OfflinePlan {
    /// Plans `policy`'s quotas over `dataset` at `level` (sources from `confusion` when the
    /// policy asks for the top-confused classes). Reads every item once.
    pub fn new<D: Dataset<I>, I: GenieItem>(
        dataset: &D,
        policy: &Policy,
        keys: &KeySpace,
        level: NoiseLevel,
        confusion: Option<&ConfusionMatrix>,
    ) -> Result<Self, LoaderError> {
        let mut labels = Vec::with_capacity(dataset.len());
        for index in 0..dataset.len() {
            let item = get(dataset, index)?;
            // Items without a class label can be neither sources nor targets.
            labels.push(item.label().unwrap_or(usize::MAX));
        }
        let seed = policy.config().seed;
        let mut negatives = Vec::new();
        for (source_index, target) in policy.offline_plan(&labels, confusion) {
            let source = source_of(dataset, keys, source_index)?;
            negatives.push(PlannedNegative {
                source_index,
                target,
                level,
                seed,
                key: keys.key(source.hash, target, level, seed),
            });
        }
        Ok(OfflinePlan { negatives })
    }

    /// The planned negatives `cache` does not hold yet.
    pub fn missing(&self, cache: &Cache) -> Result<Vec<&PlannedNegative>, LoaderError> {
        let mut missing = Vec::new();
        for n in &self.negatives {
            if !cache.contains(&n.key)? {
                missing.push(n);
            }
        }
        Ok(missing)
    }

    /// Asks `generator` for every missing negative at pre-warm priority; returns how many it
    /// queued (the rest were pending, cached, or dropped by a full queue: call again later).
    pub fn request_missing<D: Dataset<I>, I: GenieItem>(
        &self,
        dataset: &D,
        keys: &KeySpace,
        generator: &Generator,
    ) -> Result<usize, LoaderError> {
        let mut queued = 0;
        for n in self.missing(generator.cache())? {
            let source = source_of(dataset, keys, n.source_index)?;
            let receipt = generator.request(keys.request(
                source,
                n.target,
                vec![n.level],
                n.seed,
                Priority::Prewarm,
            ))?;
            queued += receipt.count(LevelOutcome::Queued);
        }
        Ok(queued)
    }
}

fn get<D: Dataset<I>, I>(dataset: &D, index: usize) -> Result<I, LoaderError> {
    dataset.get(index).map_err(|e| LoaderError::Dataset {
        index,
        message: e.to_string(),
    })
}

fn source_of<D: Dataset<I>, I: GenieItem>(
    dataset: &D,
    keys: &KeySpace,
    index: usize,
) -> Result<crate::generator::SourceImage, LoaderError> {
    let rgb = get(dataset, index)?
        .rgb()
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
    /// `inner` plus the negatives of `plan` that `cache` holds now.
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
        let n = &self.extra[index - originals];
        self.negative(n).map_err(DatasetError::new)
    }

    fn len(&self) -> usize {
        self.inner.len() + self.extra.len()
    }
}
