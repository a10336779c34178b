//! Which classes get hard negatives, from which sources, how many, and which batch items they
//! replace: the GeNIe policy, in plain Rust (no burn, no candle, no I/O).
//!
//! - [`groups`]: Many / Medium / Few from the dataset's labels (or from the batches), and the
//!   running per-class counts of what the batches held;
//! - [`confusion`]: the live classifier's running confusion matrix, for top-k source classes;
//! - [`PolicyConfig`] (`config.rs`): the knobs and their defaults;
//! - [`Policy`] (`pairs.rs`): targets, quotas, (source image, target) pairs and per-batch mixing plans.

mod config;
pub mod confusion;
pub mod groups;
mod pairs;

pub use config::{
    few_shot_quota, Mixing, PolicyConfig, PolicyError, SourceStrategy, LONG_TAIL_QUOTA,
};
pub use confusion::{ConfusionMatrix, SharedConfusion, SNAPSHOT_EVERY};
pub use groups::{BatchCounts, ClassStats, Group, GroupThresholds};
pub use pairs::{MixPlan, Pair, PairId, Policy, Proposal};
