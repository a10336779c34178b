//! The per-entry manifest: what an entry's content is, how to verify it and how it was made.

use serde::{Deserialize, Serialize};

use crate::engine::{EngineFingerprint, NoiseLevel};

use super::key::CacheKey;

/// The manifest format this build writes and the newest it reads.
pub const MANIFEST_FORMAT: u32 = 1;

/// Largest manifest we read: real ones are about a kilobyte, so anything near this is garbage,
/// and the cap keeps a hostile file from making us allocate without bound.
pub(crate) const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// The cache stores PNG bytes; the extension lets people open content files directly.
pub(crate) const CONTENT_EXTENSION: &str = "png";

/// Hex digits of the content hash in a content file's name.
pub(crate) const HASH_PREFIX_LEN: usize = 16;

/// Largest content an entry may hold. Far above any PNG genie makes (a 16384² RGB image is
/// 805 MB raw), and it keeps a hostile manifest from making a reader allocate without bound.
pub const MAX_CONTENT_BYTES: u64 = 1 << 30;

/// How an entry was made. Stored in the manifest only: nothing here becomes a file name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    /// Class label of the target (for stats and reports).
    pub target: String,
    /// The prompt it was generated with.
    pub prompt: String,
    /// Stored as thousandths (`800` is r = 0.8), never as a float.
    #[serde(with = "level_as_thousandths")]
    pub level: NoiseLevel,
    /// The noise seed.
    pub seed: u64,
    /// Hex pixel hash of the preprocessed source; `None` for text-to-image.
    pub source: Option<String>,
    /// The engine that made it.
    pub fingerprint: EngineFingerprint,
    /// Image width.
    pub width: u32,
    /// Image height.
    pub height: u32,
}

/// The record that commits an entry: once it exists, the entry exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`] of the writer; a newer one is refused with a clear error.
    pub format: u32,
    /// The entry's key.
    pub key: CacheKey,
    /// File name of the content, relative to the store's folder for this key.
    pub content_file: String,
    /// blake3 of the content, 64 lowercase hex digits.
    pub content_blake3: String,
    /// Content bytes.
    pub content_len: u64,
    /// Seconds since the Unix epoch when the writer built the manifest (gc's notion of age).
    pub created_unix: u64,
    /// What the image is.
    pub meta: EntryMeta,
}

/// Why manifest bytes could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ManifestParseError {
    /// Written by a newer genie: not ours to judge or remove.
    Future { found: u32 },
    /// Truncated, garbled or semantically invalid.
    Invalid(String),
}

/// Only the version, read before the rest so that a newer layout is recognised as newer
/// rather than reported as garbage.
#[derive(Deserialize)]
struct FormatProbe {
    format: u32,
}

impl Manifest {
    /// The manifest that will commit `content` under `key` now, naming a content file of its
    /// own: `<key>.<hash16>.<token16>.png`.
    pub(crate) fn for_new_content(key: &CacheKey, content: &[u8], meta: &EntryMeta) -> Manifest {
        let content_blake3 = blake3::hash(content).to_hex().to_string();
        Manifest {
            format: MANIFEST_FORMAT,
            key: *key,
            content_file: format!(
                "{key}.{}.{}.{CONTENT_EXTENSION}",
                &content_blake3[..HASH_PREFIX_LEN],
                super::clock::unique_token()
            ),
            content_blake3,
            content_len: content.len() as u64,
            created_unix: super::unix_now(),
            meta: meta.clone(),
        }
    }

