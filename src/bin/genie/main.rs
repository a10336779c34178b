//! `genie`: generate GeNIe hard negatives and manage their cache from the command line.

mod bench;
mod cache;
mod eval;
mod generate;
mod long_tail;
mod serve;
mod sheet;
mod warm;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bench::{bench, parity, BenchArgs, ParityArgs};
use cache::{cache_command, CacheCommand};
use clap::{Args, Parser, Subcommand, ValueEnum};
use generate::{generate, GenerateArgs};
use genie::diffusion::{self, tiny, EngineOptions, ModelSource, SchedulerKind};
use genie::{image_io, NoiseLevel};
use sheet::{sheet, SheetArgs};
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

#[derive(Clone, Copy, ValueEnum)]
enum BuiltinModel {
    /// genie's shapes model: a small Stable Diffusion trained on the drawn-shapes dataset (64 px,
    /// prompts "a photo of a {circle|square|triangle|cross|ring|diamond|star|crescent|heart|arrow}.").
    Shapes,
    /// A tiny random model written on first use (fast, offline; its images are meaningless).
    Tiny,
    /// Stable Diffusion 1.5 from the Hugging Face Hub at a pinned revision (HF_HOME, HF_HUB_OFFLINE).
    Sd15,
}

#[derive(Args)]
struct ModelArgs {
    /// A Stable Diffusion model folder in the diffusers layout.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "model",
        required_unless_present = "model"
    )]
    weights: Option<PathBuf>,
    /// A built-in model instead of --weights (`shapes` shows the method; `tiny` is fast noise).
    #[arg(long, value_enum)]
    model: Option<BuiltinModel>,
    /// Denoising steps N of the full schedule (r runs the last ⌊N·r⌋).
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Sampler: dpm (DPM-Solver++ 2M, as the GeNIe code) or ddim.
    #[arg(long, default_value = "dpm", value_parser = parse_scheduler)]
    scheduler: SchedulerKind,
    /// Classifier-free guidance scale (≤ 1 turns guidance off).
    #[arg(long, default_value_t = 7.5)]
    guidance: f64,
    /// Image side in pixels (default: the model's native size, 512 for SD 1.5, 64 for tiny).
    #[arg(long)]
    size: Option<u32>,
    /// Devices, one engine each: cpu, or cuda:N with a CUDA build (comma-separated).
    #[arg(long, alias = "devices", value_delimiter = ',', default_value = "cpu")]
    device: Vec<String>,
    /// f32, f16 or bf16 for the UNet and text encoder (the VAE runs in f32).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// With f16/bf16: fail when a chain's latents overflow instead of running it again in f32.
    #[arg(long)]
    no_f32_fallback: bool,
}

fn parse_level(s: &str) -> Result<NoiseLevel, String> {
    NoiseLevel::parse(s).map_err(|e| e.to_string())
}

fn parse_scheduler(s: &str) -> Result<SchedulerKind, String> {
    s.parse()
        .map_err(|e: diffusion::SchedulerError| e.to_string())
}

/// `20GiB`, `500MB`, `64k`, `1048576` → bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?} (e.g. 20GiB, 500MB)"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "invalid size unit in {s:?} (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            ))
        }
    };
    let bytes = value * scale;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("size {s:?} is out of range"));
    }
    Ok(bytes as u64)
}

/// `30d`, `12h`, `90m`, `45s`, `250ms` → a duration (a bare number is days).
fn parse_age(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid age {s:?} (e.g. 30d, 12h)"))?;
    let millis: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" | "" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => {
            return Err(format!(
                "invalid age unit in {s:?} (use ms, s, m, h, d or w)"
            ))
        }
    };
    n.checked_mul(millis)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("age {s:?} is out of range"))
}

fn model_source(args: &ModelArgs) -> Result<ModelSource> {
    Ok(match (&args.weights, args.model) {
        (Some(dir), _) => ModelSource::Local(dir.clone()),
        (None, Some(BuiltinModel::Tiny)) => {
            let dir = tiny::ensure_tiny_model(&tiny::default_tiny_dir())?;
            eprintln!("note: the tiny model has random weights: its images are meaningless (use --weights for real ones)");
            ModelSource::Local(dir)
        }
        (None, Some(BuiltinModel::Shapes)) => diffusion::shapes::source()?,
        (None, Some(BuiltinModel::Sd15)) => ModelSource::sd15(),
        (None, None) => bail!("give --weights DIR or --model shapes|tiny|sd15"),
    })
}

fn engine_options(args: &ModelArgs) -> Result<EngineOptions> {
    let first = args.device.first().map_or("cpu", String::as_str);
    Ok({
        let mut options = EngineOptions::default();
        options.scheduler = args.scheduler;
        options.steps = args.steps;
        options.guidance = args.guidance;
        options.size = args.size;
        options.dtype = diffusion::parse_dtype(&args.dtype)?;
        options.device = diffusion::parse_device(first)?;
        options.half_fallback = !args.no_f32_fallback;
        options
    })
}

/// The image files of a folder, sorted by name.
fn images_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read --source-dir {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && image_io::has_image_extension(p))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("--source-dir {} holds no images", dir.display());
    }
    Ok(files)
}

