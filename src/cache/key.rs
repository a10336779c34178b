//! Cache keys: the blake3 hash of a canonical, versioned encoding of everything that changes an image's pixels.

use std::fmt;
use std::str::FromStr;

use image::RgbImage;

use crate::engine::{EngineFingerprint, NoiseLevel};

/// Domain separation: no other blake3 use in genie can produce the same hash by accident.
const KEY_DOMAIN: &[u8] = b"genie-cache-key\0";
/// Pair keys are hashed apart from image keys, so no pair key is ever an image key.
const PAIR_DOMAIN: &[u8] = b"genie-pair-key\0";

/// Version of the key encoding. Bump it when the encoding changes: every old key then misses
/// instead of silently meaning something else.
pub const KEY_ENCODING_VERSION: u32 = 1;

/// The identity of one cached image: equal keys mean equal pixels.
///
/// Shown and stored as 64 lowercase hex digits; that hex (never a class name, prompt or path)
/// is the only part of a key that ever reaches a file name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey([u8; 32]);

/// Everything a key is made of, borrowed from the caller.
#[derive(Clone, Copy, Debug)]
pub struct KeyInputs<'a> {
    /// [`crate::image_io::pixel_hash`] of the *preprocessed* source, so the same picture saved in
    /// another file format is the same source. `None` only for text-to-image (r = 1).
    pub source: Option<[u8; 32]>,
    /// The full prompt text, exactly as given to the text encoder.
    pub prompt: &'a str,
    /// The noise level r.
    pub level: NoiseLevel,
    /// The noise seed.
    pub seed: u64,
    /// The engine: model, sampler, steps, guidance, size, dtype, algorithm.
    pub fingerprint: &'a EngineFingerprint,
}

/// A string that is not 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cache key {0:?}: expected 64 lowercase hex digits")]
pub struct KeyParseError(pub String);

impl CacheKey {
    /// Hashes the canonical encoding of `inputs`.
    ///
    /// A text-to-image level (r = 1) never sees its source, so its key leaves the source out
    /// whatever `inputs.source` holds: every caller gets the same key for the same image (this
    /// rule lives here alone).
    ///
    /// Every field is framed (strings by length, options by a tag byte, integers at fixed width,
    /// little-endian) so that no two different inputs share an encoding.
    pub fn new(inputs: &KeyInputs<'_>) -> Self {
        Self::encode(KEY_DOMAIN, inputs, true)
    }

    /// The key of the (source, target) pair `inputs` belongs to: everything in the image key
    /// but the level, so every level of a pair shares it. Side records such as GeNIe-Ada's
    /// choice are filed under it.
    pub fn pair(inputs: &KeyInputs<'_>) -> Self {
        Self::encode(PAIR_DOMAIN, inputs, false)
    }

    fn encode(domain: &[u8], inputs: &KeyInputs<'_>, with_level: bool) -> Self {
        let mut enc = KeyEncoder(blake3::Hasher::new());
        enc.bytes(domain);
        enc.u32(KEY_ENCODING_VERSION);

        // Destructured without `..` so that a new field in either struct fails to compile here
        // until someone decides how it enters the key.
        let KeyInputs {
            source,
            prompt,
            level,
            seed,
            fingerprint,
        } = *inputs;
        let source = source.filter(|_| !(with_level && level.is_text_to_image()));
        match source {
            None => enc.u8(0),
            Some(hash) => {
                enc.u8(1);
                enc.bytes(&hash);
            }
        }
        enc.str(prompt);
        if with_level {
            enc.u16(level.thousandths());
        }
        enc.u64(seed);

        let EngineFingerprint {
            model,
            scheduler,
            steps,
            guidance,
            resolution,
            dtype,
            algorithm_version,
        } = fingerprint;
        enc.str(model);
        enc.str(scheduler);
        enc.u32(*steps);
        enc.str(guidance);
        enc.u32(*resolution);
        enc.str(dtype);
        enc.u32(*algorithm_version);

        CacheKey(*enc.0.finalize().as_bytes())
    }

    /// A key from its 32 bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        CacheKey(bytes)
    }

    /// The key's 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut hex = String::with_capacity(64);
        for byte in self.0 {
            hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
            hex.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
        }
        hex
    }

    /// Parses exactly 64 lowercase hex digits (the only spelling [`CacheKey::to_hex`] writes, so
    /// that one key never has two file names).
    pub fn from_hex(hex: &str) -> Result<Self, KeyParseError> {
        fn digit(c: u8) -> Option<u8> {
            match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                _ => None,
            }
        }
        let bad = || KeyParseError(hex.to_string());
        let raw = hex.as_bytes();
        if raw.len() != 64 {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        for (out, pair) in bytes.iter_mut().zip(raw.chunks_exact(2)) {
            *out = (digit(pair[0]).ok_or_else(bad)? << 4) | digit(pair[1]).ok_or_else(bad)?;
        }
        Ok(CacheKey(bytes))
    }

    /// Which of `shards` buckets this key belongs to: the first 8 bytes, little-endian, modulo
    /// `shards` (0 is treated as 1, so there is always a bucket).
    pub fn shard(&self, shards: u32) -> u32 {
        let mut head = [0u8; 8];
        head.copy_from_slice(&self.0[..8]);
        (u64::from_le_bytes(head) % u64::from(shards.max(1))) as u32
    }
}