    /// The manifest's bytes as stores write them.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, super::CacheError> {
        self.to_json()
            .map_err(|source| super::CacheError::ManifestEncode {
                key: self.key,
                source,
            })
    }

    pub(crate) fn parse(bytes: &[u8]) -> Result<Manifest, ManifestParseError> {
        let probe: FormatProbe = serde_json::from_slice(bytes)
            .map_err(|e| ManifestParseError::Invalid(e.to_string()))?;
        if probe.format > MANIFEST_FORMAT {
            return Err(ManifestParseError::Future {
                found: probe.format,
            });
        }
        if probe.format == 0 {
            return Err(ManifestParseError::Invalid(
                "format 0 does not exist".into(),
            ));
        }
        let manifest: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| ManifestParseError::Invalid(e.to_string()))?;
        if manifest.content_len > MAX_CONTENT_BYTES {
            return Err(ManifestParseError::Invalid(format!(
                "content_len {} is above the limit of {MAX_CONTENT_BYTES} bytes",
                manifest.content_len
            )));
        }
        if manifest.content_hash().is_none() {
            return Err(ManifestParseError::Invalid(format!(
                "content_blake3 {:?} is not 64 lowercase hex digits",
                manifest.content_blake3
            )));
        }
        Ok(manifest)
    }

    pub(crate) fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec_pretty(self)
    }

    /// The content hash, if `content_blake3` is well formed.
    pub fn content_hash(&self) -> Option<blake3::Hash> {
        let hex = &self.content_blake3;
        let lowercase = hex.len() == 64
            && hex
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
        lowercase
            .then(|| blake3::Hash::from_hex(hex).ok())
            .flatten()
    }
}

/// serde for [`NoiseLevel`] as its integer thousandths, refusing values outside 1..=1000.
mod level_as_thousandths {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::engine::NoiseLevel;

    pub fn serialize<S: Serializer>(level: &NoiseLevel, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(level.thousandths())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<NoiseLevel, D::Error> {
        let thousandths = u16::deserialize(deserializer)?;
        NoiseLevel::from_thousandths(thousandths).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "noise level {thousandths} is outside 1..=1000 thousandths"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            key: CacheKey::from_bytes([3; 32]),
            content_file: "x.png".into(),
            content_blake3: blake3::hash(b"content").to_hex().to_string(),
            content_len: 7,
            created_unix: 1_700_000_000,
            meta: EntryMeta {
                target: "cat".into(),
                prompt: "a photo of a cat.".into(),
                level: NoiseLevel::GENIE_DEFAULT,
                seed: 9,
                source: None,
                fingerprint: EngineFingerprint {
                    model: "m".into(),
                    scheduler: "ddim".into(),
                    steps: 50,
                    guidance: "7.5".into(),
                    resolution: 512,
                    dtype: "f32".into(),
                    algorithm_version: 1,
                },
                width: 512,
                height: 512,
            },
        }
    }

    #[test]
    fn round_trips_and_stores_the_level_as_an_integer() {
        let manifest = sample();
        let json = manifest.to_json().expect("serializes");
        let text = String::from_utf8(json.clone()).expect("utf-8");
        assert!(text.contains("\"level\": 800"), "{text}");
        assert_eq!(Manifest::parse(&json), Ok(manifest));
    }

    #[test]
    fn future_garbage_and_invalid_fields_are_told_apart() {
        let mut value = serde_json::to_value(sample()).expect("to value");
        value["format"] = 99.into();
        let future = serde_json::to_vec(&value).expect("to vec");
        assert_eq!(
            Manifest::parse(&future),
            Err(ManifestParseError::Future { found: 99 })
        );

        let json = sample().to_json().expect("serializes");
        assert!(matches!(
            Manifest::parse(&json[..json.len() / 2]),
            Err(ManifestParseError::Invalid(_))
        ));

        let mut value = serde_json::to_value(sample()).expect("to value");
        value["meta"]["level"] = 1001.into();
        let bad_level = serde_json::to_vec(&value).expect("to vec");
        assert!(matches!(
            Manifest::parse(&bad_level),
            Err(ManifestParseError::Invalid(_))
        ));

        let mut value = serde_json::to_value(sample()).expect("to value");
        value["content_blake3"] = "ABC".into();
        let bad_hash = serde_json::to_vec(&value).expect("to vec");
        assert!(matches!(
            Manifest::parse(&bad_hash),
            Err(ManifestParseError::Invalid(_))
        ));
    }
}
