//! Side records kept beside the images: GeNIe-Ada's choice of r for a (source, target) pair.
//!
//! A record is small, advisory JSON: the last writer wins and a record that does not parse is
//! treated as absent (with a warning), never as an error, because images never depend on it.
//! It is filed under the pair's key ([`super::CacheKey::pair`]), which is made of everything in
//! the pair's image keys except the level.

use serde::{Deserialize, Serialize};

use crate::engine::NoiseLevel;

/// The record format this build writes and reads.
pub const RECORD_FORMAT: u32 = 1;

/// Largest record we read: real ones are a few hundred bytes.
pub(crate) const MAX_RECORD_BYTES: u64 = 1 << 16;

/// GeNIe-Ada's latest choice for one pair: the levels scored, the projection curve d_m over them
/// and the chosen level r* (none when the pair could not be scored).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdaChoiceRecord {
    /// The record's format version.
    pub format: u32,
    /// The target class.
    pub target: String,
    /// Levels in thousandths, ascending.
    pub levels: Vec<u16>,
    /// d_m for each level (same length as `levels`).
    pub curve: Vec<f64>,
    /// r* in thousandths; one of `levels`.
    pub chosen: Option<u16>,
    /// The live model's snapshot version that made the choice.
    pub model_version: u64,
    /// When it was written (seconds since the Unix epoch).
    pub created_unix: u64,
}

impl AdaChoiceRecord {
    /// A record of a choice made now.
    pub fn new(
        target: impl Into<String>,
        levels: &[NoiseLevel],
        curve: &[f64],
        chosen: Option<NoiseLevel>,
        model_version: u64,
    ) -> Self {
        AdaChoiceRecord {
            format: RECORD_FORMAT,
            target: target.into(),
            levels: levels.iter().map(|l| l.thousandths()).collect(),
            curve: curve.to_vec(),
            chosen: chosen.map(NoiseLevel::thousandths),
            model_version,
            created_unix: super::unix_now(),
        }
    }

    /// The levels as [`NoiseLevel`]s.
    pub fn noise_levels(&self) -> Vec<NoiseLevel> {
        self.levels
            .iter()
            .filter_map(|&t| NoiseLevel::from_thousandths(t))
            .collect()
    }

    /// r*, when the pair was scored.
    pub fn chosen_level(&self) -> Option<NoiseLevel> {
        self.chosen.and_then(NoiseLevel::from_thousandths)
    }

    /// Parses a stored record; `Err` says why it is unusable.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, String> {
        let record: AdaChoiceRecord = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if record.format != RECORD_FORMAT {
            return Err(format!(
                "record format {} is not {RECORD_FORMAT}",
                record.format
            ));
        }
        let levels_valid = record.levels.windows(2).all(|w| w[0] < w[1])
            && record
                .levels
                .iter()
                .all(|&t| NoiseLevel::from_thousandths(t).is_some());
        if !levels_valid || record.curve.len() != record.levels.len() {
            return Err("levels are not ascending valid levels, one curve value each".into());
        }
        if record.chosen.is_some_and(|c| !record.levels.contains(&c)) {
            return Err("the chosen level is not one of the levels".into());
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_inconsistent_records() {
        let levels = NoiseLevel::ADA_SWEEP;
        let curve = [0.1, 0.2, 0.7, 0.8, 0.9];
        let record = AdaChoiceRecord::new("fox", &levels, &curve, Some(levels[2]), 3);
        let json = serde_json::to_vec(&record).unwrap();
        let back = AdaChoiceRecord::parse(&json).unwrap();
        assert_eq!(back, record);
        assert_eq!(back.chosen_level(), Some(levels[2]));
        assert_eq!(back.noise_levels(), levels.to_vec());

        let mut bad = record.clone();
        bad.curve.pop();
        assert!(AdaChoiceRecord::parse(&serde_json::to_vec(&bad).unwrap()).is_err());
        let mut bad = record.clone();
        bad.chosen = Some(550);
        assert!(AdaChoiceRecord::parse(&serde_json::to_vec(&bad).unwrap()).is_err());
        let mut bad = record;
        bad.levels.swap(0, 1);
        assert!(AdaChoiceRecord::parse(&serde_json::to_vec(&bad).unwrap()).is_err());
        assert!(AdaChoiceRecord::parse(b"{").is_err());
    }
}
