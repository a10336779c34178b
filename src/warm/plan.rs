//! [`PlanEntry`] and the plan file: JSON Lines, sorted by key, one hard negative per line.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cache::CacheKey;
use crate::engine::NoiseLevel;

/// One hard negative to make: the source image at `source`, shown as `target` at level `r`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanEntry {
    /// The cache key of the image.
    pub key: CacheKey,
    /// The source image's path as planned; its last two components identify it ([`source_id`]).
    pub source: PathBuf,
    /// The source's class id (its folder name).
    pub source_class: String,
    /// The target's class id (its folder name); the prompt says its name.
    pub target: String,
    /// The full prompt.
    pub prompt: String,
    /// r as written by [`NoiseLevel`]'s `Display` (`"0.8"`), never a binary float.
    #[serde(with = "level_as_text")]
    pub r: NoiseLevel,
    /// The pair's noise seed, derived from the run seed ([`crate::seed::pair_seed`]).
    pub seed: u64,
    /// Which of the pair's hard negatives this is (0, 1, … with `--variants`).
    #[serde(default)]
    pub variant: u32,
    /// Pixel hash of the preprocessed source (64 hex digits): the training side checks the
    /// plan's keys against its own engine with it, without reading the source.
    #[serde(with = "hash_as_hex")]
    pub source_hash: [u8; 32],
}

impl PlanEntry {
    /// Which dataset item this entry's source is: [`source_id`] of its path.
    pub fn source_id(&self) -> Option<&str> {
        self.source.to_str().and_then(source_id)
    }
}

/// A source's identity across machines and dataset moves: the last two components of its path,
/// `<class folder>/<file name>` (unique in the image-folder layout plans are made from).
/// `None` for a path with fewer than two components.
pub fn source_id(path: &str) -> Option<&str> {
    let trimmed = path.trim_end_matches(['/', '\\']);
    let file_start = trimmed.rfind(['/', '\\'])?;
    let class_start = trimmed[..file_start]
        .rfind(['/', '\\'])
        .map_or(0, |i| i + 1);
    let id = &trimmed[class_start..];
    (class_start < file_start && file_start + 1 < trimmed.len()).then_some(id)
}

/// All levels of one (source, target, variant) of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedPair {
    /// The source image's path as planned; its last two components identify it ([`source_id`]).
    pub source: PathBuf,
    /// The source's class id.
    pub source_class: String,
    /// The target's class id.
    pub target: String,
    /// Which variant of the source for this target.
    pub variant: u32,
    /// The noise seed.
    pub seed: u64,
    /// blake3 of the preprocessed source's pixels.
    pub source_hash: [u8; 32],
    /// (level, key), ascending by level.
    pub levels: Vec<(NoiseLevel, CacheKey)>,
}

impl PlannedPair {
    /// The key of `level`, if the plan has it.
    pub fn key(&self, level: NoiseLevel) -> Option<CacheKey> {
        self.levels
            .iter()
            .find(|(l, _)| *l == level)
            .map(|&(_, k)| k)
    }

    /// The source's `<class>/<file>` id, when its path has one.
    pub fn source_id(&self) -> Option<&str> {
        self.source.to_str().and_then(source_id)
    }
}

/// Groups a plan's entries into pairs (one per source, target and variant), in a stable order
/// (source path, target, variant).
pub fn plan_pairs(entries: &[PlanEntry]) -> Vec<PlannedPair> {
    let mut groups: std::collections::BTreeMap<(&Path, &str, u32, u64), PlannedPair> =
        Default::default();
    for e in entries {
        let pair = groups
            .entry((e.source.as_path(), e.target.as_str(), e.variant, e.seed))
            .or_insert_with(|| PlannedPair {
                source: e.source.clone(),
                source_class: e.source_class.clone(),
                target: e.target.clone(),
                variant: e.variant,
                seed: e.seed,
                source_hash: e.source_hash,
                levels: Vec::new(),
            });
        pair.levels.push((e.r, e.key));
    }
    groups
        .into_values()
        .map(|mut p| {
            p.levels.sort_unstable();
            p
        })
        .collect()
}

/// Why a plan file cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The plan file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The plan file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is not a plan entry.
    #[error("{path}:{line}: {message}")]
    Line {
        /// The plan file.
        path: PathBuf,
        /// Its line (1-based).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The plan file cannot be written (atomically).
    #[error(transparent)]
    Write(#[from] crate::image_io::ImageError),
    /// Two lines plan the same key.
    #[error("{path}:{line}: key {key} was already planned on line {first}")]
    Duplicate {
        /// The plan file.
        path: PathBuf,
        /// The later line.
        line: usize,
        /// The first line with the key.
        first: usize,
        /// The key.
        key: CacheKey,
    },
}

/// Writes `entries` sorted by key (so equal plans are equal files), atomically.
pub fn write_plan(path: &Path, entries: &mut [PlanEntry]) -> Result<(), PlanError> {
    entries.sort_by_key(|e| e.key);
    let mut text = Vec::new();
    for (n, e) in entries.iter().enumerate() {
        serde_json::to_writer(&mut text, e).map_err(|e| PlanError::Line {
            path: path.to_path_buf(),
            line: n + 1,
            message: e.to_string(),
        })?;
        text.push(b'\n');
    }
    Ok(crate::image_io::write_atomic(path, &text)?)
}

/// Reads a plan; a malformed line or a key planned twice is an error naming the line.
pub fn read_plan(path: &Path) -> Result<Vec<PlanEntry>, PlanError> {
    let io = |source| PlanError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = crate::safe_open::open_regular(path).map_err(io)?;
    let mut entries = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let entry: PlanEntry = serde_json::from_str(&line).map_err(|e| PlanError::Line {
            path: path.to_path_buf(),
            line: n + 1,
            message: e.to_string(),
        })?;
        if let Some(first) = seen.insert(entry.key, n + 1) {
            return Err(PlanError::Duplicate {
                path: path.to_path_buf(),
                line: n + 1,
                first,
                key: entry.key,
            });
        }
        entries.push(entry);
    }
    Ok(entries)
}

