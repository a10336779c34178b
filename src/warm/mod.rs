//! Pre-warming a cache at cluster scale: plans of hard negatives to make, and the shards that
//! split a plan over the tasks of a Slurm job array or a Kubernetes Indexed Job.
//!
//! A plan is JSON Lines, one [`PlanEntry`] per line, sorted by key so that two plans of the same
//! inputs are byte-identical. A key's shard is its hash modulo the shard count
//! ([`crate::cache::CacheKey::shard`]), independent of plan order: any task can compute which keys
//! are its own from the plan alone, and a rerun redoes only what is missing.
//!
//! The `genie warm plan | run | status` commands are thin layers over this module:
//! [`ImageFolder`] reads the dataset, [`build_plan`] applies the policy (optionally with sources
//! from a [`read_confusion`] file), [`write_plan`] / [`read_plan`] keep the plan, [`Shard`] says
//! which keys a task owns, [`planned_requests`] turns a shard's entries into checked generator
//! requests, and [`warm_status`] with the [`done_marker`]s tells what is left.

mod confusion;
mod folder;
mod plan;
mod planner;
mod requests;
mod shard;
mod status;

pub use confusion::{confusion_csv, read_confusion, ConfusionFileError};
pub use folder::{FolderError, ImageFolder};
pub use plan::{plan_pairs, read_plan, source_id, write_plan, PlanEntry, PlanError, PlannedPair};
pub use planner::{build_plan, PlanMode, PlanOptions, PlanSummary, PlannerError};
pub use requests::{planned_requests, KeyMismatch, PlannedRequest};
pub use shard::{check_count, Shard, ShardError, MAX_SHARDS};
pub use status::{
    done_marker, done_markers, marker_shard_count, skipped_report, skipped_reports,
    slurm_array_list, warm_status, ShardProgress, WarmStatus,
};
