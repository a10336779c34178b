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

/// The flags that name a command's classes in its prompts.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct ClassNaming {
    /// A class-name file (`n01440764 tench` lines, or CSV `id,name[,superclass]`): the ids
    /// (folder names, targets) stay the labels and cache keys, the prompts say the names.
    /// Without it, WordNet ids are named by the built-in ImageNet-1k table.
    #[arg(long, value_name = "FILE")]
    pub(crate) class_names: Option<PathBuf>,
    /// A superclass for the classes without their own: "a photo of a {target}, a type of
    /// {superclass}."
    #[arg(long)]
    pub(crate) superclass: Option<String>,
}

impl ClassNaming {
    /// The classes of `ids`, named by the `--class-names` file when given, else WordNet ids by
    /// the built-in ImageNet-1k table; says on stderr where the names came from, since every
    /// prompt depends on it.
    pub(crate) fn classes<S: AsRef<str>>(
        &self,
        ids: &[S],
    ) -> Result<Vec<genie::classes::ClassInfo>> {
        let names = self
            .class_names
            .as_deref()
            .map(genie::classes::ClassNames::read)
            .transpose()?;
        let named = genie::classes::classes_for(ids, names.as_ref())?;
        eprintln!("{}", named.source);
        Ok(named.classes)
    }

    /// The key space of a command: `classes`, with `--superclass` for those without their own.
    pub(crate) fn key_space(
        &self,
        engine: &diffusion::EnginePlan,
        classes: Vec<genie::classes::ClassInfo>,
    ) -> genie::generator::KeySpace {
        let keys = genie::generator::KeySpace::with_classes(
            engine.fingerprint.clone(),
            engine.resolution,
            classes,
        );
        match &self.superclass {
            Some(s) => keys.with_superclass(s.clone()),
            None => keys,
        }
    }
}
