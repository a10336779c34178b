//! [`run_few_shot`]: the paper's few-shot protocol over one split — the same episodes for every
//! method, a frozen backbone's features, one logistic-regression probe per episode and method,
//! query accuracy as mean ± 95 % CI — and its tables (Markdown and CSV).
//!
//! Every method gets the K real support images of each class plus `extra_per_shot`·K more
//! labelled images (the paper's 4·K: traditional augmentations of the support images, mixes of
//! two support images, or generated images), so that the labelled totals stay comparable across
//! methods. CutMix and MixUp mix a support image of the class with one of the episode's other
//! classes (the only other images a few-shot episode has: "can only choose from 4 other
//! classes", as the paper puts it) and label it with both, λ and 1 − λ; the probe is fitted on
//! those mixed targets.

use std::fmt::Write as _;

use image::RgbImage;

use super::augment::{augment, mix_pair, Augmentation, ImageMix};
use super::episodes::{sample_episodes, Episode, EpisodeError, EpisodeSpec};
use super::logreg::{LogRegError, LogisticRegression, MixedTarget};
use super::stats::MeanCi;
use crate::engine::NoiseLevel;

/// The methods of the paper's Table 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// The support images alone.
    Plain,
    /// Weak traditional augmentation of the support images.
    Weak,
    /// Strong traditional augmentation of the support images.
    Strong,
    /// CutMix of a support image of the class with one of another class of the episode.
    CutMix,
    /// MixUp of a support image of the class with one of another class of the episode.
    MixUp,
    /// Img2Img of the class's own support images at r = 0.3.
    Img2ImgLow,
    /// Img2Img of the class's own support images at r = 0.7.
    Img2ImgHigh,
    /// Text to image (r = 1: the source is noise).
    Txt2Img,
    /// GeNIe: the episode's other classes' support images at r = 0.8, towards this class.
    Genie,
    /// GeNIe-Ada: as GeNIe, r chosen per pair by Algorithm 1 with the frozen backbone.
    GenieAda,
    /// GeNIe at a given level: the paper's Table 4 sweeps r. At GeNIe-Ada's levels it reuses
    /// GeNIe-Ada's images (same pairs, same seeds, same keys).
    GenieAt(NoiseLevel),
}

impl Method {
    /// Every method, in the paper's table order.
    pub const ALL: [Method; 10] = [
        Method::Plain,
        Method::Weak,
        Method::Strong,
        Method::CutMix,
        Method::MixUp,
        Method::Img2ImgLow,
        Method::Img2ImgHigh,
        Method::Txt2Img,
        Method::Genie,
        Method::GenieAda,
    ];

    /// GeNIe at each of GeNIe-Ada's levels (Table 4's sweep).
    pub fn sweep() -> Vec<Method> {
        NoiseLevel::ADA_SWEEP.map(Method::GenieAt).to_vec()
    }

    /// Its name in tables.
    pub fn name(self) -> String {
        let name = match self {
            Method::Plain => "no augmentation",
            Method::Weak => "weak augmentation",
            Method::Strong => "strong augmentation",
            Method::CutMix => "CutMix",
            Method::MixUp => "MixUp",
            Method::Img2ImgLow => "Img2Img-L (r = 0.3)",
            Method::Img2ImgHigh => "Img2Img-H (r = 0.7)",
            Method::Txt2Img => "Txt2Img",
            Method::Genie => "GeNIe (r = 0.8)",
            Method::GenieAda => "GeNIe-Ada",
            Method::GenieAt(level) => return format!("GeNIe (r = {level})"),
        };
        name.to_string()
    }

    /// Its name on the command line and in CSV files (`genie@0.6` for a sweep level).
    pub fn slug(self) -> String {
        let slug = match self {
            Method::Plain => "none",
            Method::Weak => "weak",
            Method::Strong => "strong",
            Method::CutMix => "cutmix",
            Method::MixUp => "mixup",
            Method::Img2ImgLow => "img2img-l",
            Method::Img2ImgHigh => "img2img-h",
            Method::Txt2Img => "txt2img",
            Method::Genie => "genie",
            Method::GenieAda => "genie-ada",
            Method::GenieAt(level) => return format!("genie@{level}"),
        };
        slug.to_string()
    }

