//! How a (source image, target class, level) becomes a prompt, a generator request and a cache
//! key for one engine: the naming every online and offline path shares.

use std::sync::Arc;

use image::RgbImage;

use super::{Priority, Request, SourceImage};
use crate::cache::{CacheKey, KeyInputs};
use crate::engine::{EngineFingerprint, NoiseLevel, PromptTemplate};
use crate::image_io::{self, ImageError};

/// Class names, prompt template and engine identity of one run.
#[derive(Clone, Debug)]
pub struct KeySpace {
    fingerprint: Arc<EngineFingerprint>,
    resolution: u32,
    class_names: Arc<Vec<String>>,
    prompt: PromptTemplate,
    superclass: Option<String>,
}

impl KeySpace {
    /// `class_names[c]` is what the prompt calls class `c` ("a photo of a {name}.").
    pub fn new(fingerprint: EngineFingerprint, resolution: u32, class_names: Vec<String>) -> Self {
        KeySpace {
            fingerprint: Arc::new(fingerprint),
            resolution,
            class_names: Arc::new(class_names),
            prompt: PromptTemplate::default(),
            superclass: None,
        }
    }

    /// Adds the paper's optional ", a type of {superclass}" to every prompt.
    pub fn with_superclass(mut self, superclass: impl Into<String>) -> Self {
        self.superclass = Some(superclass.into());
        self
    }

    pub fn with_prompt(mut self, prompt: PromptTemplate) -> Self {
        self.prompt = prompt;
        self
    }

    pub fn fingerprint(&self) -> &EngineFingerprint {
        &self.fingerprint
    }

    pub fn resolution(&self) -> u32 {
        self.resolution
    }

    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// The name of class `c`, or its number when the list is short.
    pub fn class_name(&self, class: usize) -> String {
        self.class_names
            .get(class)
            .cloned()
            .unwrap_or_else(|| format!("class {class}"))
    }

    pub fn prompt(&self, target: usize) -> String {
        self.prompt
            .render(&self.class_name(target), self.superclass.as_deref())
    }

    /// The source as the engine takes it: resized (shorter side) and centre-cropped.
    pub fn source(&self, image: &RgbImage) -> Result<SourceImage, ImageError> {
        Ok(SourceImage::new(image_io::resize_center_crop(
            image,
            self.resolution,
        )?))
    }

    pub fn key(
        &self,
        source_hash: [u8; 32],
        target: usize,
        level: NoiseLevel,
        seed: u64,
    ) -> CacheKey {
        CacheKey::new(&KeyInputs {
            source: (!level.is_text_to_image()).then_some(source_hash),
            prompt: &self.prompt(target),
            level,
            seed,
            fingerprint: &self.fingerprint,
        })
    }

    /// The key of the (source, target) pair, shared by all its levels: side records such as
    /// GeNIe-Ada's choice are filed under it.
    pub fn pair_key(&self, source_hash: [u8; 32], target: usize, seed: u64) -> CacheKey {
        CacheKey::pair(&KeyInputs {
            source: Some(source_hash),
            prompt: &self.prompt(target),
            level: NoiseLevel::GENIE_DEFAULT,
            seed,
            fingerprint: &self.fingerprint,
        })
    }

    pub fn request(
        &self,
        source: SourceImage,
        target: usize,
        levels: Vec<NoiseLevel>,
        seed: u64,
        priority: Priority,
    ) -> Request {
        Request {
            source: Some(source),
            target: self.class_name(target),
            prompt: self.prompt(target),
            levels,
            seed,
            priority,
        }
    }
}
