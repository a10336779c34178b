//! [`CachedEpisodes`]: the generated images each generative method of the few-shot protocol
//! needs, as cache keys, read from the cache — with GeNIe-Ada's r* chosen per pair by the frozen
//! backbone.
//!
//! A (source image, target class, variant) pair has the same key in every episode it appears in,
//! so episodes share their images and a run over a complete cache does no diffusion.
//! [`CachedEpisodes::pairs`] lists what a run needs, for a generator or a pre-warm plan.

use std::collections::HashMap;
use std::sync::Mutex;

use image::RgbImage;

use super::episodes::Episode;
use super::few_shot::{Backbone, Generated, GeneratedImages, Method};
use crate::cache::{Cache, CacheKey};
use crate::engine::NoiseLevel;
use crate::generator::{HardNegativeGenerator, KeySpace, LevelOutcome, Priority, SourceImage};

/// One pair a method needs: split image `source` towards split class `target`, `variant`-th
/// noise, at `levels` (one key each).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeededPair {
    /// The split image the hard negative starts from.
    pub source: usize,
    /// The split class it is shown as.
    pub target: usize,
    /// Which noise of the pair.
    pub variant: u32,
    /// The levels needed.
    pub levels: Vec<NoiseLevel>,
    /// The noise seed.
    pub seed: u64,
    /// One cache key per level.
    pub keys: Vec<CacheKey>,
}

/// The generative methods' images of a split, from a cache. `keys` names the split's classes
/// (class `c` of the split is class `c` of the key space); `original(i)` reads split image `i`
/// as the engine should see it (full resolution: it is resized and cropped here).
pub struct CachedEpisodes<'a> {
    keys: &'a KeySpace,
    cache: &'a Cache,
    original: &'a (dyn Fn(usize) -> Result<RgbImage, String> + Sync),
    seed: u64,
    backbone: Option<&'a dyn Backbone>,
    sources: Mutex<HashMap<usize, SourceImage>>,
}

