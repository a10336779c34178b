//! Writes genie's drawn-shapes dataset as an image folder (`DIR/<class>/NNNNN.png`): the data
//! the shapes model was trained on (`scripts/shapes-model/train.py` reads it), or a long-tailed
//! folder for `genie warm plan` and the examples' `--data`.
//!
//! ```text
//! cargo run --release --example synthetic_dataset -- --out shapes/ --per-class 3000 --size 64
//! cargo run --release --example synthetic_dataset -- --out lt/train --long-tail 500,5 --size 64
//! ```

use anyhow::{bail, Result};
use clap::Parser;
use genie::synthetic;

#[derive(Parser, Debug)]
#[command(about = "Write the drawn-shapes dataset as an image folder")]
struct Args {
    /// Output folder (DIR/<class>/NNNNN.png).
    #[arg(long)]
    out: std::path::PathBuf,
    /// Images per class (a balanced set).
    #[arg(long, default_value_t = 100)]
    per_class: usize,
    /// A long-tailed set instead: `MAX,MIN` images per class, falling exponentially.
    #[arg(long, value_delimiter = ',')]
    long_tail: Option<Vec<usize>>,
    /// Image side in pixels.
    #[arg(long, default_value_t = 64)]
    size: u32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let classes = synthetic::CLASS_NAMES.len();
    let items = match &args.long_tail {
        Some(range) => {
            let [max, min] = range[..] else {
                bail!("--long-tail takes MAX,MIN");
            };
            let counts = synthetic::long_tail_counts(classes, max, min);
            synthetic::long_tail_dataset(&counts, args.size, args.seed)?
        }
        None => synthetic::balanced_dataset(args.per_class, classes, args.size, args.seed)?,
    };
    synthetic::write_image_folder(&items, &args.out)?;
    println!(
        "{} images of {classes} classes -> {}",
        items.len(),
        args.out.display()
    );
    Ok(())
}
