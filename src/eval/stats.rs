//! [`MeanCi`]: the mean of per-episode accuracies and its 95 % confidence interval, as few-shot
//! papers report them.

use std::fmt;

/// Mean ± the half-width of its 95 % confidence interval (normal approximation:
/// 1.96 · s / √n, with s the sample standard deviation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MeanCi {
    /// The mean.
    pub mean: f64,
    /// Half-width of the interval (0 for fewer than two values).
    pub ci95: f64,
    /// Values averaged.
    pub n: usize,
}

impl MeanCi {
    /// The mean and interval of `values` (NaN mean for none).
    pub fn of(values: &[f64]) -> Self {
        let n = values.len();
        if n == 0 {
            return MeanCi {
                mean: f64::NAN,
                ci95: 0.0,
                n,
            };
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let ci95 = if n < 2 {
            0.0
        } else {
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            1.96 * var.sqrt() / (n as f64).sqrt()
        };
        MeanCi { mean, ci95, n }
    }
}

impl fmt::Display for MeanCi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2} ± {:.2}", self.mean, self.ci95)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_is_1_96_standard_errors() {
        // Sample sd of 1..=5 is √2.5; n = 5.
        let m = MeanCi::of(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(m.mean, 3.0);
        assert!((m.ci95 - 1.96 * 2.5f64.sqrt() / 5f64.sqrt()).abs() < 1e-12);
        assert_eq!(MeanCi::of(&[4.0]).ci95, 0.0);
        assert!(MeanCi::of(&[]).mean.is_nan());
        assert_eq!(MeanCi::of(&[1.0, 3.0]).to_string(), "2.00 ± 1.96");
    }
}