/// The `source` field of [`KeyInputs`] for a preprocessed source image.
pub fn source_hash(preprocessed: &RgbImage) -> [u8; 32] {
    *crate::image_io::pixel_hash(preprocessed).as_bytes()
}

/// Writes the framed fields into the hash.
struct KeyEncoder(blake3::Hasher);

impl KeyEncoder {
    fn bytes(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn u8(&mut self, v: u8) {
        self.0.update(&[v]);
    }
    fn u16(&mut self, v: u16) {
        self.0.update(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.update(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.update(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.0.update(s.as_bytes());
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", self.to_hex())
    }
}

impl FromStr for CacheKey {
    type Err = KeyParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CacheKey::from_hex(s)
    }
}

impl serde::Serialize for CacheKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for CacheKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let hex = String::deserialize(deserializer)?;
        CacheKey::from_hex(&hex).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Owned key inputs, so proptest can generate and mutate them.
    #[derive(Clone, Debug)]
    struct OwnedInputs {
        source: Option<[u8; 32]>,
        prompt: String,
        level: u16,
        seed: u64,
        fingerprint: EngineFingerprint,
    }

    impl OwnedInputs {
        fn key(&self) -> CacheKey {
            CacheKey::new(&KeyInputs {
                source: self.source,
                prompt: &self.prompt,
                level: NoiseLevel::from_thousandths(self.level).expect("generated level is valid"),
                seed: self.seed,
                fingerprint: &self.fingerprint,
            })
        }
    }

    fn fixed_inputs() -> OwnedInputs {
        OwnedInputs {
            source: Some([7; 32]),
            prompt: "a photo of a tabby cat.".into(),
            level: 800,
            seed: 42,
            fingerprint: EngineFingerprint {
                model: "runwayml/stable-diffusion-v1-5@main".into(),
                scheduler: "dpm-solver++(order=2)".into(),
                steps: 50,
                guidance: "7.5".into(),
                resolution: 512,
                dtype: "f16".into(),
                algorithm_version: 1,
            },
        }
    }

    fn arb_inputs() -> impl Strategy<Value = OwnedInputs> {
        (
            proptest::option::of(any::<[u8; 32]>()),
            ".{0,40}",
            1u16..=1000,
            any::<u64>(),
            (".{0,12}", ".{0,12}", any::<u32>(), ".{0,6}"),
            (any::<u32>(), ".{0,6}", any::<u32>()),
        )
            .prop_map(
                |(source, prompt, level, seed, (model, scheduler, steps, guidance), tail)| {
                    let (resolution, dtype, algorithm_version) = tail;
                    OwnedInputs {
                        source,
                        prompt,
                        level,
                        seed,
                        fingerprint: EngineFingerprint {
                            model,
                            scheduler,
                            steps,
                            guidance,
                            resolution,
                            dtype,
                            algorithm_version,
                        },
                    }
                },
            )
    }

    /// The fields of the key, one per mutation kind.
    const FIELD_COUNT: usize = 11;

    /// Changes exactly one field (chosen by `field`) to a different value derived from `delta`.
    fn mutate(inputs: &mut OwnedInputs, field: usize, delta: u64) {
        let small = (delta % 997) as u32 + 1; // never 0, so integers always change
        let fp = &mut inputs.fingerprint;
        match field {
            0 => {
                inputs.source = match inputs.source {
                    None => Some([delta as u8; 32]),
                    Some(mut hash) => {
                        hash[(delta % 32) as usize] ^= 1 << (delta % 8);
                        Some(hash)
                    }
                }
            }
            1 => inputs.prompt.push(char::from(b'a' + (delta % 26) as u8)),
            2 => inputs.level = (inputs.level - 1 + small as u16 % 999 + 1) % 1000 + 1,
            3 => inputs.seed = inputs.seed.wrapping_add(u64::from(small)),
            4 => fp.model.push('x'),
            5 => fp.scheduler.push('x'),
            6 => fp.steps = fp.steps.wrapping_add(small),
            7 => fp.guidance.push('0'),
            8 => fp.resolution = fp.resolution.wrapping_add(small),
            9 => fp.dtype.push('x'),
            10 => fp.algorithm_version = fp.algorithm_version.wrapping_add(small),
            _ => unreachable!("field index is generated below FIELD_COUNT"),
        }
    }

    proptest! {
        #[test]
        fn changing_any_one_field_changes_the_key(inputs in arb_inputs(), delta in any::<u64>()) {
            let key = inputs.key();
            for field in 0..FIELD_COUNT {
                let mut changed = inputs.clone();
                mutate(&mut changed, field, delta);
                if field == 0 && inputs.level == 1000 {
                    // Text-to-image keys leave the source out.
                    prop_assert_eq!(key, changed.key());
                    continue;
                }
                prop_assert_ne!(key, changed.key(), "field {} did not change the key", field);
            }
        }

        #[test]
        fn equal_inputs_give_equal_keys(inputs in arb_inputs()) {
            prop_assert_eq!(inputs.key(), inputs.clone().key());
        }

        #[test]
        fn hex_round_trips(bytes in any::<[u8; 32]>()) {
            let key = CacheKey::from_bytes(bytes);
            prop_assert_eq!(CacheKey::from_hex(&key.to_hex()), Ok(key));
            prop_assert!(key.shard(16) < 16);
        }
    }

    #[test]
    fn every_field_changes_the_key_of_fixed_inputs() {
        let base = fixed_inputs();
        for field in 0..FIELD_COUNT {
            let mut changed = base.clone();
            mutate(&mut changed, field, 3);
            assert_ne!(base.key(), changed.key(), "field {field}");
        }
    }

    #[test]
    fn strings_are_framed_so_text_cannot_move_between_fields() {
        let mut a = fixed_inputs();
        a.fingerprint.model = "ab".into();
        a.fingerprint.scheduler = "c".into();
        let mut b = fixed_inputs();
        b.fingerprint.model = "a".into();
        b.fingerprint.scheduler = "bc".into();
        assert_ne!(a.key(), b.key());
    }

    #[test]
    fn text_to_image_differs_from_a_zero_source() {
        let mut a = fixed_inputs();
        a.source = None;
        let mut b = fixed_inputs();
        b.source = Some([0; 32]);
        assert_ne!(a.key(), b.key());
    }

    /// Text-to-image never sees its source: whatever source the caller passes, the key is the
    /// one without it; at any other level the source counts.
    #[test]
    fn text_to_image_keys_leave_the_source_out() {
        let mut with = fixed_inputs();
        with.level = 1000;
        let mut without = with.clone();
        without.source = None;
        assert_eq!(with.key(), without.key());
        with.level = 999;
        without.level = 999;
        assert_ne!(with.key(), without.key());
    }

    /// Pins the encoding: if this changes, every existing cache silently misses, so a change
    /// here must come with a bump of KEY_ENCODING_VERSION.
    #[test]
    fn key_of_fixed_inputs_is_stable() {
        assert_eq!(
            fixed_inputs().key().to_hex(),
            "87a9cc4658b5448142a7e061d40b7505094b6ad6b1d485ab94363123c015147f"
        );
    }

    #[test]
    fn pair_keys_ignore_only_the_level_and_never_equal_image_keys() {
        let base = fixed_inputs();
        let pair = |o: &OwnedInputs| {
            CacheKey::pair(&KeyInputs {
                source: o.source,
                prompt: &o.prompt,
                level: NoiseLevel::from_thousandths(o.level).unwrap(),
                seed: o.seed,
                fingerprint: &o.fingerprint,
            })
        };
        for field in 0..FIELD_COUNT {
            let mut changed = fixed_inputs();
            mutate(&mut changed, field, 7);
            let same = pair(&changed) == pair(&base);
            assert_eq!(same, field == 2, "field {field}");
        }
        assert_ne!(pair(&base), base.key());
    }

    #[test]
    fn from_hex_refuses_other_spellings() {
        let hex = fixed_inputs().key().to_hex();
        assert!(CacheKey::from_hex(&hex.to_uppercase()).is_err());
        assert!(CacheKey::from_hex(&hex[..63]).is_err());
        assert!(CacheKey::from_hex(&format!("{hex}0")).is_err());
        assert!(CacheKey::from_hex(&hex.replace(|c: char| c.is_ascii_digit(), "g")).is_err());
        assert!(CacheKey::from_hex("").is_err());
    }

    #[test]
    fn shard_uses_the_first_eight_bytes_little_endian() {
        let mut bytes = [0xff; 32];
        bytes[..8].copy_from_slice(&10u64.to_le_bytes());
        let key = CacheKey::from_bytes(bytes);
        assert_eq!(key.shard(4), 2);
        assert_eq!(key.shard(0), 0);
        assert_eq!(key.shard(1), 0);
    }

    #[test]
    fn serde_uses_hex() {
        let key = fixed_inputs().key();
        let json = serde_json::to_string(&key).expect("a key serializes");
        assert_eq!(json, format!("\"{key}\""));
        let back: CacheKey = serde_json::from_str(&json).expect("a key deserializes");
        assert_eq!(back, key);
        assert!(serde_json::from_str::<CacheKey>("\"zz\"").is_err());
    }
}
