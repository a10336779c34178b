//! One builder for the common online setup: an [`Augmenter`] whose cache keys come from the engine
//! that makes (or made) its images, so that keys and images cannot disagree.
//!
//! By hand, a run needs a [`KeySpace`] made from the engine's fingerprint and resolution, the
//! generator, the confusion matrix and the plan, each attached in its own call, and a key space
//! copied from the wrong engine is a silent miss: every lookup fails and nothing is mixed.
//! [`AugmenterBuilder`] takes the generator (local workers or `genie serve`) or, for a cache
//! pre-warmed with the generator off, the engine's plan, and derives the keys from it.

use std::marker::PhantomData;
use std::sync::Arc;

use super::augmenter::{Augmenter, AugmenterConfig, AugmenterError};
use super::item::GenieItem;
use crate::cache::Cache;
use crate::classes::ClassInfo;
use crate::engine::{EngineFingerprint, PromptTemplate};
use crate::generator::{HardNegativeGenerator, KeySpace};
use crate::policy::{Policy, SharedConfusion};
use crate::warm::PlannedPair;

/// Builds an [`Augmenter`]: see [`Augmenter::builder`].
#[must_use = "a builder does nothing until `build`"]
pub struct AugmenterBuilder<I> {
    policy: Policy,
    classes: Vec<ClassInfo>,
    cache: Arc<Cache>,
    generator: Option<Arc<dyn HardNegativeGenerator>>,
    engine: Option<EngineFingerprint>,
    superclass: Option<String>,
    prompt: Option<PromptTemplate>,
    confusion: Option<SharedConfusion>,
    config: AugmenterConfig,
    plan: Option<Vec<PlannedPair>>,
    item: PhantomData<fn() -> I>,
}

impl<I: GenieItem> Augmenter<I> {
    /// The common way to make an augmenter: `policy` over `classes` (your label ids, with names
    /// for the prompts: [`crate::classes::classes_for`]), images in `cache`, then a
    /// [`generator`](AugmenterBuilder::generator) (or the engine that pre-warmed the cache),
    /// optionally a confusion matrix, a plan and a config, and [`build`](AugmenterBuilder::build).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use genie::cache::Cache;
    /// # use genie::classes::ClassInfo;
    /// # use genie::engine::{EngineFingerprint, NoiseLevel};
    /// # use genie::loader::Augmenter;
    /// # use genie::policy::{ClassStats, Policy, PolicyConfig, SharedConfusion};
    /// # use genie::loader::ImageItem;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let cache = Arc::new(Cache::open(dir.path().to_str().unwrap(), 1 << 20)?);
    /// # let engine = EngineFingerprint { model: "doc".into(), scheduler: "ddim".into(), steps: 50,
    /// #     guidance: "7.5".into(), resolution: 64, dtype: "f32".into(), algorithm_version: 2 };
    /// let labels = [0, 0, 0, 0, 0, 0, 0, 0, 1, 2]; // class 0 is the head, 1 and 2 the tail
    /// let stats = ClassStats::from_labels(labels, 3)?;
    /// let policy = Policy::long_tail(stats, PolicyConfig::long_tail())?;
    /// let classes = ["cat", "dog", "fox"].map(ClassInfo::named).to_vec();
    /// let confusion = SharedConfusion::new(3);
    /// let augmenter = Augmenter::<ImageItem>::builder(policy, classes, cache)
    ///     .pre_warmed_by(&engine) // or .generator(Arc::new(generator)): local or `genie serve`
    ///     .confusion(confusion.clone())
    ///     .ada(false) // r = 0.8 for every pair; with GeNIe-Ada on the live model picks r
    ///     .build()?;
    /// assert_eq!(augmenter.levels(), &[NoiseLevel::GENIE_DEFAULT]);
    /// assert_eq!(augmenter.keys().prompt(2), "a photo of a fox.");
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(
        policy: Policy,
        classes: Vec<ClassInfo>,
        cache: Arc<Cache>,
    ) -> AugmenterBuilder<I> {
        AugmenterBuilder {
            policy,
            classes,
            cache,
            generator: None,
            engine: None,
            superclass: None,
            prompt: None,
            confusion: None,
            config: AugmenterConfig::default(),
            plan: None,
            item: PhantomData,
        }
    }
}

