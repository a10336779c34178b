//! A command's classes (named from a file or the built-in ImageNet table), its key space, and
//! the source images of a folder.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use genie::diffusion;
use genie::image_io;

/// The image files of a folder, sorted by name.
pub(crate) fn images_in(dir: &Path) -> Result<Vec<PathBuf>> {
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

/// The key space of a command: `classes`, with `--superclass` for those without their own.
pub(crate) fn key_space(
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
pub(crate) fn name_classes<S: AsRef<str>>(
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
