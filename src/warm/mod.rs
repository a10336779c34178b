//! Pre-warming a cache at cluster scale: plans of hard negatives to make, and the shards that
//! split a plan over the tasks of a Slurm job array or a Kubernetes Indexed Job.
//!
//! A plan is JSON Lines, one [`PlanEntry`] per line, sorted by key so that two plans of the same
//! inputs are byte-identical. A key's shard is its hash modulo the shard count
//! ([`crate::cache::CacheKey::shard`]), independent of plan order: any task can compute which keys
//! are its own from the plan alone, and a rerun redoes only what is missing.
//!
//! Built so far: plan lines and their file format, and shards (from a flag or the scheduler's
//! environment). The `genie warm plan|run|status` commands are not built yet.

mod plan;
mod shard;

pub use plan::{read_plan, write_plan, PlanEntry, PlanError};
pub use shard::{Shard, ShardError};
