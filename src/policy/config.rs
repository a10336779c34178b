//! The policy's settings: where sources come from, how hard negatives are mixed, the quotas and
//! their defaults, and the errors of bad settings.

use super::GroupThresholds;

/// Errors in the policy's inputs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A label is not a class of the policy.
    #[error("label {label} is outside the {num_classes} classes")]
    LabelOutOfRange {
        /// The label.
        label: usize,
        /// Classes of the policy.
        num_classes: usize,
    },
    /// A target class the dataset does not have.
    #[error("target class {0} is not one of the dataset's classes")]
    UnknownTarget(usize),
    /// A mix fraction outside [0, 1].
    #[error("the mix fraction must be in [0, 1], got {0}")]
    BadMixFraction(f64),
    /// A count that must be positive is 0 (names it).
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// Uses per epoch not positive and finite.
    #[error("uses per epoch must be a positive number, got {0}")]
    BadExposure(f64),
}

/// The paper's long-tail quota: each Few class is augmented with up to 50 generated images.
pub const LONG_TAIL_QUOTA: usize = 50;

/// The paper's few-shot quota per class of an episode: 5-way 1-shot → 4, 5-shot → 20, that is
/// 4 generated images per real support image.
pub fn few_shot_quota(shots: usize) -> usize {
    4 * shots
}

/// Where the source images of a target's hard negatives come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceStrategy {
    /// Any other class, uniformly (the paper's few-shot protocol).
    Uniform,
    /// The `k` classes the live classifier confuses most with the target (the paper's long-tail
    /// protocol, k = 4). Until the confusion matrix has data for a target, its sources are
    /// uniform.
    TopConfused {
        /// How many of the most confused classes to draw from.
        k: usize,
    },
}

/// How hard negatives enter a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mixing {
    /// Each one replaces an item of the batch's most over-represented class: the batch size stays.
    Replace,
    /// They are appended: the batch grows by up to `mix_fraction` of its size.
    Append,
}

/// Every knob of the policy; the constructors give the paper's settings.
///
/// New settings may be added: start from a constructor (or [`PolicyConfig::default`], the
/// long-tail one) and set fields.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct PolicyConfig {
    /// Which classes are tail and few-shot.
    pub thresholds: GroupThresholds,
    /// Most generated images (distinct source images) per target class.
    pub per_target: usize,
    /// Where source images come from.
    pub sources: SourceStrategy,
    /// At most this fraction of each batch becomes hard negatives (rounded down).
    pub mix_fraction: f64,
    /// Whether hard negatives replace items or are appended.
    pub mixing: Mixing,
    /// New (source, target) pairs started per batch; bounds the per-batch cost of hashing sources.
    pub new_pairs_per_batch: usize,
    /// Hard negatives per (source image, target): each variant starts from its own noise and
    /// counts towards the target's quota (`per_target`).
    pub variants: u32,
    /// How often each hard negative enters training, in uses per epoch (an epoch is the
    /// dataset's item count of real items seen). `Some(1.0)` (the default) adds each generated
    /// image to training about as often as a real item, as the paper's offline protocol does.
    /// A higher rate (or `None`: as often as `mix_fraction` allows) shows the few ready images
    /// over and over and takes more items from the classes that give way to them.
    pub uses_per_epoch: Option<f64>,
    /// The run seed every pair's noise seed is derived from
    /// ([`crate::generator::KeySpace::pair_seed`]), and the seed of the policy's own choices:
    /// fixed, so that reruns and pre-warmed caches hit.
    pub seed: u64,
}

impl Default for PolicyConfig {
    /// [`PolicyConfig::long_tail`].
    fn default() -> Self {
        Self::long_tail()
    }
}

impl PolicyConfig {
    /// The paper's long-tail setting: Few classes, ≤ 50 each, sources from the top-4 confused.
    pub fn long_tail() -> Self {
        PolicyConfig {
            thresholds: GroupThresholds::default(),
            per_target: LONG_TAIL_QUOTA,
            sources: SourceStrategy::TopConfused { k: 4 },
            mix_fraction: 0.25,
            mixing: Mixing::Replace,
            new_pairs_per_batch: 4,
            variants: 1,
            uses_per_epoch: Some(1.0),
            seed: 0,
        }
    }

    /// The paper's few-shot setting for K-shot episodes: every class, 4·K each, uniform sources.
    pub fn few_shot(shots: usize) -> Self {
        PolicyConfig {
            per_target: few_shot_quota(shots),
            sources: SourceStrategy::Uniform,
            ..Self::long_tail()
        }
    }

    pub(super) fn validate(&self) -> Result<(), PolicyError> {
        if !(0.0..=1.0).contains(&self.mix_fraction) {
            return Err(PolicyError::BadMixFraction(self.mix_fraction));
        }
        if let SourceStrategy::TopConfused { k: 0 } = self.sources {
            return Err(PolicyError::Zero("the number of confused source classes"));
        }
        if self.variants == 0 {
            return Err(PolicyError::Zero("the number of variants per pair"));
        }
        if let Some(rate) = self.uses_per_epoch.filter(|r| !(r.is_finite() && *r > 0.0)) {
            return Err(PolicyError::BadExposure(rate));
        }
        Ok(())
    }
}
