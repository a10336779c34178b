//! The `genie eval` commands and the arguments they share (the backbone's device, where hard
//! negatives come from, how a plan of missing images is reported): `few_shot.rs` runs the
//! paper's few-shot protocol (Tables 1 and 4), `long_tail.rs` its long-tail protocol (Table 3).

mod few_shot;
mod long_tail;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use genie::loader::TrainDeviceSpec;
use genie::warm::{write_plan, PlanEntry};

use crate::model_args::model_args;
use crate::model_args::ModelArgs;
use crate::text::shell_word;

#[derive(Subcommand)]
pub(crate) enum EvalCommand {
    /// N-way K-shot episodes on a frozen backbone with a logistic-regression probe: every
    /// method on the same episodes, mean accuracy ± 95 % CI (the paper's Table 1 and Table 4).
    FewShot(Box<few_shot::FewShotArgs>),
    /// Train or fine-tune a ResNet on a long-tailed folder without and with GeNIe / GeNIe-Ada
    /// hard negatives for the Few classes; accuracy per group on a balanced test folder (the
    /// paper's Table 3).
    LongTail(Box<long_tail::LongTailArgs>),
}

/// Where the ResNet runs, shared by `few-shot` (the frozen backbone's features) and `long-tail`
/// (training and testing the classifier).
#[derive(Args)]
pub(crate) struct TrainDeviceArgs {
    /// Where the ResNet runs: cpu, vulkan[:N], wgpu[:N] (genie built with burn-vulkan /
    /// burn-wgpu) or auto (the first GPU found, else cpu).
    #[arg(long, env = "BURN_DEVICE", default_value = "cpu")]
    pub(crate) train_device: TrainDeviceSpec,
}

/// Where an evaluation's hard negatives come from, shared by `few-shot` and `long-tail`.
#[derive(Args)]
pub(crate) struct HardNegativeArgs {
    /// The hard-negative cache: a folder or s3://bucket/prefix.
    #[arg(long, value_name = "DIR_OR_URL")]
    pub(crate) cache: String,
    /// Make the hard negatives the cache lacks with the engine here (without it, an incomplete
    /// cache is an error that says what is missing).
    #[arg(long, conflicts_with = "plan_out")]
    pub(crate) generate: bool,
    /// Write the hard negatives the cache lacks as a plan for `genie warm run` and stop.
    #[arg(long, value_name = "FILE")]
    pub(crate) plan_out: Option<PathBuf>,
    /// The Stable Diffusion options: part of the keys, so the same as the plan's and warm run's.
    #[command(flatten)]
    pub(crate) model: ModelArgs,
}

pub(crate) fn eval_command(cmd: EvalCommand) -> Result<()> {
    match cmd {
        EvalCommand::FewShot(args) => few_shot::few_shot(*args),
        EvalCommand::LongTail(args) => long_tail::long_tail(*args),
    }
}

/// Writes a `--plan-out` plan and prints the `genie warm run` command that fills `cache`.
pub(crate) fn report_plan(
    plan: &std::path::Path,
    entries: &mut [PlanEntry],
    cache: &str,
    model: &ModelArgs,
) -> Result<()> {
    write_plan(plan, entries)?;
    let run: Vec<String> = ["genie", "warm", "run", "--plan"]
        .into_iter()
        .map(String::from)
        .chain([
            plan.display().to_string(),
            "--cache".into(),
            cache.to_string(),
        ])
        .chain(model_args(model))
        .map(|a| shell_word(&a))
        .collect();
    println!(
        "wrote {} hard negatives to {}; make them with\n  {}\nthen run this command again \
         without --plan-out",
        entries.len(),
        plan.display(),
        run.join(" ")
    );
    Ok(())
}
