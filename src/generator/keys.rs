//! How a (source image, target class, variant, level) becomes a prompt, a noise seed, a
//! generator request and a cache key for one engine: the naming every online and offline path
//! shares.

use std::sync::Arc;

use image::RgbImage;

use super::{Priority, Request, SourceImage};
use crate::cache::{CacheKey, KeyInputs};
use crate::classes::ClassInfo;
use crate::engine::{EngineFingerprint, NoiseLevel, PromptTemplate};
use crate::image_io::{self, ImageError};

/// Classes, prompt template and engine identity of one run.
#[derive(Clone, Debug)]
pub struct KeySpace {
    fingerprint: Arc<EngineFingerprint>,
    resolution: u32,
    classes: Arc<Vec<ClassInfo>>,
    prompt: PromptTemplate,
    /// The superclass of classes that have none of their own.
    superclass: Option<String>,
}

impl KeySpace {
    /// `class_names[c]` is class `c`'s id and what the prompt calls it ("a photo of a {name}."),
    /// except that a WordNet id (`n01440764`) is named from the built-in ImageNet-1k table
    /// ("tench"), as [`crate::classes::classes_for`] names it; one the table lacks keeps its id
    /// and is logged as a warning (use `classes_for`, which refuses it, to fail instead).
    pub fn new(fingerprint: EngineFingerprint, resolution: u32, class_names: Vec<String>) -> Self {
        let (classes, unknown) = crate::classes::name_by_imagenet(&class_names);
        if !unknown.is_empty() {
            tracing::warn!(
                ids = ?unknown,
                "class ids look like WordNet ids but are not ImageNet-1k classes: their prompts \
                 say the id; name them with a class-name file (KeySpace::with_classes)"
            );
        }
        Self::with_classes(fingerprint, resolution, classes)
    }

    /// Classes whose ids (labels) and prompt names differ, e.g. from a
    /// [`crate::classes::ClassNames`] file.
    pub fn with_classes(
        fingerprint: EngineFingerprint,
        resolution: u32,
        classes: Vec<ClassInfo>,
    ) -> Self {
        KeySpace {
            fingerprint: Arc::new(fingerprint),
            resolution,
            classes: Arc::new(classes),
            prompt: PromptTemplate::default(),
            superclass: None,
        }
    }

    /// Adds the paper's optional ", a type of {superclass}" to the prompt of every class that
    /// has no superclass of its own.
    pub fn with_superclass(mut self, superclass: impl Into<String>) -> Self {
        self.superclass = Some(superclass.into());
        self
    }

    /// Prompts from `prompt` instead of the default template.
    pub fn with_prompt(mut self, prompt: PromptTemplate) -> Self {
        self.prompt = prompt;
        self
    }

    /// The engine the keys are for.
    pub fn fingerprint(&self) -> &EngineFingerprint {
        &self.fingerprint
    }

    /// The side of the sources the engine takes.
    pub fn resolution(&self) -> u32 {
        self.resolution
    }

    /// The run's classes, by label.
    pub fn classes(&self) -> &[ClassInfo] {
        &self.classes
    }

    /// Classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// The label index of the class with this id.
    pub fn class_index(&self, id: &str) -> Option<usize> {
        self.classes.iter().position(|c| c.id == id)
    }

    /// Class `c`'s id, or its number when the list is short.
    pub fn class_id(&self, class: usize) -> String {
        self.classes
            .get(class)
            .map_or_else(|| format!("class {class}"), |c| c.id.clone())
    }

    /// What the prompt calls class `c` (its id when it has no name of its own).
    pub fn class_name(&self, class: usize) -> String {
        self.classes
            .get(class)
            .map_or_else(|| format!("class {class}"), |c| c.name.clone())
    }

    /// Readable and unique ([`ClassInfo::label`]): what manifests and reports record.
    pub fn class_label(&self, class: usize) -> String {
        self.classes
            .get(class)
            .map_or_else(|| format!("class {class}"), ClassInfo::label)
    }

    /// The prompt for `target`.
    pub fn prompt(&self, target: usize) -> String {
        let superclass = self
            .classes
            .get(target)
            .and_then(|c| c.superclass.as_deref())
            .or(self.superclass.as_deref());
        self.prompt.render(&self.class_name(target), superclass)
    }

    /// The noise seed of the trajectory (source, `target`, `variant`) of a run with
    /// `run_seed`: [`crate::seed::pair_seed`] with the target's id.
    pub fn pair_seed(
        &self,
        run_seed: u64,
        source_hash: impl Into<Option<[u8; 32]>>,
        target: usize,
        variant: u32,
    ) -> u64 {
        crate::seed::pair_seed(
            run_seed,
            source_hash.into().as_ref(),
            &self.class_id(target),
            variant,
        )
    }