    /// The methods a command line names (every one of [`Method::ALL`] when `slugs` is empty),
    /// with GeNIe at each of [`Method::sweep`]'s levels added when `sweep`. An unknown slug is
    /// an error that lists the known ones.
    pub fn selection(slugs: &[String], sweep: bool) -> Result<Vec<Method>, String> {
        let mut methods: Vec<Method> = if slugs.is_empty() {
            Method::ALL.to_vec()
        } else {
            slugs
                .iter()
                .map(|m| {
                    Method::from_slug(m).ok_or_else(|| {
                        let known: Vec<String> = Method::ALL.iter().map(|m| m.slug()).collect();
                        format!(
                            "unknown method {m:?} (known: {}, genie@R)",
                            known.join(", ")
                        )
                    })
                })
                .collect::<Result<_, _>>()?
        };
        if sweep {
            for m in Method::sweep() {
                if !methods.contains(&m) {
                    methods.push(m);
                }
            }
        }
        Ok(methods)
    }

    /// The method a slug names (`plain`, `genie@0.8`, …; see `slug`).
    pub fn from_slug(slug: &str) -> Option<Method> {
        if let Some(level) = slug.strip_prefix("genie@") {
            return NoiseLevel::parse(level).ok().map(Method::GenieAt);
        }
        Method::ALL.into_iter().find(|m| m.slug() == slug)
    }

    /// The fixed noise level of its generated images; `None` for the traditional methods and
    /// for GeNIe-Ada (a level per pair).
    pub fn level(self) -> Option<NoiseLevel> {
        let at = |t| NoiseLevel::from_thousandths(t);
        match self {
            Method::Img2ImgLow => at(300),
            Method::Img2ImgHigh => at(700),
            Method::Txt2Img => Some(NoiseLevel::TEXT_TO_IMAGE),
            Method::Genie => Some(NoiseLevel::GENIE_DEFAULT),
            Method::GenieAt(level) => Some(level),
            Method::Plain
            | Method::Weak
            | Method::Strong
            | Method::CutMix
            | Method::MixUp
            | Method::GenieAda => None,
        }
    }

    /// Whether its extra images are generated (from the cache) rather than augmented.
    pub fn is_generative(self) -> bool {
        !matches!(
            self,
            Method::Plain | Method::Weak | Method::Strong | Method::CutMix | Method::MixUp
        )
    }
}

/// A frozen backbone: images to feature vectors (one per image, in order, all of one length).
pub trait Backbone {
    /// One feature vector per image, in order, all of one length; the message says why not.
    fn features(&self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>, String>;
}

/// Where a generative method's images come from (usually the cache): `count` images labelled as
/// class `way` of `episode`, for `method`. GeNIe's sources are the support images of the
/// episode's other classes; Img2Img's the class's own.
pub trait GeneratedImages {
    /// `count` images labelled as class `way` of `episode`, for `method`; the message says why not.
    fn images(&self, method: Method, episode: &Episode, way: usize, count: usize) -> Generated;
}

/// Generated images, or a message saying why there are none.
pub type Generated = Result<Vec<RgbImage>, String>;

/// The protocol's settings.
///
/// New settings may be added: start from [`FewShotConfig::default`] and set fields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FewShotConfig {
    /// Ways, shots and queries of each episode.
    pub spec: EpisodeSpec,
    /// Episodes (the paper: 600).
    pub episodes: usize,
    /// Seed of the episodes and the augmentations.
    pub seed: u64,
    /// Extra labelled images per support image (the paper: 4).
    pub extra_per_shot: usize,
    /// Side of the augmented copies. The commands set it to the engine's resolution, so that
    /// every method's extra images reach the backbone at the generated images' size (the
    /// backbone resizes them all to its input).
    pub image_size: u32,
    /// The linear probe fitted on each episode's support set.
    pub probe: LogisticRegression,
    /// The methods compared.
    pub methods: Vec<Method>,
}

impl Default for FewShotConfig {
    /// The paper's 5-way 1-shot protocol: 16 queries per class, 600 episodes, 4 extra images
    /// per support image at 224 px, every method.
    fn default() -> Self {
        FewShotConfig {
            spec: EpisodeSpec {
                ways: 5,
                shots: 1,
                queries: 16,
            },
            episodes: 600,
            seed: 0,
            extra_per_shot: 4,
            image_size: 224,
            probe: LogisticRegression::default(),
            methods: Method::ALL.to_vec(),
        }
    }
}

