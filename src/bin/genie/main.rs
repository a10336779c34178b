//! `genie`: generate GeNIe hard negatives and manage their cache from the command line.
//!
//! This file is the command table; each command is a file of its own (`generate`, `sheet`,
//! `bench`, `cache`, `warm`, `serve`, `eval/`), and the pieces they share are `model_args`
//! (the engine arguments), `parse` (value parsers), `classes` (class names, key spaces, source
//! folders) and `text` (what is printed).

mod bench;
mod cache;
mod classes;
mod eval;
mod generate;
mod model_args;
mod parse;
mod serve;
mod sheet;
mod text;
mod warm;

use std::process::ExitCode;

use anyhow::Result;
use bench::{bench, parity, BenchArgs, ParityArgs};
use cache::{cache_command, CacheCommand};
use clap::{Parser, Subcommand};
use generate::{generate, GenerateArgs};
use genie::diffusion;
use sheet::{sheet, SheetArgs};
use text::error_line;
use warm::{warm_plan, warm_run, warm_status, WarmCommand};

#[derive(Parser)]
#[command(
    name = "genie",
    version,
    about = "Generative hard negatives (GeNIe) with Stable Diffusion img2img"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Turn source images into hard negatives of target classes, one PNG per noise level.
    Generate(Box<GenerateArgs>),
    /// Inspect and maintain a hard-negative cache.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Pre-warm a cache before training: plan, run in shards, and check progress.
    #[command(subcommand)]
    Warm(WarmCommand),
    /// Draw one source across noise levels from the cache (r* and d_m when GeNIe-Ada chose).
    Sheet(Box<SheetArgs>),
    /// Time the engine: seconds per image for batch sizes and levels (no cache involved).
    Bench(Box<BenchArgs>),
    /// Check this build on a device and dtype against the diffusers parity fixtures (exit 3 if
    /// any tensor is off by more than the tolerance).
    Parity(ParityArgs),
    /// Run the generator as a server for training jobs elsewhere (HTTP + JSON, a bearer token
    /// off loopback): they send requests, it fills the shared cache. SIGTERM drains the queue
    /// within --drain-timeout.
    Serve(Box<serve::ServeArgs>),
    /// The paper's evaluation protocols on your data: few-shot episodes on a frozen backbone,
    /// long-tail training per group of classes.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
}

fn main() -> ExitCode {
    diffusion::tune_cpu_process();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: logs redirected to a file stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let done = |r: Result<()>| r.map(|()| ExitCode::SUCCESS);
    let result = match cli.command {
        Command::Generate(args) => done(generate(*args)),
        Command::Cache(cmd) => done(cache_command(cmd)),
        Command::Warm(WarmCommand::Plan(args)) => done(warm_plan(*args)),
        Command::Warm(WarmCommand::Run(args)) => done(warm_run(*args)),
        Command::Warm(WarmCommand::Status(args)) => warm_status(args),
        Command::Sheet(args) => done(sheet(*args)),
        Command::Bench(args) => done(bench(*args)),
        Command::Parity(args) => parity(args),
        Command::Eval(cmd) => done(eval::eval_command(cmd)),
        Command::Serve(args) => done(serve::serve(*args)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}