    /// The source as the engine takes it: resized (shorter side) and centre-cropped.
    pub fn source(&self, image: &RgbImage) -> Result<SourceImage, ImageError> {
        Ok(SourceImage::new(image_io::resize_center_crop(
            image,
            self.resolution,
        )?))
    }

    /// The cache key of one level; `seed` is the pair's ([`KeySpace::pair_seed`]). Text-to-image
    /// keys leave the source out ([`CacheKey::new`]).
    pub fn key(
        &self,
        source_hash: impl Into<Option<[u8; 32]>>,
        target: usize,
        level: NoiseLevel,
        seed: u64,
    ) -> CacheKey {
        self.hashed(CacheKey::new, source_hash.into(), target, level, seed)
    }

    /// The key of the (source, target, variant) pair, shared by all its levels: side records
    /// such as GeNIe-Ada's choice are filed under it.
    pub fn pair_key(
        &self,
        source_hash: impl Into<Option<[u8; 32]>>,
        target: usize,
        seed: u64,
    ) -> CacheKey {
        // The pair key ignores the level; any valid one will do.
        let level = NoiseLevel::GENIE_DEFAULT;
        self.hashed(CacheKey::pair, source_hash.into(), target, level, seed)
    }

    /// `hash` of the key inputs of (source, target's prompt, level, seed) with this engine.
    fn hashed(
        &self,
        hash: fn(&KeyInputs<'_>) -> CacheKey,
        source: Option<[u8; 32]>,
        target: usize,
        level: NoiseLevel,
        seed: u64,
    ) -> CacheKey {
        hash(&KeyInputs {
            source,
            prompt: &self.prompt(target),
            level,
            seed,
            fingerprint: &self.fingerprint,
        })
    }

    /// A generator request for `levels` of one pair; `source` is `None` only for
    /// text-to-image.
    pub fn request(
        &self,
        source: impl Into<Option<SourceImage>>,
        target: usize,
        levels: Vec<NoiseLevel>,
        seed: u64,
        priority: Priority,
    ) -> Request {
        Request {
            source: source.into(),
            target: self.class_label(target),
            prompt: self.prompt(target),
            levels,
            seed,
            priority,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint() -> EngineFingerprint {
        crate::engine::test_fingerprint(8)
    }

    fn cranes() -> KeySpace {
        let crane = |id: &str, superclass: Option<&str>| ClassInfo {
            id: id.into(),
            name: "crane".into(),
            superclass: superclass.map(String::from),
        };
        KeySpace::with_classes(
            fingerprint(),
            8,
            vec![crane("n02012849", Some("bird")), crane("n03126707", None)],
        )
        .with_superclass("thing")
    }

    #[test]
    fn prompts_say_the_name_and_keys_keep_classes_sharing_a_name_apart() {
        let keys = cranes();
        assert_eq!(keys.prompt(0), "a photo of a crane, a type of bird.");
        assert_eq!(keys.prompt(1), "a photo of a crane, a type of thing.");
        assert_eq!(keys.class_label(1), "crane (n03126707)");
        assert_eq!(keys.class_index("n03126707"), Some(1));
        let keys = KeySpace::with_classes(
            fingerprint(),
            8,
            vec![
                ClassInfo {
                    name: "crane".into(),
                    ..ClassInfo::named("n02012849")
                },
                ClassInfo {
                    name: "crane".into(),
                    ..ClassInfo::named("n03126707")
                },
            ],
        );
        assert_eq!(keys.prompt(0), keys.prompt(1));
        let source = [3u8; 32];
        let (s0, s1) = (
            keys.pair_seed(0, source, 0, 0),
            keys.pair_seed(0, source, 1, 0),
        );
        assert_ne!(s0, s1, "the seed follows the id, not the name");
        let level = NoiseLevel::GENIE_DEFAULT;
        assert_ne!(
            keys.key(source, 0, level, s0),
            keys.key(source, 1, level, s1)
        );
    }

    #[test]
    fn text_to_image_keys_ignore_the_source_but_not_the_seed() {
        let keys = cranes();
        let t2i = NoiseLevel::TEXT_TO_IMAGE;
        assert_eq!(keys.key([1; 32], 0, t2i, 5), keys.key(None, 0, t2i, 5));
        assert_ne!(keys.key(None, 0, t2i, 5), keys.key(None, 0, t2i, 6));
    }
}
