//! Pre-warm shards: for any shard count, every key of a plan belongs to exactly one shard.

use genie::cache::{CacheKey, KeyInputs};
use genie::warm::Shard;
use genie::{EngineFingerprint, NoiseLevel};
use proptest::prelude::*;

fn key(source: [u8; 32], seed: u64) -> CacheKey {
    CacheKey::new(&KeyInputs {
        source: Some(source),
        prompt: "a photo of a cat.",
        level: NoiseLevel::GENIE_DEFAULT,
        seed,
        fingerprint: &EngineFingerprint {
            model: "m".into(),
            scheduler: "dpm".into(),
            steps: 50,
            guidance: "7.5".into(),
            resolution: 512,
            dtype: "f16".into(),
            algorithm_version: 1,
        },
    })
}

proptest! {
    #[test]
    fn shards_partition_a_plan_exactly(
        count in 1u32..64,
        sources in proptest::collection::vec(any::<[u8; 32]>(), 1..200),
    ) {
        let keys: Vec<CacheKey> = sources.iter().enumerate().map(|(i, s)| key(*s, i as u64)).collect();
        let mut owned = vec![0usize; keys.len()];
        for index in 0..count {
            let shard = Shard::new(index, count).unwrap();
            for (i, k) in keys.iter().enumerate() {
                if shard.owns(k) {
                    owned[i] += 1;
                }
            }
        }
        prop_assert!(owned.iter().all(|&n| n == 1));
    }
}
