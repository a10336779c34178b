//! `genie cache …`: inspect, verify, collect and report on a hard-negative cache.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Subcommand;
use genie::cache::{DiskStore, GcPolicy};
use genie::{image_io, NoiseLevel};

use crate::parse::{parse_age, parse_size};
use crate::text::{human_bytes, printable};

#[derive(Subcommand)]
pub(crate) enum CacheCommand {
    /// Entries and bytes, by target class and by noise level.
    Stats {
        /// A cache folder or s3://bucket/prefix.
        #[arg(value_name = "DIR_OR_URL")]
        location: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check every entry's content against its manifest; with --repair, quarantine bad ones.
    Verify {
        dir: PathBuf,
        #[arg(long)]
        repair: bool,
    },
    /// Write an HTML page of thumbnails per target class, with counts by r (opens with no server).
    Report {
        /// A cache folder or s3://bucket/prefix.
        #[arg(value_name = "DIR_OR_URL")]
        location: String,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Thumbnails per target class and level (0 to 1000).
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(0..=1000))]
        per_level: u16,
        /// Thumbnail side in pixels (16 to 512).
        #[arg(long, default_value_t = 96, value_parser = clap::value_parser!(u32).range(16..=512))]
        thumbnail: u32,
    },
    /// Remove entries older than --max-age, then the oldest until the cache fits --max-size.
    Gc {
        dir: PathBuf,
        /// e.g. 20GiB, 500MB, 1048576
        #[arg(long, value_parser = parse_size)]
        max_size: Option<u64>,
        /// e.g. 30d, 12h, 90m
        #[arg(long, value_parser = parse_age)]
        max_age: Option<Duration>,
    },
}

pub(crate) fn cache_command(cmd: CacheCommand) -> Result<()> {
    match cmd {
        CacheCommand::Stats { location, json } => {
            let stats = genie::cache::open_store(&location, false)?.stats()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
                return Ok(());
            }
            println!("{} entries, {}", stats.entries, human_bytes(stats.bytes));
            if stats.unusable_manifests > 0 {
                println!(
                    "{} manifests are unusable and counted in nothing below: `genie cache verify` \
                     lists them, `--repair` quarantines them",
                    stats.unusable_manifests
                );
            }
            if stats.newer_format_manifests > 0 {
                println!(
                    "{} manifests come from a newer genie and are counted in nothing below",
                    stats.newer_format_manifests
                );
            }
            println!("\nby target class:");
            for (target, g) in &stats.by_target {
                println!(
                    "  {:<30} {:>8} entries  {:>10}",
                    printable(target),
                    g.entries,
                    human_bytes(g.bytes)
                );
            }
            println!("\nby noise level:");
            for (level, n) in &stats.by_level {
                let r = NoiseLevel::from_thousandths(*level)
                    .map_or_else(|| format!("{level}‰"), |l| l.to_string());
                println!("  r = {:<6} {:>8} entries", r, n);
            }
            Ok(())
        }
        CacheCommand::Report {
            location,
            out,
            per_level,
            thumbnail,
        } => {
            let store = genie::cache::open_store(&location, false)?;
            let mut options = genie::pictures::ReportOptions::default();
            options.title = format!("genie cache {location}");
            options.thumbnails_per_level = per_level.into();
            options.thumbnail_px = thumbnail;
            let (html, summary) = genie::pictures::cache_report(store.as_ref(), &options)?;
            image_io::write_atomic(&out, html.as_bytes())?;
            println!(
                "{} entries of {} target classes, {} thumbnails -> {}",
                summary.entries,
                summary.targets,
                summary.thumbnails,
                out.display()
            );
            if summary.unreadable + summary.skipped_manifests > 0 {
                eprintln!(
                    "warning: {} entries unreadable, {} manifests skipped (see genie cache verify)",
                    summary.unreadable, summary.skipped_manifests
                );
            }
            Ok(())
        }
        CacheCommand::Verify { dir, repair } => {
            let store = DiskStore::open_existing(&dir)?;
            let report = store.verify_with(repair, genie::cache::check_image)?;
            for bad in &report.bad {
                println!("bad: {} — {}", bad.location, bad.defect);
            }
            println!(
                "checked {} entries: {} ok, {} bad{}",
                report.checked,
                report.ok,
                report.bad.len(),
                if repair {
                    format!(", {} quarantined", report.quarantined)
                } else {
                    String::new()
                }
            );
            if !report.bad.is_empty() && !repair {
                bail!(
                    "{} bad entries (run with --repair to quarantine them)",
                    report.bad.len()
                );
            }
            Ok(())
        }
        CacheCommand::Gc {
            dir,
            max_size,
            max_age,
        } => {
            if max_size.is_none() && max_age.is_none() {
                bail!("give --max-size and/or --max-age");
            }
            let store = DiskStore::open_existing(&dir)?;
            let report = store.gc(&GcPolicy {
                max_bytes: max_size,
                max_age,
            })?;
            println!(
                "removed {} entries ({}); {} entries ({}) remain",
                report.removed_entries,
                human_bytes(report.removed_bytes),
                report.remaining_entries,
                human_bytes(report.remaining_bytes)
            );
            Ok(())
        }
    }
}
