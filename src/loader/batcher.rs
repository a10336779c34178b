//! [`GenieBatcher`]: wraps your burn `Batcher` and mixes ready hard negatives into every batch.

use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::Device;

use super::augmenter::Augmenter;
use super::item::GenieItem;

/// A `Batcher` that hands the inner batcher its items with hard negatives mixed in.
///
/// Per batch it updates the class statistics (real items per class, and what mixing gave up and
/// put in: [`super::Augmenter::batch_counts`]), records target-class images, starts new
/// (source, target) pairs from the batch's items, asks the generator for missing images without
/// waiting, and replaces up to the policy's fraction of the items by cached hard negatives
/// (labelled with their target class). Use the plain batcher for validation.
pub struct GenieBatcher<B, I> {
    inner: B,
    augmenter: Arc<Augmenter<I>>,
}

impl<B, I> GenieBatcher<B, I> {
    /// Wraps `inner`, mixing `augmenter`'s hard negatives into its batches.
    pub fn new(inner: B, augmenter: Arc<Augmenter<I>>) -> Self {
        GenieBatcher { inner, augmenter }
    }

    /// The augmenter.
    pub fn augmenter(&self) -> &Arc<Augmenter<I>> {
        &self.augmenter
    }

    /// The wrapped batcher.
    pub fn inner(&self) -> &B {
        &self.inner
    }
}

impl<B: Clone, I> Clone for GenieBatcher<B, I> {
    fn clone(&self) -> Self {
        GenieBatcher {
            inner: self.inner.clone(),
            augmenter: Arc::clone(&self.augmenter),
        }
    }
}

impl<B, I, O> Batcher<I, O> for GenieBatcher<B, I>
where
    B: Batcher<I, O>,
    I: GenieItem,
{
    fn batch(&self, items: Vec<I>, device: &Device) -> O {
        self.inner.batch(self.augmenter.augment(items), device)
    }
}