/// One method's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct MethodResult {
    /// The method.
    pub method: Method,
    /// Query accuracy (%), mean and 95 % interval over episodes.
    pub accuracy: MeanCi,
    /// Query accuracy (%) per episode, in episode order.
    pub per_episode: Vec<f64>,
}

/// Why the protocol cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FewShotError {
    /// The episodes cannot be drawn.
    #[error(transparent)]
    Episodes(#[from] EpisodeError),
    /// An image of the dataset cannot be read.
    #[error("image {index}: {message}")]
    Image {
        /// Its index.
        index: usize,
        /// Why.
        message: String,
    },
    /// The backbone failed (its message).
    #[error("the backbone failed: {0}")]
    Backbone(String),
    /// The backbone returned another number of feature vectors than images.
    #[error("the backbone gave {got} feature vectors for {expected} images")]
    FeatureCount {
        /// Vectors returned.
        got: usize,
        /// Images given.
        expected: usize,
    },
    /// A generative method ran without generated images.
    #[error("{method} needs generated images, and none were given")]
    NoGenerated {
        /// The method's slug.
        method: String,
    },
    /// Generated images for one class of one episode cannot be had.
    #[error("{method}, episode {episode}, class {class:?}: {message}")]
    Generated {
        /// The method's slug.
        method: String,
        /// The episode.
        episode: usize,
        /// The class.
        class: String,
        /// Why.
        message: String,
    },
    /// The probe cannot be fitted on an episode.
    #[error("the probe, {method}, episode {episode}: {source}")]
    Probe {
        /// The method's slug.
        method: String,
        /// The episode.
        episode: usize,
        /// The fit's error.
        source: LogRegError,
    },
}