impl<'a> CachedEpisodes<'a> {
    /// Episodes' generated images from `cache`, keyed by `keys`; `original` loads split image `i`.
    pub fn new(
        keys: &'a KeySpace,
        cache: &'a Cache,
        original: &'a (dyn Fn(usize) -> Result<RgbImage, String> + Sync),
        seed: u64,
    ) -> Self {
        CachedEpisodes {
            keys,
            cache,
            original,
            seed,
            backbone: None,
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// The frozen backbone GeNIe-Ada scores pairs with (required for [`Method::GenieAda`]).
    pub fn with_backbone(mut self, backbone: &'a dyn Backbone) -> Self {
        self.backbone = Some(backbone);
        self
    }

    /// Split image `index` as the engine takes it (memoised: hashing is the costly part).
    pub fn source(&self, index: usize) -> Result<SourceImage, String> {
        if let Some(s) = crate::sync::lock(&self.sources).get(&index) {
            return Ok(s.clone());
        }
        let rgb = (self.original)(index).map_err(|e| format!("image {index}: {e}"))?;
        let source = self
            .keys
            .source(&rgb)
            .map_err(|e| format!("image {index}: {e}"))?;
        crate::sync::lock(&self.sources).insert(index, source.clone());
        Ok(source)
    }

    /// The pairs `method` needs for class `way` of `episode`, `count` of them: GeNIe's sources
    /// are the support images of the episode's other classes, Img2Img's and Txt2Img's the
    /// class's own; each source is used for variants 0, 1, … until there are `count`.
    pub fn pairs(
        &self,
        method: Method,
        episode: &Episode,
        way: usize,
        count: usize,
    ) -> Result<Vec<NeededPair>, String> {
        let levels = match (method, method.level()) {
            (Method::GenieAda, _) => NoiseLevel::ADA_SWEEP.to_vec(),
            (_, Some(level)) => vec![level],
            (_, None) => return Ok(Vec::new()),
        };
        let sources: Vec<usize> = match method {
            Method::Genie | Method::GenieAda | Method::GenieAt(_) => episode
                .support
                .iter()
                .enumerate()
                .filter(|&(w, _)| w != way)
                .flat_map(|(_, s)| s.iter().copied())
                .collect(),
            _ => episode.support[way].clone(),
        };
        if sources.is_empty() {
            return Err("no source images for this class".into());
        }
        let target = episode.classes[way];
        (0..count)
            .map(|i| {
                let source = sources[i % sources.len()];
                let variant = (i / sources.len()) as u32;
                let hash = self.source(source)?.hash;
                let seed = self.keys.pair_seed(self.seed, hash, target, variant);
                let keys = levels
                    .iter()
                    .map(|&l| self.keys.key(hash, target, l, seed))
                    .collect();
                Ok(NeededPair {
                    source,
                    target,
                    variant,
                    levels: levels.clone(),
                    seed,
                    keys,
                })
            })
            .collect()
    }

    /// Every pair `methods` need over `episodes` (`per_class` extra images per class) with a
    /// level the cache lacks, in episode order, a pair only when it adds a key no earlier pair
    /// listed: what a generator or a pre-warm plan must make before
    /// [`run_few_shot`](super::run_few_shot) can run without diffusion. [`missing_keys`] counts
    /// the images.
    pub fn missing_pairs(
        &self,
        episodes: &[Episode],
        methods: &[Method],
        per_class: usize,
    ) -> Result<Vec<(Method, NeededPair)>, String> {
        let mut missing = Vec::new();
        // Keys already listed: GeNIe's r = 0.8 image and the sweep's are among GeNIe-Ada's
        // levels of the same pair, and episodes share pairs.
        let mut listed = std::collections::HashSet::new();
        for episode in episodes {
            for way in 0..episode.classes.len() {
                for &method in methods.iter().filter(|m| m.is_generative()) {
                    for pair in self.pairs(method, episode, way, per_class)? {
                        let mut new = false;
                        for key in &pair.keys {
                            if listed.contains(key) {
                                continue;
                            }
                            let cached = self
                                .cache
                                .contains(key)
                                .map_err(|e| format!("reading the cache at {key}: {e}"))?;
                            if !cached {
                                listed.insert(*key);
                                new = true;
                            }
                        }
                        if new {
                            missing.push((method, pair));
                        }
                    }
                }
            }
        }
        Ok(missing)
    }

    /// Makes `missing` with `generator` (in this process, or a `genie serve` through a
    /// [`RemoteGenerator`](crate::remote::RemoteGenerator)) and waits for it; `progress(done,
    /// total)` is called as images land. In process, everything is queued before the workers
    /// take any of it (so the batches, and with them the images' last bits, do not depend on
    /// timing): the queue must hold `missing`'s levels. Returns the number of images made.
    pub fn generate(
        &self,
        generator: &dyn HardNegativeGenerator,
        missing: &[(Method, NeededPair)],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<usize, String> {
        generator.hold();
        let mut wanted = Vec::new();
        let mut distinct = std::collections::HashSet::new();
        let queued = missing.iter().try_for_each(|(method, pair)| {
            // Text-to-image reads no source (its keys ignore it).
            let from = (*method != Method::Txt2Img)
                .then(|| self.source(pair.source))
                .transpose()?;
            let receipt = generator
                .request(self.keys.request(
                    from,
                    pair.target,
                    pair.levels.clone(),
                    pair.seed,
                    Priority::Prewarm,
                ))
                .map_err(|e| e.to_string())?;
            if receipt.count(LevelOutcome::Dropped) + receipt.count(LevelOutcome::BackingOff) > 0 {
                return Err(
                    "the generator's queue refused part of the run (make its capacity at least \
                     the number of images); nothing was lost, run again"
                        .to_string(),
                );
            }
            wanted.extend(pair.keys.iter().filter(|&&k| distinct.insert(k)));
            Ok(())
        });
        generator.release();
        queued?;
        let week = std::time::Duration::from_secs(7 * 24 * 3600);
        let failures = generator
            .wait_all(&wanted, week, progress)
            .map_err(|e| e.to_string())?;
        if let Some((key, outcome)) = failures.first() {
            return Err(format!(
                "{} images could not be generated; the first: {key}: {outcome}",
                failures.len()
            ));
        }
        Ok(wanted.len())
    }

    fn read(&self, pair: &NeededPair, at: usize) -> Result<RgbImage, String> {
        let key = pair.keys[at];
        let image = self
            .cache
            .get_image(&key)
            .map_err(|e| format!("reading {key}: {e}"))?
            .ok_or_else(|| {
                format!(
                    "{key} (image {} towards {:?}, r = {}, variant {}) is not in the cache: run \
                     with a generator, or pre-warm the plan with `genie warm run`",
                    pair.source,
                    self.keys.class_label(pair.target),
                    pair.levels[at],
                    pair.variant
                )
            })?;
        Ok(RgbImage::clone(&image))
    }

    /// Algorithm 1 for one pair with the frozen backbone: the level after the largest jump of
    /// the generated images' projection towards `prototype`. An unscorable pair keeps r = 0.8.
    fn choose(&self, pair: &NeededPair, prototype: &[f64]) -> Result<RgbImage, String> {
        let backbone = self
            .backbone
            .ok_or("GeNIe-Ada needs the frozen backbone (CachedEpisodes::with_backbone)")?;
        let mut images = vec![(self.original)(pair.source)?];
        for at in 0..pair.keys.len() {
            images.push(self.read(pair, at)?);
        }
        let features = features_of(backbone, &images)?;
        let fixed = pair
            .levels
            .iter()
            .position(|&l| l == NoiseLevel::GENIE_DEFAULT)
            .unwrap_or(0);
        let at = match crate::ada::select(&pair.levels, &features[0], prototype, &features[1..]) {
            Ok(choice) => choice.index,
            Err(e) => {
                tracing::debug!(error = %e, "GeNIe-Ada cannot score an episode pair; r = 0.8");
                fixed
            }
        };
        Ok(images.swap_remove(at + 1))
    }
}

impl GeneratedImages for CachedEpisodes<'_> {
    fn images(&self, method: Method, episode: &Episode, way: usize, count: usize) -> Generated {
        let pairs = self.pairs(method, episode, way, count)?;
        if method != Method::GenieAda {
            return pairs.iter().map(|p| self.read(p, 0)).collect();
        }
        // The target's prototype: its support images, the real images the episode has of it.
        let backbone = self
            .backbone
            .ok_or("GeNIe-Ada needs the frozen backbone (CachedEpisodes::with_backbone)")?;
        let support: Vec<RgbImage> = episode.support[way]
            .iter()
            .map(|&i| (self.original)(i))
            .collect::<Result<_, _>>()?;
        let prototype =
            crate::ada::prototype(&features_of(backbone, &support)?).map_err(|e| e.to_string())?;
        pairs.iter().map(|p| self.choose(p, &prototype)).collect()
    }
}

/// The backbone's features of `images`, one vector per image or an error saying otherwise.
fn features_of(backbone: &dyn Backbone, images: &[RgbImage]) -> Result<Vec<Vec<f32>>, String> {
    let features = backbone.features(images)?;
    if features.len() != images.len() {
        return Err(format!(
            "the backbone gave {} feature vectors for {} images",
            features.len(),
            images.len()
        ));
    }
    Ok(features)
}

/// The distinct keys of `pairs` (the images a [`CachedEpisodes::missing_pairs`] list stands for,
/// at most: a pair's other levels may be cached already).
pub fn missing_keys(pairs: &[(Method, NeededPair)]) -> usize {
    pairs
        .iter()
        .flat_map(|(_, p)| p.keys.iter())
        .collect::<std::collections::HashSet<_>>()
        .len()
}