mod hash_as_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(hash: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::cache::CacheKey::from_bytes(*hash).to_hex())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        crate::cache::CacheKey::from_hex(&text)
            .map(|k| *k.as_bytes())
            .map_err(|_| serde::de::Error::custom("source_hash: expected 64 lowercase hex digits"))
    }
}

mod level_as_text {
    use crate::engine::NoiseLevel;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(level: &NoiseLevel, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&level.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NoiseLevel, D::Error> {
        let text = String::deserialize(d)?;
        NoiseLevel::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{CacheKey, KeyInputs};
    use crate::engine::EngineFingerprint;

    fn entry(n: u64) -> PlanEntry {
        let fingerprint = EngineFingerprint {
            model: "m".into(),
            scheduler: "s".into(),
            steps: 1,
            guidance: "1".into(),
            resolution: 8,
            dtype: "f32".into(),
            algorithm_version: 1,
        };
        let key = CacheKey::new(&KeyInputs {
            source: Some([n as u8; 32]),
            prompt: "a photo of a cat.",
            level: NoiseLevel::GENIE_DEFAULT,
            seed: n,
            fingerprint: &fingerprint,
        });
        PlanEntry {
            key,
            source: format!("dogs/{n}.png").into(),
            source_class: "dog".into(),
            target: "cat".into(),
            prompt: "a photo of a cat.".into(),
            r: NoiseLevel::GENIE_DEFAULT,
            seed: n,
            variant: 0,
            source_hash: [n as u8; 32],
        }
    }

    #[test]
    fn source_ids_are_the_class_folder_and_file_name() {
        assert_eq!(source_id("data/train/cat/001.png"), Some("cat/001.png"));
        assert_eq!(source_id("/abs/cat/001.png"), Some("cat/001.png"));
        assert_eq!(source_id("cat/001.png"), Some("cat/001.png"));
        assert_eq!(source_id("C:\\d\\cat\\1.jpg"), Some("cat\\1.jpg"));
        assert_eq!(source_id("001.png"), None);
        assert_eq!(source_id("/001.png"), None);
        assert_eq!(source_id(""), None);
    }

    #[test]
    fn entries_group_into_pairs_by_source_target_and_variant() {
        let mut a = entry(1);
        let mut b = entry(2);
        b.source = a.source.clone();
        b.r = NoiseLevel::parse("0.5").unwrap();
        b.seed = a.seed;
        let mut c = entry(3);
        c.source = a.source.clone();
        c.seed = a.seed;
        c.variant = 1;
        a.variant = 0;
        let pairs = plan_pairs(&[a.clone(), b.clone(), c]);
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].levels.len(), 2);
        assert_eq!(pairs[0].levels[0].0, NoiseLevel::parse("0.5").unwrap());
        assert_eq!(pairs[0].key(NoiseLevel::GENIE_DEFAULT), Some(a.key));
        assert_eq!(pairs[1].variant, 1);
        assert_eq!(pairs[0].source_id(), Some("dogs/1.png"));
    }

    #[test]
    fn round_trip_is_sorted_and_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.jsonl");
        let mut entries: Vec<_> = (0..20).map(entry).collect();
        write_plan(&path, &mut entries.clone()).unwrap();
        let first = std::fs::read(&path).unwrap();
        entries.reverse();
        write_plan(&path, &mut entries).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), first);
        let back = read_plan(&path).unwrap();
        assert_eq!(back.len(), 20);
        assert!(back.windows(2).all(|w| w[0].key < w[1].key));
        assert!(String::from_utf8(first).unwrap().contains("\"r\":\"0.8\""));
    }

    #[test]
    fn bad_lines_and_duplicates_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.jsonl");
        let good = serde_json::to_string(&entry(1)).unwrap();
        std::fs::write(&path, format!("{good}\n{{\"key\": 3}}\n")).unwrap();
        let e = read_plan(&path).unwrap_err().to_string();
        assert!(e.contains("plan.jsonl:2:"), "{e}");
        std::fs::write(&path, format!("{good}\n\n{good}\n")).unwrap();
        assert!(matches!(
            read_plan(&path),
            Err(PlanError::Duplicate {
                line: 3,
                first: 1,
                ..
            })
        ));
        let bad_r = good.replace("\"0.8\"", "\"1.5\"");
        std::fs::write(&path, bad_r).unwrap();
        assert!(read_plan(&path).is_err());
        assert!(matches!(
            read_plan(&dir.path().join("missing.jsonl")),
            Err(PlanError::Io { .. })
        ));
    }
}
