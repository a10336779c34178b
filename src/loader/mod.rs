//! The burn integration, and the only part of genie that imports burn: drop-in wrappers for a
//! training loop's batcher and dataset, the live model GeNIe-Ada scores with, and the metric that
//! feeds the confusion matrix.
//!
//! - [`GenieBatcher`] wraps your `Batcher`: hard negatives of tail or few-shot classes are mixed
//!   into each batch as soon as they are cached; generation happens in the background.
//! - [`GenieDataset`] wraps your `Dataset`: the paper's offline protocol, original items plus the
//!   planned hard negatives, fixed length.
//! - [`LiveModel`] + your [`FeatureExtractor`]: r* per pair chosen by the model being trained;
//!   [`Observed`] wraps your model so that burn's `SupervisedTraining` feeds it.
//! - [`ConfusionMetric`] or [`crate::policy::SharedConfusion::record`]: which classes are
//!   confused with each target (its sources).
//! - [`GenieItem`]: what genie needs of an item; implemented for [`ImageItem`] (genie's own
//!   labelled image) and, with the `burn-vision` feature, burn's `ImageDatasetItem`.
//! - [`TrainDevice`]: the device to train on, named at run time (`cpu`, `vulkan`, `wgpu`, `auto`).

mod augmenter;
mod batcher;
mod builder;
mod dataset;
mod device;
mod item;
mod live;
mod metric;
mod observed;
#[cfg(feature = "burn-vision")]
mod vision;

pub use crate::generator::KeySpace;
pub use augmenter::{
    AdaRecord, Augmenter, AugmenterConfig, AugmenterError, AugmenterStats, Exposure, ItemMemory,
};
pub use batcher::GenieBatcher;
pub use builder::AugmenterBuilder;
pub use dataset::{AdaOutcome, GenieDataset, OfflinePlan, PlannedNegative};
pub use device::{built_gpu_backends, TrainDevice, TrainDeviceError, TrainDeviceSpec};
pub use item::{folder_items, image_item, GenieItem, ImageItem, ItemError, GENERATED_PATH_PREFIX};
pub use live::{
    FeatureExtractor, LiveConfig, LiveModel, ScoringMode, SelectorStats, TRAINED_ITEM_COST,
};
pub use metric::{predictions_and_targets, ConfusionInput, ConfusionMetric};
pub use observed::Observed;

use crate::cache::{CacheError, CacheKey};
use crate::generator::GeneratorError;
use crate::image_io::ImageError;

/// Errors of the burn wrappers, naming the dataset item or cache entry involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoaderError {
    /// The user's dataset failed to give an item.
    #[error("dataset item {index}: {message}")]
    Dataset {
        /// The item.
        index: usize,
        /// The dataset's message.
        message: String,
    },
    /// An item's pixels cannot be had.
    #[error("dataset item {index}: {source}")]
    Item {
        /// The item.
        index: usize,
        /// Why.
        source: ItemError,
    },
    /// An item's image cannot be decoded or prepared.
    #[error("dataset item {index}: {source}")]
    Image {
        /// The item.
        index: usize,
        /// Why.
        source: ImageError,
    },
    /// The cache cannot be read or written.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The generator refused a request.
    #[error(transparent)]
    Generator(#[from] GeneratorError),
    /// A planned hard negative is gone from the cache.
    #[error("hard negative {0} is no longer in the cache (removed by gc?)")]
    MissingEntry(CacheKey),
    /// No noise level to plan.
    #[error("no noise levels to plan")]
    NoLevels,
    /// A plan's source cannot be used.
    #[error("plan source {path}: {message}")]
    Plan {
        /// The source's path.
        path: String,
        /// Why.
        message: String,
    },
    /// An index past the dataset's end.
    #[error("item {index} is out of range: the dataset has {len} items")]
    OutOfRange {
        /// The index.
        index: usize,
        /// The dataset's length.
        len: usize,
    },
}
