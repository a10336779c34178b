//! `genie sheet`: one source across noise levels from the cache, with GeNIe-Ada's r* and d_m.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use genie::cache::Cache;
use genie::diffusion;
use genie::generator::SourceImage;
use genie::{image_io, NoiseLevel};

use crate::classes::ClassNaming;
use crate::model_args::{engine_options, model_source, ModelArgs};
use crate::parse::parse_level;

#[derive(Args)]
pub(crate) struct SheetArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The cache: a folder or s3://bucket/prefix.
    #[arg(long, value_name = "DIR_OR_URL")]
    cache: String,
    /// The source image, as it was given to generate or warm run.
    #[arg(long, value_name = "IMG")]
    source: PathBuf,
    /// The target class (with --class-names: its id).
    #[arg(long)]
    target: String,
    #[command(flatten)]
    naming: ClassNaming,
    /// Noise levels to show, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.6,0.7,0.8,0.9", value_parser = parse_level)]
    levels: Vec<NoiseLevel>,
    /// The run seed the hard negatives were generated with.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Which variant of the pair to show.
    #[arg(long, default_value_t = 0)]
    variant: u32,
    /// Tile side in pixels (16 to 1024).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(16..=1024))]
    tile: u32,
    /// The PNG to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

pub(crate) fn sheet(args: SheetArgs) -> Result<()> {
    use genie::pictures::{contact_sheet, SheetLevel};

    let plan = diffusion::plan_engine(&model_source(&args.model)?, &engine_options(&args.model)?)?;
    let cache = Cache::new(genie::cache::open_store(&args.cache, false)?, 0);
    let source = image_io::load_source(&args.source, plan.resolution)
        .with_context(|| format!("source {}", args.source.display()))?;
    let src = SourceImage::new(source.clone());
    let classes = args.naming.classes(&[args.target.trim()])?;
    let keys = args.naming.key_space(&plan, classes);
    let seed = keys.pair_seed(args.seed, src.hash, 0, args.variant);
    let mut levels = Vec::new();
    for &level in &args.levels {
        let image = cache.get_image(&keys.key(src.hash, 0, level, seed))?;
        levels.push(SheetLevel {
            level,
            image: image.map(|i| (*i).clone()),
        });
    }
    let found = levels.iter().filter(|l| l.image.is_some()).count();
    if found == 0 {
        bail!(
            "{} has none of these {} levels for {} as {:?}: was it generated with the same engine \
             options (--model/--weights, --steps, --scheduler, --guidance, --size, --dtype), seed, \
             variant, class names and superclass?",
            args.cache,
            args.levels.len(),
            args.source.display(),
            args.target
        );
    }
    let choice = cache.ada_choice(&keys.pair_key(src.hash, 0, seed))?;
    let sheet = contact_sheet(&source, &levels, choice.as_ref(), args.tile);
    image_io::save_png_atomic(&sheet, &args.out)?;
    let ada = match choice
        .as_ref()
        .and_then(|c| c.chosen_level().map(|l| (l, c.model_version)))
    {
        Some((level, version)) => format!("r* = {level} (model version {version})"),
        None => "no GeNIe-Ada choice recorded".into(),
    };
    println!(
        "{} of {} levels cached; {ada} -> {}",
        found,
        args.levels.len(),
        args.out.display()
    );
    Ok(())
}
