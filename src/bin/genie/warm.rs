//! `genie warm plan | run | status`: pre-warm a cache before training, in shards across
//! machines, and check its progress.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use genie::cache::Cache;
use genie::diffusion;
use genie::factory::SdEngineFactory;
use genie::generator::{
    Generator, GeneratorConfig, HardNegativeGenerator, Priority, Shutdown, SourceImage,
};
use genie::{image_io, NoiseLevel};

use crate::classes::ClassNaming;
use crate::model_args::{engine_options, model_args, model_source, ModelArgs};
use crate::parse::parse_level;
use crate::text::{error_line, printable, shell_word};

#[derive(Subcommand)]
pub(crate) enum WarmCommand {
    /// Write the sorted, deterministic plan (one JSON line per hard negative) of a dataset.
    Plan(Box<WarmPlanArgs>),
    /// Generate this task's shard of a plan into a cache, skipping what is already cached.
    Run(Box<WarmRunArgs>),
    /// What is cached and missing per shard, and how to resubmit the missing shards.
    /// Exits 0 when complete, 3 when something is missing.
    Status(WarmStatusArgs),
}

#[derive(Args)]
pub(crate) struct WarmStatusArgs {
    /// The plan written by `genie warm plan`.
    #[arg(long, value_name = "FILE")]
    plan: PathBuf,
    /// The cache: a folder or s3://bucket/prefix.
    #[arg(long, value_name = "DIR_OR_URL")]
    cache: String,
    /// The shard count the plan runs with (default: the done markers', else 1).
    #[arg(long)]
    shards: Option<u32>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(crate) struct WarmRunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The plan written by `genie warm plan` (with the same engine options).
    #[arg(long, value_name = "FILE")]
    plan: PathBuf,
    /// The cache to fill: a folder or s3://bucket/prefix (with the `s3` feature).
    #[arg(long, value_name = "DIR_OR_URL")]
    cache: String,
    /// This task's shard, I/N; default: SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX.
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
    /// The shard count N when the index comes from the environment (default:
    /// SLURM_ARRAY_TASK_COUNT; 1 when there is neither flag nor environment).
    #[arg(long)]
    shards: Option<u32>,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum WarmMode {
    /// The Few classes (< 20 images) are targets, 50 hard negatives each.
    LongTail,
    /// Every class is a target, 4·shots hard negatives each.
    FewShot,
    /// The (source class, target class) pairs of --pairs FILE.
    Pairs,
}

#[derive(Args)]
pub(crate) struct WarmPlanArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The dataset in the image-folder layout: DIR/<class>/<image>.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    #[arg(long, value_enum, default_value = "long-tail")]
    mode: WarmMode,
    /// With --mode pairs: one `source_class,target_class` per line (# starts a comment).
    #[arg(long, value_name = "FILE", required_if_eq("mode", "pairs"))]
    pairs: Option<PathBuf>,
    /// With --mode few-shot: real images per class in an episode (quota 4·shots).
    #[arg(long, default_value_t = 1)]
    shots: usize,
    /// Noise levels r in (0, 1], comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.6,0.7,0.8,0.9", value_parser = parse_level)]
    levels: Vec<NoiseLevel>,
    /// Source images per target (per pair with --mode pairs); default: the mode's quota.
    #[arg(long)]
    per_class: Option<usize>,
    /// Where each target's sources come from: `uniform` (every other class), or
    /// `confusion FILE` (the 4 classes a CSV confusion matrix confuses most with the target).
    #[arg(long, num_args = 1..=2, value_names = ["uniform|confusion", "FILE"], default_value = "uniform")]
    sources: Vec<String>,
    #[command(flatten)]
    naming: ClassNaming,
    /// Hard negatives per (source, target), each from its own noise (they count towards the
    /// quota; 1 to 1000).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    variants: u32,
    /// The run seed; each (source, target, variant) draws its own noise from it.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The plan file to write (JSON Lines, sorted by key).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

pub(crate) fn read_pairs(path: &Path) -> Result<Vec<(String, String)>> {
    let text = genie::safe_open::read_to_string(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut pairs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let Some((s, t)) = line.split_once(',') else {
            bail!(
                "{}:{}: expected `source_class,target_class`",
                path.display(),
                n + 1
            );
        };
        pairs.push((s.trim().to_string(), t.trim().to_string()));
    }
    if pairs.is_empty() {
        bail!("{} lists no pairs", path.display());
    }
    Ok(pairs)
}

pub(crate) fn warm_plan(args: WarmPlanArgs) -> Result<()> {
    use genie::policy::SourceStrategy;
    use genie::warm::{build_plan, write_plan, ImageFolder, PlanMode, PlanOptions};

    let folder = ImageFolder::scan(&args.data)?;
    for w in &folder.warnings {
        eprintln!("warning: {w}");
    }
    let mode = match args.mode {
        WarmMode::LongTail => PlanMode::LongTail,
        WarmMode::FewShot => PlanMode::FewShot { shots: args.shots },
        WarmMode::Pairs => {
            let file = args
                .pairs
                .as_deref()
                .context("--mode pairs needs --pairs FILE")?;
            PlanMode::Pairs(read_pairs(file)?)
        }
    };
    if args.variants == 0 {
        bail!("--variants must be at least 1");
    }
    let classes = args.naming.classes(&folder.classes)?;
    let engine =
        diffusion::plan_engine(&model_source(&args.model)?, &engine_options(&args.model)?)?;
    let keys = args.naming.key_space(&engine, classes);
    let (sources, confusion) = match args.sources.as_slice() {
        [kind] if kind == "uniform" => (SourceStrategy::Uniform, None),
        [kind, file] if kind == "confusion" => {
            let matrix = genie::warm::read_confusion(Path::new(file), &folder.classes)?;
            (SourceStrategy::TopConfused { k: 4 }, Some(matrix))
        }
        [kind] if kind == "confusion" => {
            bail!("--sources confusion needs the matrix: --sources confusion FILE")
        }
        other => bail!(
            "--sources {:?}: expected `uniform` or `confusion FILE`",
            other.join(" ")
        ),
    };
    let levels: Vec<String> = args.levels.iter().map(ToString::to_string).collect();
    let mut options = PlanOptions::default();
    options.mode = mode;
    options.levels = args.levels;
    options.per_class = args.per_class;
    options.sources = sources;
    options.confusion = confusion;
    options.variants = args.variants;
    options.seed = args.seed;
    let (mut entries, summary) = build_plan(&folder, &options, &keys)?;
    for s in &summary.skipped {
        eprintln!("warning: skipped unreadable source {s}");
    }
    write_plan(&args.out, &mut entries)?;
    let sidecar = serde_json::json!({
        "plan": args.out,
        "entries": summary.entries,
        "images": folder.images.len(),
        "classes": folder.classes.len(),
        "levels": levels,
        "per_target": summary.per_target,
        "skipped": summary.skipped,
        "run_args": model_args(&args.model),
    });
    let sidecar_path = summary_path(&args.out);
    image_io::write_atomic(&sidecar_path, format!("{sidecar:#}\n").as_bytes())?;
    println!(
        "{} hard negatives from {} images of {} classes -> {}",
        summary.entries,
        folder.images.len(),
        folder.classes.len(),
        args.out.display()
    );
    for (target, n) in &summary.per_target {
        println!("  {:<24} {n:>7}", printable(target));
    }
    Ok(())
}

/// The plan's summary, written beside it: `<plan>.summary.json`.
pub(crate) fn summary_path(plan: &Path) -> PathBuf {
    let mut path = plan.as_os_str().to_owned();
    path.push(".summary.json");
    PathBuf::from(path)
}

pub(crate) fn warm_status(args: WarmStatusArgs) -> Result<ExitCode> {
    use genie::warm::{
        check_count, done_markers, marker_shard_count, read_plan, skipped_reports,
        slurm_array_list, warm_status,
    };

    let entries = read_plan(&args.plan)?;
    let markers = done_markers(&args.plan);
    let count = check_count(args.shards.or(marker_shard_count(&markers)).unwrap_or(1))?;
    // Before the first `warm run` the cache folder is missing or empty: every entry is missing.
    let store = match genie::cache::open_store(&args.cache, false) {
        Ok(store) => Some(store),
        Err(genie::cache::CacheError::NotACache { path })
            if std::fs::read_dir(&path).map_or(true, |mut d| d.next().is_none()) =>
        {
            None
        }
        Err(e) => return Err(e.into()),
    };
    let status = warm_status(&entries, count, &markers, |k| {
        store.as_ref().map_or(Ok(false), |s| s.contains(k))
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        println!(
            "{}: {} planned in {count} shards, {} cached, {} missing",
            args.plan.display(),
            status.planned(),
            status.cached(),
            status.planned() - status.cached()
        );
        for s in &status.shards {
            let state = match (s.is_complete(), s.marked_done) {
                (true, true) => "done",
                (true, false) => "complete (no marker yet)",
                (false, true) => "marked done, but entries are missing (gc?)",
                (false, false) if s.cached > 0 => "partial",
                (false, false) => "not started",
            };
            println!(
                "  shard {:>4}/{count}  {:>8} planned  {:>8} cached  {:>8} missing  {state}",
                s.index,
                s.planned,
                s.cached,
                s.missing()
            );
        }
        for (report, held_back) in skipped_reports(&args.plan, count) {
            println!(
                "  {held_back} missing entries wait on sources that could not be read: see {}",
                report.display()
            );
        }
    }
    let incomplete = status.incomplete();
    if incomplete.is_empty() {
        if !args.json {
            println!("complete");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let run_args: Vec<String> = genie::safe_open::read_to_string(&summary_path(&args.plan))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|v| serde_json::from_value(v["run_args"].clone()).ok())
        .unwrap_or_else(|| vec!["<the engine options of warm plan>".into()]);
    let common = [
        "--plan".to_string(),
        args.plan.display().to_string(),
        "--cache".to_string(),
        args.cache.clone(),
    ]
    .into_iter()
    .chain(run_args)
    .map(|a| shell_word(&a))
    .collect::<Vec<_>>()
    .join(" ");
    eprintln!("\nresubmit the {} incomplete shards:", incomplete.len());
    eprintln!(
        "  Slurm:      sbatch --array={} docs/slurm/genie-warm.sbatch   (GENIE_SHARDS={count})",
        slurm_array_list(&incomplete)
    );
    eprintln!("  by hand:");
    for shard in incomplete.iter().take(8) {
        eprintln!("    genie warm run {common} --shard {shard}");
    }
    if incomplete.len() > 8 {
        eprintln!("    … and {} more shards", incomplete.len() - 8);
    }
    Ok(ExitCode::from(3))
}

pub(crate) fn warm_run(args: WarmRunArgs) -> Result<()> {
    use genie::warm::{done_marker, read_plan, skipped_report, Shard, ShardError};

    let entries = read_plan(&args.plan)?;
    let shard = match Shard::resolve(args.shard.as_deref(), args.shards, |v| {
        std::env::var(v).ok()
    }) {
        Err(ShardError::Missing) if args.shards.is_none() => Shard::ALL,
        other => other?,
    };
    let mine: Vec<_> = entries.iter().filter(|e| shard.owns(&e.key)).collect();
    let cache = Arc::new(Cache::open(&args.cache, 64 << 20)?);
    let mut todo = Vec::new();
    for e in &mine {
        if !cache.contains(&e.key)? {
            todo.push(*e);
        }
    }
    eprintln!(
        "shard {shard}: {} of {} planned hard negatives, {} already cached, {} to generate",
        mine.len(),
        entries.len(),
        mine.len() - todo.len(),
        todo.len()
    );
    let mut generated = (0, 0);
    let mut unreadable: Vec<(PathBuf, usize, String)> = Vec::new();
    if !todo.is_empty() {
        let factory = Arc::new(SdEngineFactory::new(
            model_source(&args.model)?,
            engine_options(&args.model)?,
        )?);
        let plan = factory.plan().clone();
        let mut config = GeneratorConfig::default();
        config.devices = args.model.device.clone();
        config.queue_capacity = todo.len();
        let generator = Generator::start(factory, cache.clone(), config)?;
        // One request per (source, target, seed): its levels share one chain grid.
        let mut waiting = Vec::new();
        for group in genie::warm::planned_requests(todo.iter().copied()) {
            // A source that cannot be read holds back its own entries only: the rest of the
            // shard is made, and the source is reported (here and by `warm status`).
            let img = match image_io::load_source(&group.source, plan.resolution) {
                Ok(img) => img,
                Err(e) => {
                    let line = error_line(&e.into());
                    unreadable.push((group.source.clone(), group.entries.len(), line));
                    continue;
                }
            };
            let request =
                group.request(SourceImage::new(img), &plan.fingerprint, Priority::Prewarm)?;
            let receipt = generator.request(request)?;
            waiting.extend(receipt.levels.into_iter().map(|(_, k, _)| k));
        }
        let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            indicatif::ProgressBar::new(waiting.len() as u64)
        } else {
            indicatif::ProgressBar::hidden()
        }
        .with_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} shard {msg} {pos}/{len} [{elapsed_precise}, eta {eta}] {per_sec}",
            )
            .expect("valid template"),
        )
        .with_message(shard.to_string());
        let started = std::time::Instant::now();
        let mut last_log = started;
        let week = Duration::from_secs(7 * 24 * 3600);
        let failures = generator.wait_all(&waiting, week, &mut |done, total| {
            bar.set_position(done as u64);
            if bar.is_hidden() && last_log.elapsed() > Duration::from_secs(30) {
                last_log = std::time::Instant::now();
                let rate = done as f64 / started.elapsed().as_secs_f64();
                eprintln!(
                    "shard {shard}: {done}/{total} done, {rate:.2} images/s, eta {:.0} s",
                    (total - done) as f64 / rate.max(1e-9)
                );
            }
        })?;
        bar.finish_and_clear();
        let stats = generator.shutdown(Shutdown::Drain);
        generated = (stats.done, stats.engine_calls);
        if let Some(first) = failures.first() {
            bail!(
                "shard {shard}: {} of {} images failed (rerun to retry them); first error: {}",
                failures.len(),
                waiting.len(),
                first.1
            );
        }
    }
    let marker = done_marker(&args.plan, shard);
    if let Some(dir) = marker.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let report = skipped_report(&args.plan, shard);
    if !unreadable.is_empty() {
        let lines: String = unreadable
            .iter()
            .map(|(path, entries, why)| format!("{}\t{entries}\t{why}\n", path.display()))
            .collect();
        image_io::write_atomic(&report, lines.as_bytes())?;
        let held_back: usize = unreadable.iter().map(|u| u.1).sum();
        bail!(
            "shard {shard}: {} sources cannot be read, holding back {held_back} planned entries \
             (listed in {}); the other {} entries are cached. First: {}: {}",
            unreadable.len(),
            report.display(),
            mine.len() - held_back,
            unreadable[0].0.display(),
            unreadable[0].2
        );
    }
    if let Err(e) = std::fs::remove_file(&report) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(e).with_context(|| format!("cannot remove {}", report.display()));
        }
    }
    image_io::write_atomic(&marker, format!("{} entries\n", mine.len()).as_bytes())?;
    println!(
        "shard {shard} complete: {} entries cached; this run generated {} images in {} engine calls ({})",
        mine.len(),
        generated.0,
        generated.1,
        marker.display()
    );
    Ok(())
}
