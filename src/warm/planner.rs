//! Turning a dataset and a policy into plan entries: which source images, which targets, which
//! levels, and the cache key of each.

use std::collections::HashMap;

use super::folder::{FolderError, ImageFolder};
use super::plan::PlanEntry;
use crate::engine::NoiseLevel;
use crate::generator::KeySpace;
use crate::policy::{
    ClassStats, ConfusionMatrix, Policy, PolicyConfig, PolicyError, SourceStrategy,
};

/// Which (source, target) pairs to plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanMode {
    /// Targets are the Few classes; quota 50 each (the paper's long-tail protocol).
    LongTail,
    /// Every class is a target; quota 4·shots each, sources from every other class.
    FewShot { shots: usize },
    /// Explicit (source class, target class) pairs, by name.
    Pairs(Vec<(String, String)>),
}

/// Everything that shapes a plan besides the dataset and the engine.
#[derive(Clone, Debug)]
pub struct PlanOptions {
    pub mode: PlanMode,
    pub levels: Vec<NoiseLevel>,
    /// Overrides the mode's quota of source images per target (or per pair).
    pub per_class: Option<usize>,
    pub sources: SourceStrategy,
    pub confusion: Option<ConfusionMatrix>,
    pub seed: u64,
}

/// What a plan holds, for the user.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PlanSummary {
    pub entries: usize,
    /// Hard negatives per target class name.
    pub per_target: Vec<(String, usize)>,
    /// Source images that could not be read, with the reason; their entries are left out.
    pub skipped: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlannerError {
    #[error(transparent)]
    Folder(#[from] FolderError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("no noise levels to plan")]
    NoLevels,
}

/// Plans `options` over `folder`; keys come from `keys` (whose class names must be the folder's).
pub fn build_plan(
    folder: &ImageFolder,
    options: &PlanOptions,
    keys: &KeySpace,
) -> Result<(Vec<PlanEntry>, PlanSummary), PlannerError> {
    if options.levels.is_empty() {
        return Err(PlannerError::NoLevels);
    }
    let labels = folder.labels();
    let classes = folder.classes.len();
    let pairs: Vec<(usize, usize)> = match &options.mode {
        PlanMode::Pairs(named) => {
            let quota = options.per_class.unwrap_or(crate::policy::LONG_TAIL_QUOTA);
            let mut pairs = Vec::new();
            for (s, t) in named {
                let (s, t) = (folder.class_index(s)?, folder.class_index(t)?);
                let sources = (0..labels.len()).filter(|&i| labels[i] == s).take(quota);
                pairs.extend(sources.map(|i| (i, t)));
            }
            pairs
        }
        mode => {
            let stats = ClassStats::from_labels(labels.iter().copied(), classes)?;
            let base = match mode {
                PlanMode::FewShot { shots } => PolicyConfig::few_shot(*shots),
                _ => PolicyConfig::long_tail(),
            };
            let config = PolicyConfig {
                per_target: options.per_class.unwrap_or(base.per_target),
                sources: options.sources,
                seed: options.seed,
                ..base
            };
            let policy = match mode {
                PlanMode::FewShot { .. } => {
                    Policy::with_targets(stats, &(0..classes).collect::<Vec<_>>(), config)?
                }
                _ => Policy::long_tail(stats, config)?,
            };
            policy.offline_plan(&labels, options.confusion.as_ref())
        }
    };

    let mut hashes: HashMap<usize, Option<[u8; 32]>> = HashMap::new();
    let mut summary = PlanSummary::default();
    let mut per_target = vec![0usize; classes];
    let mut entries = Vec::new();
    for (index, target) in pairs {
        let (path, source_class) = &folder.images[index];
        let hash = *hashes.entry(index).or_insert_with(|| {
            match crate::image_io::load_source(path, keys.resolution()) {
                Ok(img) => Some(*crate::image_io::pixel_hash(&img).as_bytes()),
                Err(e) => {
                    summary.skipped.push(format!("{}: {e}", path.display()));
                    None
                }
            }
        });
        let Some(hash) = hash else { continue };
        for &level in &options.levels {
            entries.push(PlanEntry {
                key: keys.key(hash, target, level, options.seed),
                source: path.clone(),
                source_class: folder.classes[*source_class].clone(),
                target: folder.classes[target].clone(),
                prompt: keys.prompt(target),
                r: level,
                seed: options.seed,
            });
            per_target[target] += 1;
        }
    }
    entries.sort_by_key(|e| e.key);
    entries.dedup_by_key(|e| e.key);
    summary.entries = entries.len();
    summary.per_target = per_target
        .into_iter()
        .enumerate()
        .filter(|&(_, n)| n > 0)
        .map(|(c, n)| (folder.classes[c].clone(), n))
        .collect();
    Ok((entries, summary))
}