/// Runs every method of `config` on the same episodes of a split: `members[c]` are the image
/// indices of class `c` (named `names[c]`), `image(i)` reads image `i`. Episode by episode, the
/// support and query images are embedded once; each method adds its extra images, fits the
/// probe on the L2-normalised support features and scores the queries. `progress` is called
/// after each episode with the number done.
#[allow(clippy::too_many_arguments)]
pub fn run_few_shot(
    members: &[Vec<usize>],
    names: &[String],
    image: &dyn Fn(usize) -> Result<RgbImage, String>,
    backbone: &dyn Backbone,
    generated: Option<&dyn GeneratedImages>,
    config: &FewShotConfig,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<MethodResult>, FewShotError> {
    let episodes = sample_episodes(members, names, config.spec, config.episodes, config.seed)?;
    if generated.is_none() {
        if let Some(m) = config.methods.iter().find(|m| m.is_generative()) {
            return Err(FewShotError::NoGenerated { method: m.name() });
        }
    }
    let mut per_method: Vec<Vec<f64>> = vec![Vec::new(); config.methods.len()];
    let embed = |images: &[RgbImage]| -> Result<Vec<Vec<f32>>, FewShotError> {
        let features = backbone.features(images).map_err(FewShotError::Backbone)?;
        if features.len() != images.len() {
            return Err(FewShotError::FeatureCount {
                got: features.len(),
                expected: images.len(),
            });
        }
        Ok(features.iter().map(|f| normalised(f)).collect())
    };
    let load =
        |index: usize| image(index).map_err(|message| FewShotError::Image { index, message });
    for (n, episode) in episodes.iter().enumerate() {
        let support: Vec<Vec<RgbImage>> = episode
            .support
            .iter()
            .map(|s| s.iter().map(|&i| load(i)).collect::<Result<_, _>>())
            .collect::<Result<_, _>>()?;
        let (mut support_x, mut support_y) = (Vec::new(), Vec::new());
        for (way, images) in support.iter().enumerate() {
            support_x.extend(embed(images)?);
            support_y.extend(std::iter::repeat_n(way, images.len()));
        }
        let (mut query_x, mut query_y) = (Vec::new(), Vec::new());
        for (way, indices) in episode.queries.iter().enumerate() {
            let images: Vec<RgbImage> =
                indices.iter().map(|&i| load(i)).collect::<Result<_, _>>()?;
            query_x.extend(embed(&images)?);
            query_y.extend(std::iter::repeat_n(way, images.len()));
        }
        for (m, &method) in config.methods.iter().enumerate() {
            let mut x = support_x.clone();
            let mut y: Vec<MixedTarget> = support_y.iter().map(|&w| vec![(w, 1.0)]).collect();
            for way in 0..support.len() {
                let (extra, targets) =
                    extra_images(method, episode, n, way, &support, generated, config, names)?;
                if !extra.is_empty() {
                    x.extend(embed(&extra)?);
                    y.extend(targets);
                }
            }
            let probe = config
                .probe
                .fit_mixed(&x, &y, config.spec.ways)
                .map_err(|source| FewShotError::Probe {
                    method: method.name(),
                    episode: n,
                    source,
                })?;
            per_method[m].push(probe.accuracy(&query_x, &query_y));
        }
        progress(n + 1);
    }
    Ok(config
        .methods
        .iter()
        .zip(per_method)
        .map(|(&method, per_episode)| MethodResult {
            method,
            accuracy: MeanCi::of(&per_episode),
            per_episode,
        })
        .collect())
}

/// A method's extra images for class `way` of an episode (`support[w]`: the support images of
/// class `w`), and their targets: (class, weight) pairs, `[(way, 1.0)]` but for mixes.
#[allow(clippy::too_many_arguments)]
fn extra_images(
    method: Method,
    episode: &Episode,
    number: usize,
    way: usize,
    support: &[Vec<RgbImage>],
    generated: Option<&dyn GeneratedImages>,
    config: &FewShotConfig,
    names: &[String],
) -> Result<(Vec<RgbImage>, Vec<MixedTarget>), FewShotError> {
    let own = &support[way];
    let count = config.extra_per_shot * own.len();
    let labelled = |images: Vec<RgbImage>| {
        let targets = vec![vec![(way, 1.0)]; images.len()];
        (images, targets)
    };
    let kind = match method {
        Method::Plain => return Ok((Vec::new(), Vec::new())),
        Method::Weak => Augmentation::Weak,
        Method::Strong => Augmentation::Strong,
        Method::CutMix | Method::MixUp => {
            let kind = if method == Method::CutMix {
                ImageMix::CutMix
            } else {
                ImageMix::MixUp
            };
            return Ok(mixes(kind, number, way, support, config, count));
        }
        _ => {
            let source = generated.ok_or(FewShotError::NoGenerated {
                method: method.name(),
            })?;
            let images = source
                .images(method, episode, way, count)
                .map_err(|message| FewShotError::Generated {
                    method: method.name(),
                    episode: number,
                    class: names[episode.classes[way]].clone(),
                    message,
                })?;
            return Ok(labelled(images));
        }
    };
    Ok(labelled(
        (0..count)
            .map(|i| {
                let seed = mix(
                    config.seed,
                    &[number as u64, way as u64, i as u64, kind as u64],
                );
                augment(&own[i % own.len()], kind, config.image_size, seed)
            })
            .collect(),
    ))
}

/// `count` mixes for class `way`: its support images in turn, each with a support image of
/// another class drawn with the run's seed; targets λ for `way`, 1 − λ for the other class.
fn mixes(
    kind: ImageMix,
    number: usize,
    way: usize,
    support: &[Vec<RgbImage>],
    config: &FewShotConfig,
    count: usize,
) -> (Vec<RgbImage>, Vec<MixedTarget>) {
    let own = &support[way];
    let others: Vec<(usize, &RgbImage)> = support
        .iter()
        .enumerate()
        .filter(|&(w, _)| w != way)
        .flat_map(|(w, images)| images.iter().map(move |image| (w, image)))
        .collect();
    if others.is_empty() || own.is_empty() {
        return (Vec::new(), Vec::new());
    }
    (0..count)
        .map(|i| {
            // Tagged apart from the single-image augmentations' seeds (their kinds are 0, 1).
            let seed = mix(
                config.seed,
                &[number as u64, way as u64, i as u64, 2 + kind as u64],
            );
            let (other_way, other) = others[(seed % others.len() as u64) as usize];
            let (image, lambda) = mix_pair(
                &own[i % own.len()],
                other,
                kind,
                config.image_size,
                seed.rotate_left(17),
            );
            (image, vec![(way, lambda), (other_way, 1.0 - lambda)])
        })
        .unzip()
}

/// A seed for one augmented copy, from the run's seed and where the copy is (splitmix64 steps).
fn mix(seed: u64, parts: &[u64]) -> u64 {
    parts.iter().fold(seed, |h, &p| {
        let mut z = h ^ p.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// `v / ‖v‖` (a zero vector stays zero).
fn normalised(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 && norm.is_finite() {
        v.iter().map(|x| x / norm).collect()
    } else {
        v.to_vec()
    }
}

/// Table 1's layout: method, accuracy ± 95 % CI, episodes.
pub fn markdown_table(results: &[MethodResult], spec: EpisodeSpec) -> String {
    let mut out = format!(
        "| method | {}-way {}-shot accuracy (%) | episodes |\n| --- | --- | --- |\n",
        spec.ways, spec.shots
    );
    for r in results {
        let (name, accuracy) = (r.method.name(), &r.accuracy);
        let _ = writeln!(out, "| {name} | {accuracy} | {} |", accuracy.n);
    }
    out
}

/// One row per method: `method,ways,shots,episodes,mean,ci95`.
pub fn csv_table(results: &[MethodResult], spec: EpisodeSpec) -> String {
    let mut out = String::from("method,ways,shots,episodes,mean,ci95\n");
    let EpisodeSpec { ways, shots, .. } = spec;
    for r in results {
        let (slug, n, mean, ci95) = (
            r.method.slug(),
            r.accuracy.n,
            r.accuracy.mean,
            r.accuracy.ci95,
        );
        let _ = writeln!(out, "{slug},{ways},{shots},{n},{mean:.4},{ci95:.4}");
    }
    out
}

/// Table 4's points: (r, mean accuracy, 95 % CI) of each GeNIe-at-a-level method in `results`,
/// in their order (empty without a sweep).
pub fn sweep_points(results: &[MethodResult]) -> Vec<(f64, f64, f64)> {
    results
        .iter()
        .filter_map(|r| match r.method {
            Method::GenieAt(level) => Some((level.as_f64(), r.accuracy.mean, r.accuracy.ci95)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    /// Support images of three ways, each a flat colour: a mix's pixels say which ways it holds.
    fn support() -> Vec<Vec<RgbImage>> {
        [[200, 0, 0], [0, 200, 0], [0, 0, 200]]
            .iter()
            .map(|&c| vec![RgbImage::from_pixel(8, 8, Rgb(c)); 2])
            .collect()
    }

    #[test]
    fn mixes_pair_the_class_with_the_episodes_other_classes_and_label_both() {
        let config = FewShotConfig {
            image_size: 8,
            ..FewShotConfig::default()
        };
        for kind in [ImageMix::CutMix, ImageMix::MixUp] {
            let (images, targets) = mixes(kind, 3, 1, &support(), &config, 8);
            assert_eq!((images.len(), targets.len()), (8, 8));
            assert_eq!(
                (images.clone(), targets.clone()),
                mixes(kind, 3, 1, &support(), &config, 8)
            );
            let mut partners = std::collections::HashSet::new();
            for (image, target) in images.iter().zip(&targets) {
                let [(own, lambda), (other, rest)] = target[..] else {
                    panic!("{target:?}")
                };
                assert_eq!(own, 1);
                assert!(other != 1 && other < 3, "{target:?}");
                assert!((lambda + rest - 1.0).abs() < 1e-12);
                partners.insert(other);
                // The green channel is the class's own share, the other's channel the rest.
                let share = |ch: usize| {
                    image.pixels().map(|p| f64::from(p.0[ch])).sum::<f64>() / (200.0 * 64.0)
                };
                let channel = if other == 0 { 0 } else { 2 };
                assert!((share(1) - lambda).abs() < 0.01, "{kind:?} {target:?}");
                assert!((share(channel) - rest).abs() < 0.01, "{kind:?} {target:?}");
            }
            assert_eq!(partners.len(), 2, "both other classes are drawn");
        }
    }

    #[test]
    fn every_method_has_a_distinct_slug_that_names_it_back() {
        for method in Method::ALL {
            assert_eq!(Method::from_slug(&method.slug()), Some(method));
        }
        assert!(!Method::CutMix.is_generative() && !Method::MixUp.is_generative());
        assert_eq!(Method::MixUp.level(), None);
    }
}
