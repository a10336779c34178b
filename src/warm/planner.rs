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
    FewShot {
        /// Support images per class.
        shots: usize,
    },
    /// Explicit (source class, target class) pairs, by name.
    Pairs(Vec<(String, String)>),
}

/// Everything that shapes a plan besides the dataset and the engine.
///
/// New settings may be added: start from [`PlanOptions::default`] and set fields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PlanOptions {
    /// Which pairs.
    pub mode: PlanMode,
    /// The levels planned per pair.
    pub levels: Vec<NoiseLevel>,
    /// Overrides the mode's quota of source images per target (or per pair).
    pub per_class: Option<usize>,
    /// Where each target's source images come from.
    pub sources: SourceStrategy,
    /// The confusion matrix `SourceStrategy::TopConfused` reads.
    pub confusion: Option<ConfusionMatrix>,
    /// Hard negatives per (source image, target), each from its own noise; they count towards
    /// the quota.
    pub variants: u32,
    /// The run seed; each pair's noise seed is derived from it ([`KeySpace::pair_seed`]).
    pub seed: u64,
}

impl Default for PlanOptions {
    /// The long-tail protocol at GeNIe's fixed level (r = 0.8), sources from the top-4 confused
    /// classes (uniform without a confusion matrix), one variant, seed 0.
    fn default() -> Self {
        PlanOptions {
            mode: PlanMode::LongTail,
            levels: vec![NoiseLevel::GENIE_DEFAULT],
            per_class: None,
            sources: SourceStrategy::TopConfused { k: 4 },
            confusion: None,
            variants: 1,
            seed: 0,
        }
    }
}

/// What a plan holds, for the user.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PlanSummary {
    /// Plan entries (one per pair and level).
    pub entries: usize,
    /// Hard negatives per target class name.
    pub per_target: Vec<(String, usize)>,
    /// Source images that could not be read, with the reason; their entries are left out.
    pub skipped: Vec<String>,
}

/// Why a plan cannot be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlannerError {
    /// The dataset folder cannot be read.
    #[error(transparent)]
    Folder(#[from] FolderError),
    /// The policy's settings are invalid.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// No noise level to plan.
    #[error("no noise levels to plan")]
    NoLevels,
    /// The class names and the folder disagree on the class count.
    #[error("the class names hold {names} classes, the folder {folder}")]
    ClassCount {
        /// Classes named.
        names: usize,
        /// Class folders.
        folder: usize,
    },
}

/// Plans `options` over `folder`; keys come from `keys`, whose classes must be the folder's (in
/// order; their names may differ, e.g. from a class-name file).
///
/// The (source image, target, variant) choice is [`Policy::offline_plan`] over the folder's
/// labels, the same function [`crate::loader::OfflinePlan`] calls, and every seed comes from
/// [`KeySpace::pair_seed`]: a training run that loads this plan (or plans the same dataset with
/// the same policy and seed) finds every key it mixes.
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
    if keys.num_classes() != classes {
        return Err(PlannerError::ClassCount {
            names: keys.num_classes(),
            folder: classes,
        });
    }
    let variants = options.variants.max(1);
    let pairs: Vec<(usize, usize, u32)> = match &options.mode {
        PlanMode::Pairs(named) => {
            let quota = options.per_class.unwrap_or(crate::policy::LONG_TAIL_QUOTA);
            let mut pairs = Vec::new();
            for (s, t) in named {
                let (s, t) = (folder.class_index(s)?, folder.class_index(t)?);
                let sources = (0..labels.len()).filter(|&i| labels[i] == s);
                let each = sources.flat_map(|i| (0..variants).map(move |v| (i, t, v)));
                pairs.extend(each.take(quota));
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
                variants,
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
    let mut entries = Vec::new();
    for (index, target, variant) in pairs {
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
        let seed = keys.pair_seed(options.seed, hash, target, variant);
        for &level in &options.levels {
            entries.push(PlanEntry {
                key: keys.key(hash, target, level, seed),
                source: path.clone(),
                source_class: folder.classes[*source_class].clone(),
                target: folder.classes[target].clone(),
                prompt: keys.prompt(target),
                r: level,
                seed,
                variant,
                source_hash: hash,
            });
        }
    }
    // Two files with identical pixels are one source: their entries share keys.
    entries.sort_by_key(|e| e.key);
    entries.dedup_by_key(|e| e.key);
    summary.entries = entries.len();
    let mut per_target = vec![0usize; classes];
    for e in &entries {
        if let Ok(t) = folder.class_index(&e.target) {
            per_target[t] += 1;
        }
    }
    summary.per_target = per_target
        .into_iter()
        .enumerate()
        .filter(|&(_, n)| n > 0)
        .map(|(c, n)| (folder.classes[c].clone(), n))
        .collect();
    Ok((entries, summary))
}