/// A folder-name-safe form of a class or file name (the output folder is the user's; keys never use names).
fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.trim_matches('_').is_empty() {
        "x".into()
    } else if s.len() > MAX_SLUG_BYTES {
        // File systems refuse names past 255 bytes, and only after the images are made: a long
        // name keeps its start and gets a hash of the whole, so it stays readable and unique.
        let hash = blake3::hash(name.as_bytes()).to_hex();
        format!("{}-{}", &s[..MAX_SLUG_BYTES - 17], &hash[..16])
    } else {
        s
    }
}

/// Longest output folder name `slug` makes (well below every file system's 255).
const MAX_SLUG_BYTES: usize = 96;

/// The key space of a command: `classes`, with `--superclass` for those without their own.
fn key_space(
    engine: &diffusion::EnginePlan,
    classes: Vec<genie::classes::ClassInfo>,
    superclass: Option<&String>,
) -> genie::generator::KeySpace {
    let keys = genie::generator::KeySpace::with_classes(
        engine.fingerprint.clone(),
        engine.resolution,
        classes,
    );
    match superclass {
        Some(s) => keys.with_superclass(s.clone()),
        None => keys,
    }
}

/// The classes of `ids`, named by the `--class-names` file when given, else WordNet ids by the
/// built-in ImageNet-1k table; says on stderr where the names came from, since every prompt
/// depends on it.
fn name_classes<S: AsRef<str>>(
    ids: &[S],
    names_file: Option<&Path>,
) -> Result<Vec<genie::classes::ClassInfo>> {
    let names = names_file
        .map(genie::classes::ClassNames::read)
        .transpose()?;
    let named = genie::classes::classes_for(ids, names.as_ref())?;
    eprintln!("{}", named.source);
    Ok(named.classes)
}

/// Folder names for `names`, refusing two that would share a folder (and overwrite each
/// other's images) before anything is generated.
fn unique_slugs<'a>(names: impl IntoIterator<Item = &'a str>, what: &str) -> Result<Vec<String>> {
    let mut seen: std::collections::HashMap<String, &str> = Default::default();
    let mut slugs = Vec::new();
    for name in names {
        let s = slug(name);
        if let Some(first) = seen.insert(s.clone(), name) {
            bail!(
                "{what}s {first:?} and {name:?} would both be written to {s}/: rename one of them"
            );
        }
        slugs.push(s);
    }
    Ok(slugs)
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Quotes an argument for a POSIX shell when it needs it.
fn shell_word(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
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

/// `text` with control characters escaped: a class name read from a file or a cache may hold a
/// terminal escape sequence, which is shown, not obeyed.
fn printable(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    shown
}

/// Longest error line printed; past it the line is cut (a 1 MB plan line is not echoed whole).
const MAX_ERROR_CHARS: usize = 2000;

/// The error and its causes on one line: a cause whose text the line already holds is not
/// repeated (many errors quote their source), control characters (a terminal escape in a class
/// name) are shown escaped, and the line is cut at `MAX_ERROR_CHARS`.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    let line = printable(&line);
    match line.char_indices().nth(MAX_ERROR_CHARS) {
        Some((cut, _)) => {
            let rest = line[cut..].chars().count();
            format!("{}… ({rest} more characters)", &line[..cut])
        }
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_control_characters_only() {
        assert_eq!(printable("tench, Tinca"), "tench, Tinca");
        assert_eq!(printable("\u{1b}[2Jcat\r"), "\\u{1b}[2Jcat\\r");
    }

    #[test]
    fn error_lines_say_each_cause_once_escaped_and_bounded() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let e = anyhow::Error::new(io)
            .context("cannot read x.png: No such file or directory")
            .context("loading sources");
        assert_eq!(
            error_line(&e),
            "loading sources: cannot read x.png: No such file or directory"
        );
        let e = anyhow::anyhow!("unknown class \u{1b}[31mred\nline");
        assert_eq!(error_line(&e), "unknown class \\u{1b}[31mred\\nline");
        let e = anyhow::anyhow!("bad line {}", "x".repeat(1_000_000));
        let line = error_line(&e);
        assert!(
            line.chars().count() < MAX_ERROR_CHARS + 40,
            "{}",
            line.len()
        );
        assert!(
            line.ends_with("more characters)"),
            "{}",
            &line[line.len() - 40..]
        );
    }

    #[test]
    fn sizes_and_ages_parse() {
        assert_eq!(parse_size("20GiB").unwrap(), 20 << 30);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("-5GB").is_err());
        assert_eq!(parse_age("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert_eq!(parse_age("12h").unwrap(), Duration::from_secs(12 * 3600));
        assert_eq!(parse_age("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_age("soon").is_err());
    }

    #[test]
    fn slugs_are_plain_names() {
        assert_eq!(slug("golden retriever"), "golden_retriever");
        assert_eq!(slug("../etc"), "___etc");
        assert_eq!(slug("///"), "x");
        let long = "a".repeat(10_000);
        let (a, b) = (slug(&long), slug(&format!("{long}b")));
        assert_eq!(a.len(), MAX_SLUG_BYTES);
        assert!(a.starts_with("aaaa") && a != b, "{a} {b}");
    }
}
