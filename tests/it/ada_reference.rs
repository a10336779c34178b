//! `genie::ada` against a plainly written, independent reference of Algorithm 1 on thousands of
//! random trajectories, including planted ties and realistic "semantic switch" trajectories.

use genie::ada::{self, AdaError};
use genie::NoiseLevel;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// Algorithm 1 as the paper and the official notebook write it, sharing no code with `genie::ada`.
/// Returns (m*, d) with m* 0-based.
fn reference(source: &[f32], targets: &[Vec<f32>], generated: &[Vec<f32>]) -> (usize, Vec<f64>) {
    fn normalise(v: &[f32]) -> Vec<f64> {
        let mut sq = 0.0f64;
        for x in v {
            sq += (*x as f64) * (*x as f64);
        }
        let n = sq.sqrt();
        v.iter().map(|x| *x as f64 / n).collect()
    }
    let zs = normalise(source);
    let dim = zs.len();
    let mut zt = vec![0.0f64; dim];
    for t in targets {
        let t = normalise(t);
        for i in 0..dim {
            zt[i] += t[i] / targets.len() as f64;
        }
    }
    let mut denom = 0.0f64;
    for i in 0..dim {
        denom += (zt[i] - zs[i]) * (zt[i] - zs[i]);
    }
    let denom = denom.sqrt();
    let mut d = Vec::new();
    for g in generated {
        let zr = normalise(g);
        let mut num = 0.0f64;
        for i in 0..dim {
            num += (zr[i] - zs[i]) * (zt[i] - zs[i]);
        }
        d.push(num / denom);
    }
    // m* = argmax over m in [2, M] (1-based) of |d_m − d_{m−1}|, first maximum.
    let mut best_m = 2usize;
    let mut best = f64::NEG_INFINITY;
    for m in 2..=d.len() {
        let jump = (d[m - 1] - d[m - 2]).abs();
        if jump > best {
            best = jump;
            best_m = m;
        }
    }
    (best_m - 1, d)
}

fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    // Box–Muller on two uniforms in (0, 1].
    let u1 = (rng.next_u32() as f64 + 1.0) / (u32::MAX as f64 + 1.0);
    let u2 = rng.next_u32() as f64 / (u32::MAX as f64 + 1.0);
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

fn random_vec(rng: &mut ChaCha8Rng, dim: usize) -> Vec<f32> {
    (0..dim).map(|_| gaussian(rng)).collect()
}

fn levels(count: usize) -> Vec<NoiseLevel> {
    (0..count)
        .map(|i| NoiseLevel::from_thousandths((100 + 150 * i) as u16).unwrap())
        .collect()
}

/// A trajectory that moves from the source towards the target with a sudden switch at a random
/// level, plus noise: the shape Algorithm 1 is designed for.
fn switch_trajectory(
    rng: &mut ChaCha8Rng,
    source: &[f32],
    target: &[f32],
    count: usize,
) -> Vec<Vec<f32>> {
    let switch = 1 + (rng.next_u32() as usize % (count - 1));
    (0..count)
        .map(|m| {
            let w = if m >= switch { 0.9 } else { 0.1 } + 0.02 * m as f32;
            source
                .iter()
                .zip(target)
                .map(|(s, t)| (1.0 - w) * s + w * t + 0.05 * gaussian(rng))
                .collect()
        })
        .collect()
}

fn check(
    rng_seed: u64,
    source: &[f32],
    targets: &[Vec<f32>],
    generated: &[Vec<f32>],
    levels: &[NoiseLevel],
) {
    let (expected_m, expected_d) = reference(source, targets, generated);
    let proto = ada::prototype(targets).unwrap();
    let got = ada::select(levels, source, &proto, generated).unwrap();
    assert_eq!(got.index, expected_m, "trajectory {rng_seed}: m* differs");
    assert_eq!(got.level, levels[expected_m]);
    assert_eq!(got.curve.len(), expected_d.len());
    for (a, b) in got.curve.iter().zip(&expected_d) {
        assert!(
            (a - b).abs() <= 1e-9 * (1.0 + b.abs()),
            "trajectory {rng_seed}: d_m {a} vs {b}"
        );
    }
}

#[test]
fn matches_the_reference_on_random_trajectories() {
    let mut checked = 0;
    for seed in 0..1500u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let dim = 2 + (rng.next_u32() as usize % 64);
        let count = 2 + (rng.next_u32() as usize % 6);
        let source = random_vec(&mut rng, dim);
        let n_targets = 1 + (rng.next_u32() as usize % 5);
        let targets: Vec<Vec<f32>> = (0..n_targets).map(|_| random_vec(&mut rng, dim)).collect();
        let generated: Vec<Vec<f32>> = if seed % 2 == 0 {
            (0..count).map(|_| random_vec(&mut rng, dim)).collect()
        } else {
            switch_trajectory(&mut rng, &source, &targets[0], count)
        };
        check(seed, &source, &targets, &generated, &levels(count));
        checked += 1;
    }
    assert!(checked >= 1000);
}

#[test]
fn matches_the_reference_on_planted_ties() {
    // Repeated embeddings make equal jumps; both implementations must take the first maximum.
    for seed in 0..200u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(10_000 + seed);
        let dim = 8;
        let source = random_vec(&mut rng, dim);
        let targets = vec![random_vec(&mut rng, dim)];
        let a = random_vec(&mut rng, dim);
        let b = random_vec(&mut rng, dim);
        // a, b, a, b, a: jumps |d_b − d_a| four times, exactly equal.
        let generated = vec![a.clone(), b.clone(), a.clone(), b, a];
        let proto = ada::prototype(&targets).unwrap();
        let got = ada::select(&levels(5), &source, &proto, &generated).unwrap();
        assert_eq!(got.index, 1);
        check(seed, &source, &targets, &generated, &levels(5));
    }
}

#[test]
fn the_sweep_never_chooses_its_lowest_level() {
    let sweep = NoiseLevel::ADA_SWEEP;
    for seed in 0..300u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(20_000 + seed);
        let source = random_vec(&mut rng, 16);
        let target = random_vec(&mut rng, 16);
        let generated = switch_trajectory(&mut rng, &source, &target, 5);
        let proto = ada::prototype(&[target]).unwrap();
        let got = ada::select(&sweep, &source, &proto, &generated).unwrap();
        assert!(got.level.thousandths() >= 600);
    }
}

#[test]
fn degenerate_pairs_never_panic() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let source = random_vec(&mut rng, 4);
    let generated = vec![random_vec(&mut rng, 4); 5];
    // Target prototype identical to the source.
    let proto = ada::prototype(std::slice::from_ref(&source)).unwrap();
    assert!(matches!(
        ada::select(&NoiseLevel::ADA_SWEEP, &source, &proto, &generated),
        Err(AdaError::DegenerateDirection { .. })
    ));
    // Infinite value in a generated embedding.
    let mut bad = generated.clone();
    bad[3][1] = f32::INFINITY;
    let proto = ada::prototype(&[random_vec(&mut rng, 4)]).unwrap();
    assert!(matches!(
        ada::select(&NoiseLevel::ADA_SWEEP, &source, &proto, &bad),
        Err(AdaError::NonFinite { .. })
    ));
}
