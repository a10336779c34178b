//! Pre-warming a cache at cluster scale: plans of hard negatives to make, and the shards that
//! split a plan over the tasks of a Slurm job array or a Kubernetes Indexed Job.
//!
//! A plan is JSON Lines, one [`PlanEntry`] per line, sorted by key so that two plans of the same
//! inputs are byte-identical. A key's shard is its hash modulo the shard count
//! ([`crate::cache::CacheKey::shard`]), independent of plan order: any task can compute which keys
//! are its own from the plan alone, and a rerun redoes only what is missing.
//!
//! Built so far: reading an image-folder dataset, planning it with the policy, plan lines and
//! their file format, and shards (from a flag or the scheduler's environment). The `genie warm plan|run|status` commands are not built yet.

mod folder;
mod plan;
mod planner;
mod shard;

pub use folder::{FolderError, ImageFolder};
pub use plan::{read_plan, write_plan, PlanEntry, PlanError};
pub use planner::{build_plan, PlanMode, PlanOptions, PlanSummary, PlannerError};
pub use shard::{Shard, ShardError};