impl<I: GenieItem> AugmenterBuilder<I> {
    /// Asks `generator` for the hard negatives the cache lacks: a
    /// [`Generator`](crate::generator::Generator) in this process, a
    /// [`RemoteGenerator`](crate::remote::RemoteGenerator) (`genie serve`), or any other
    /// [`HardNegativeGenerator`]. The cache keys are its engine's.
    pub fn generator<G: HardNegativeGenerator + 'static>(mut self, generator: Arc<G>) -> Self {
        self.generator = Some(generator);
        self
    }

    /// Takes the keys of the engine with this fingerprint (`SdEngineFactory::plan().fingerprint`,
    /// which reads configs and hashes weights without loading them) — for a cache that engine
    /// pre-warmed (`genie warm run`), with no generator: only what the cache holds is mixed.
    /// With a generator as well, both must be the same engine.
    pub fn pre_warmed_by(mut self, engine: &EngineFingerprint) -> Self {
        self.engine = Some(engine.clone());
        self
    }

    /// The superclass said in prompts of classes without their own (`a photo of a {name}, a
    /// type of {superclass}.`).
    pub fn superclass(mut self, superclass: impl Into<String>) -> Self {
        self.superclass = Some(superclass.into());
        self
    }

    /// Another prompt than `a photo of a {name}.`.
    pub fn prompt(mut self, prompt: PromptTemplate) -> Self {
        self.prompt = Some(prompt);
        self
    }

    /// Reads source classes from this confusion matrix (for `SourceStrategy::TopConfused`);
    /// record your predictions into it ([`crate::loader::ConfusionMetric`] or
    /// [`SharedConfusion::record`]).
    pub fn confusion(mut self, confusion: SharedConfusion) -> Self {
        self.confusion = Some(confusion);
        self
    }

    /// GeNIe-Ada on (the default: every level of the sweep is generated and the live model picks
    /// r per pair) or off (only the fixed level, GeNIe's 0.8); the same as `config.ada`.
    pub fn ada(mut self, ada: bool) -> Self {
        self.config.ada = ada;
        self
    }

    /// Knobs of the online loop (GeNIe-Ada on or off, the fixed level, memory).
    pub fn config(mut self, config: AugmenterConfig) -> Self {
        self.config = config;
        self
    }

    /// Starts exactly the pairs of a pre-warm plan (see [`Augmenter::with_plan`]).
    pub fn plan(mut self, pairs: Vec<PlannedPair>) -> Self {
        self.plan = Some(pairs);
        self
    }

    /// The augmenter, shared: give clones to [`crate::loader::GenieBatcher::new`] and
    /// [`crate::loader::LiveModel::start`]. Fails when no engine was named, when the generator
    /// and the pre-warm plan are different engines, when the classes are not the policy's, or
    /// when the plan does not fit this run (see [`Augmenter::with_plan`]).
    pub fn build(self) -> Result<Arc<Augmenter<I>>, AugmenterError> {
        let fingerprint = match (self.generator.as_ref(), self.engine) {
            (Some(g), Some(engine)) if g.fingerprint() != &engine => {
                return Err(AugmenterError::FingerprintMismatch {
                    generator: g.fingerprint().to_string(),
                    keys: engine.to_string(),
                })
            }
            (_, Some(engine)) => engine,
            (Some(g), None) => g.fingerprint().clone(),
            (None, None) => return Err(AugmenterError::NoEngine),
        };
        let resolution = fingerprint.resolution;
        let mut keys = KeySpace::with_classes(fingerprint, resolution, self.classes);
        if let Some(superclass) = self.superclass {
            keys = keys.with_superclass(superclass);
        }
        if let Some(prompt) = self.prompt {
            keys = keys.with_prompt(prompt);
        }
        let mut augmenter = Augmenter::new(self.policy, keys, self.cache, None, self.config)?;
        if let Some(generator) = self.generator {
            augmenter = augmenter.with_generator(generator);
        }
        if let Some(confusion) = self.confusion {
            augmenter = augmenter.with_confusion(confusion);
        }
        if let Some(pairs) = &self.plan {
            augmenter = augmenter.with_plan(pairs)?;
        }
        Ok(Arc::new(augmenter))
    }
}
