//! Per-pair noise seeds: fresh noise for every (source image, target class, variant), the same
//! noise for every level of one pair, and the same seed on every run and machine.
//!
//! Every path that names a hard negative — the batcher, [`crate::loader::OfflinePlan`], `genie
//! warm plan`, `genie generate` and `genie sheet` — derives its seed here (through
//! [`crate::generator::KeySpace::pair_seed`]), so a pre-warmed cache and a training run agree on
//! every key. The run seed stays the one knob a user turns; the rest is hashed in so that two
//! sources of one target, or two variants of one pair, never start from the same noise (at
//! r ≥ 0.8 the noise dominates the picture, so shared noise would mean shared artefacts).
//! All levels of one pair keep one seed: GeNIe-Ada compares points of one trajectory.

/// Domain separation from every other blake3 use in genie (cache keys, pixel hashes).
const SEED_DOMAIN: &[u8] = b"genie-pair-seed\0";

/// Version of the derivation. Bumping it changes every seed, hence every key.
pub const SEED_DERIVATION_VERSION: u32 = 1;

/// The noise seed of one hard-negative trajectory.
///
/// - `run_seed`: the user's seed (`--seed`, [`crate::policy::PolicyConfig::seed`]);
/// - `source`: the pixel hash of the preprocessed source, `None` for text-to-image requests
///   without a source;
/// - `target`: the target class's *id* (its folder name or label), not its display name: two
///   classes that share a name (ImageNet has two "crane" synsets) stay two trajectories;
/// - `variant`: 0, 1, … for several hard negatives of the same (source, target).
///
/// Every field is framed (tag bytes, lengths, fixed-width integers), so distinct inputs never
/// share an encoding.
pub fn pair_seed(run_seed: u64, source: Option<&[u8; 32]>, target: &str, variant: u32) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(SEED_DOMAIN);
    hasher.update(&SEED_DERIVATION_VERSION.to_le_bytes());
    hasher.update(&run_seed.to_le_bytes());
    match source {
        None => {
            hasher.update(&[0]);
        }
        Some(hash) => {
            hasher.update(&[1]);
            hasher.update(hash);
        }
    }
    hasher.update(&(target.len() as u64).to_le_bytes());
    hasher.update(target.as_bytes());
    hasher.update(&variant.to_le_bytes());
    let digest = hasher.finalize();
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_le_bytes(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_input_changes_the_seed_and_equal_inputs_do_not() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        let base = pair_seed(0, Some(&a), "cat", 0);
        assert_eq!(base, pair_seed(0, Some(&a), "cat", 0));
        let variations = [
            pair_seed(1, Some(&a), "cat", 0),
            pair_seed(0, Some(&b), "cat", 0),
            pair_seed(0, None, "cat", 0),
            pair_seed(0, Some(&a), "dog", 0),
            pair_seed(0, Some(&a), "cat", 1),
        ];
        let mut seen: HashSet<u64> = HashSet::from([base]);
        for v in variations {
            assert!(seen.insert(v), "a changed input kept the seed {v}");
        }
    }

    #[test]
    fn framing_keeps_shifted_fields_apart() {
        // "ab" + variant vs "a" + a variant whose bytes start with 'b' must differ.
        let s = pair_seed(0, None, "ab", 0);
        let t = pair_seed(0, None, "a", u32::from(b'b'));
        assert_ne!(s, t);
    }

    #[test]
    fn many_pairs_get_distinct_seeds() {
        let mut seen = HashSet::new();
        for source in 0..200u8 {
            for variant in 0..5 {
                assert!(seen.insert(pair_seed(7, Some(&[source; 32]), "fox", variant)));
            }
        }
    }
}
