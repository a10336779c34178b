//! A shard's plan entries as generator requests: one per (source, target, seed), its levels
//! sharing one chain grid, each planned key checked against the engine that will make it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::plan::PlanEntry;
use crate::cache::CacheKey;
use crate::engine::EngineFingerprint;
use crate::generator::{level_key, Priority, Request, SourceImage};

/// The entries of one (source, target, prompt, seed): one generator request.
#[derive(Debug)]
pub struct PlannedRequest<'a> {
    /// The source image's path as planned.
    pub source: PathBuf,
    /// The target's class id.
    pub target: String,
    /// The full prompt.
    pub prompt: String,
    /// The noise seed.
    pub seed: u64,
    /// Its plan entries, one per level.
    pub entries: Vec<&'a PlanEntry>,
}

/// A planned key that is not what this engine makes of the entry and its source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[error(
    "plan entry {planned} does not match this engine or source (key {computed}): run with the \
     engine options the plan was made with, or plan again"
)]
pub struct KeyMismatch {
    /// The plan's key.
    pub planned: CacheKey,
    /// The key this engine computes for the same entry.
    pub computed: CacheKey,
}

/// Groups `entries` into requests, in a fixed order (by source, target, prompt and seed), so that
/// a shard is requested the same way on every run.
pub fn planned_requests<'a>(
    entries: impl IntoIterator<Item = &'a PlanEntry>,
) -> Vec<PlannedRequest<'a>> {
    let mut groups: BTreeMap<(PathBuf, String, String, u64), Vec<&PlanEntry>> = BTreeMap::new();
    for e in entries {
        groups
            .entry((e.source.clone(), e.target.clone(), e.prompt.clone(), e.seed))
            .or_default()
            .push(e);
    }
    groups
        .into_iter()
        .map(|((source, target, prompt, seed), entries)| PlannedRequest {
            source,
            target,
            prompt,
            seed,
            entries,
        })
        .collect()
}

impl PlannedRequest<'_> {
    /// The generator request for these entries from their source's preprocessed pixels, after
    /// checking that each planned key is the one an engine with `fingerprint` makes of them: a
    /// plan made with other options or another source file would otherwise fill the cache under
    /// keys nobody looks up.
    pub fn request(
        &self,
        source: SourceImage,
        fingerprint: &EngineFingerprint,
        priority: Priority,
    ) -> Result<Request, KeyMismatch> {
        for e in &self.entries {
            let computed = level_key(fingerprint, Some(&source), &self.prompt, e.r, self.seed);
            if computed != e.key {
                return Err(KeyMismatch {
                    planned: e.key,
                    computed,
                });
            }
        }
        Ok(Request {
            source: Some(source),
            target: self.target.clone(),
            prompt: self.prompt.clone(),
            levels: self.entries.iter().map(|e| e.r).collect(),
            seed: self.seed,
            priority,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::NoiseLevel;
    use image::RgbImage;

    fn fingerprint() -> EngineFingerprint {
        crate::engine::test_fingerprint(4)
    }

    fn entry(source: &SourceImage, file: &str, target: &str, r: u16, seed: u64) -> PlanEntry {
        let r = NoiseLevel::from_thousandths(r).unwrap();
        let prompt = format!("a photo of a {target}.");
        PlanEntry {
            key: level_key(&fingerprint(), Some(source), &prompt, r, seed),
            source: file.into(),
            source_class: "dog".into(),
            target: target.into(),
            prompt,
            r,
            seed,
            variant: 0,
            source_hash: source.hash,
        }
    }

    /// Levels of one (source, target, seed) become one request, in a fixed order; a key the
    /// engine would not make (other options, another source file) is refused by name.
    #[test]
    fn entries_group_into_checked_requests() {
        let dog = SourceImage::new(RgbImage::from_pixel(4, 4, image::Rgb([9, 9, 9])));
        let fox = SourceImage::new(RgbImage::from_pixel(4, 4, image::Rgb([200, 9, 9])));
        let entries = [
            entry(&fox, "b/fox.png", "cat", 800, 1),
            entry(&dog, "a/dog.png", "cat", 500, 7),
            entry(&dog, "a/dog.png", "cat", 900, 7),
            entry(&dog, "a/dog.png", "cow", 800, 7),
        ];
        let groups = planned_requests(&entries);
        let shape: Vec<_> = groups
            .iter()
            .map(|g| {
                (
                    g.source.to_str().unwrap(),
                    g.target.as_str(),
                    g.entries.len(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                ("a/dog.png", "cat", 2),
                ("a/dog.png", "cow", 1),
                ("b/fox.png", "cat", 1)
            ]
        );
        let request = groups[0]
            .request(dog.clone(), &fingerprint(), Priority::Prewarm)
            .unwrap();
        let levels: Vec<u16> = request.levels.iter().map(|l| l.thousandths()).collect();
        assert_eq!(levels, [500, 900]);
        assert_eq!((request.seed, request.priority), (7, Priority::Prewarm));

        // The fox's pixels for the dog's entries, or another engine: refused, naming the key.
        let wrong_source = groups[0].request(fox, &fingerprint(), Priority::Prewarm);
        assert_eq!(wrong_source.unwrap_err().planned, entries[1].key);
        let other_engine = EngineFingerprint {
            steps: 50,
            ..fingerprint()
        };
        let refused = groups[1].request(dog, &other_engine, Priority::Prewarm);
        assert_eq!(refused.unwrap_err().planned, entries[3].key);
    }
}
