//! Seeded Gaussian noise that is the same on every machine and device.
//!
//! ChaCha8 (value-stable across `rand_chacha` releases) feeds a Box–Muller transform that we
//! write ourselves, so the bits do not depend on a distribution crate's algorithm choices.
//! Changing this function changes every generated image: bump the engine's algorithm version.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// `len` standard-normal f32 values from `seed`.
pub fn gaussian(seed: u64, len: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(len + 1);
    while out.len() < len {
        // 53-bit uniforms in (0, 1]: never 0, so ln is finite.
        let u1 = ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = std::f64::consts::TAU * u2;
        out.push((radius * angle.cos()) as f32);
        out.push((radius * angle.sin()) as f32);
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_noise_and_prefix_stable() {
        let a = gaussian(7, 1000);
        assert_eq!(a, gaussian(7, 1000));
        assert_eq!(&a[..999], &gaussian(7, 999)[..]);
        assert_ne!(a, gaussian(8, 1000));
    }

    #[test]
    fn moments_are_standard_normal() {
        let x = gaussian(1, 200_000);
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = x
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
    }
}
