//! [`LogisticRegression`]: the few-shot probe, a multinomial logistic regression with an L2
//! penalty fitted by L-BFGS — the objective and solver of scikit-learn's `LogisticRegression`
//! (checked against it in the tests).
//!
//! It minimises Σᵢ −log softmax(W xᵢ + b)[yᵢ] + ‖W‖² / (2C) over W (classes × dim) and b; the
//! intercepts are not penalised. [`LogisticRegression::fit_mixed`] takes mixed targets instead
//! (MixUp's and CutMix's images, λ of one class and 1 − λ of another): the loss is then the
//! cross-entropy Σᵢ Σⱼ −tᵢⱼ log softmax(W xᵢ + b)ⱼ. Starting from zero, every step keeps Σ b = 0 (each gradient's
//! intercept part sums to zero), as scikit-learn's do, so the intercepts are comparable too.

use argmin::core::{CostFunction, Error as ArgminError, Executor, Gradient, State};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;

/// A sample's target for [`LogisticRegression::fit_mixed`]: (class, weight) pairs whose weights
/// sum to 1 (`[(y, 1.0)]` is an ordinary label).
pub type MixedTarget = Vec<(usize, f64)>;

/// The probe's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogisticRegression {
    /// Inverse regularisation strength (scikit-learn's `C`, default 1).
    pub c: f64,
    /// L-BFGS iterations at most.
    pub max_iters: u64,
    /// Stop when the gradient's norm (of the objective divided by the number of samples) is
    /// below this.
    pub tolerance: f64,
}

impl Default for LogisticRegression {
    fn default() -> Self {
        LogisticRegression {
            c: 1.0,
            max_iters: 1000,
            tolerance: 1e-8,
        }
    }
}

/// Why a probe cannot be fitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LogRegError {
    /// No samples.
    #[error("no samples to fit")]
    Empty,
    /// Feature vectors and labels differ in number.
    #[error("{features} feature vectors but {labels} labels")]
    Lengths {
        /// Feature vectors.
        features: usize,
        /// Labels.
        labels: usize,
    },
    /// A feature vector's length differs from the first's.
    #[error("feature vector {index} has {got} values, the first has {expected}")]
    Dimension {
        /// The vector.
        index: usize,
        /// Its length.
        got: usize,
        /// The first's length.
        expected: usize,
    },
    /// A label not below the class count.
    #[error("label {label} of sample {index} is not below the {classes} classes")]
    Label {
        /// The sample.
        index: usize,
        /// Its label.
        label: usize,
        /// Classes.
        classes: usize,
    },
    /// A feature vector holds NaN or infinity (its index).
    #[error("feature vector {0} has a NaN or infinite value")]
    NonFinite(usize),
    /// A mixed target whose weights are negative, not finite or do not sum to 1.
    #[error(
        "the target of sample {0} has weights that are negative, not finite or do not sum to 1"
    )]
    Weights(usize),
    /// The inverse penalty C is not positive and finite.
    #[error("C must be positive and finite, got {0}")]
    Penalty(f64),
    /// The L-BFGS solver failed (argmin's message).
    #[error("L-BFGS failed: {0}")]
    Solver(String),
}

/// A fitted probe: `W` row-major (classes × dim) and `b`.
#[derive(Clone, Debug, PartialEq)]
pub struct FittedProbe {
    /// Classes.
    pub classes: usize,
    /// Feature dimension.
    pub dim: usize,
    /// `W`, classes × dim, row-major.
    pub weights: Vec<f64>,
    /// `b`, one per class.
    pub intercepts: Vec<f64>,
    /// L-BFGS iterations used.
    pub iterations: u64,
}

impl FittedProbe {
    /// The class with the highest score (the first on ties).
    pub fn predict(&self, x: &[f32]) -> usize {
        let scores = self.scores(x);
        let mut best = 0;
        for (c, &s) in scores.iter().enumerate() {
            if s > scores[best] {
                best = c;
            }
        }
        best
    }

    /// W x + b.
    pub fn scores(&self, x: &[f32]) -> Vec<f64> {
        (0..self.classes)
            .map(|c| {
                let row = &self.weights[c * self.dim..(c + 1) * self.dim];
                self.intercepts[c]
                    + row
                        .iter()
                        .zip(x)
                        .map(|(w, &v)| w * f64::from(v))
                        .sum::<f64>()
            })
            .collect()
    }

    /// Percent of `features` predicted as their `labels`.
    pub fn accuracy(&self, features: &[Vec<f32>], labels: &[usize]) -> f64 {
        if features.is_empty() {
            return f64::NAN;
        }
        let right = features
            .iter()
            .zip(labels)
            .filter(|(x, &y)| self.predict(x) == y)
            .count();
        100.0 * right as f64 / features.len() as f64
    }
}

impl LogisticRegression {
    /// Fits the probe on `features` (one vector per sample, all of one length) labelled
    /// `labels` (each below `classes`).
    pub fn fit(
        &self,
        features: &[Vec<f32>],
        labels: &[usize],
        classes: usize,
    ) -> Result<FittedProbe, LogRegError> {
        let targets: Vec<MixedTarget> = labels.iter().map(|&y| vec![(y, 1.0)]).collect();
        self.fit_mixed(features, &targets, classes)
    }

    /// Fits the probe on `features` with mixed targets: `targets[i]` lists (class, weight)
    /// pairs whose weights sum to 1 (`[(y, 1.0)]` is an ordinary label; MixUp's image of
    /// classes a and b is `[(a, λ), (b, 1 − λ)]`).
    pub fn fit_mixed(
        &self,
        features: &[Vec<f32>],
        targets: &[MixedTarget],
        classes: usize,
    ) -> Result<FittedProbe, LogRegError> {
        if !(self.c > 0.0 && self.c.is_finite()) {
            return Err(LogRegError::Penalty(self.c));
        }
        let first = features.first().ok_or(LogRegError::Empty)?;
        if features.len() != targets.len() {
            return Err(LogRegError::Lengths {
                features: features.len(),
                labels: targets.len(),
            });
        }
        let dim = first.len();
        for (index, (x, target)) in features.iter().zip(targets).enumerate() {
            if x.len() != dim {
                return Err(LogRegError::Dimension {
                    index,
                    got: x.len(),
                    expected: dim,
                });
            }
            if x.iter().any(|v| !v.is_finite()) {
                return Err(LogRegError::NonFinite(index));
            }
            if let Some(&(label, _)) = target.iter().find(|(c, _)| *c >= classes) {
                return Err(LogRegError::Label {
                    index,
                    label,
                    classes,
                });
            }
            let sum: f64 = target.iter().map(|(_, w)| w).sum();
            if target.iter().any(|(_, w)| !(w.is_finite() && *w >= 0.0)) || (sum - 1.0).abs() > 1e-6
            {
                return Err(LogRegError::Weights(index));
            }
        }
        let problem = Objective {
            x: features
                .iter()
                .map(|x| x.iter().map(|&v| f64::from(v)).collect())
                .collect(),
            y: targets.to_vec(),
            classes,
            dim,
            // The objective is divided by n (as scikit-learn does) so that the tolerance means
            // the same whatever the number of samples.
            penalty: 1.0 / (self.c * features.len() as f64),
        };
        let solver = LBFGS::new(MoreThuenteLineSearch::new(), 10)
            .with_tolerance_grad(self.tolerance)
            .and_then(|s| s.with_tolerance_cost(0.0))
            .map_err(|e| LogRegError::Solver(e.to_string()))?;
        let start = vec![0.0; classes * (dim + 1)];
        let result = Executor::new(problem, solver)
            .configure(|state| state.param(start).max_iters(self.max_iters))
            .run()
            .map_err(|e| LogRegError::Solver(e.to_string()))?;
        let state = result.state();
        let params = state
            .get_best_param()
            .ok_or_else(|| LogRegError::Solver("no parameters".into()))?;
        Ok(FittedProbe {
            classes,
            dim,
            weights: params[..classes * dim].to_vec(),
            intercepts: params[classes * dim..].to_vec(),
            iterations: state.get_iter(),
        })
    }
}

/// The mean cross-entropy plus penalty · ‖W‖² / 2, over parameters [W row-major, b].
struct Objective {
    x: Vec<Vec<f64>>,
    /// Each sample's (class, weight) pairs, weights summing to 1.
    y: Vec<MixedTarget>,
    classes: usize,
    dim: usize,
    penalty: f64,
}

impl Objective {
    /// The objective and its gradient at `p`.
    fn evaluate(&self, p: &[f64]) -> (f64, Vec<f64>) {
        let (k, d) = (self.classes, self.dim);
        let (w, b) = p.split_at(k * d);
        let n = self.x.len() as f64;
        let mut loss = 0.0;
        let mut grad = vec![0.0; p.len()];
        let mut z = vec![0.0; k];
        let mut target = vec![0.0; k];
        for (x, y) in self.x.iter().zip(&self.y) {
            target.fill(0.0);
            for &(c, weight) in y {
                target[c] += weight;
            }
            for c in 0..k {
                z[c] = b[c]
                    + w[c * d..(c + 1) * d]
                        .iter()
                        .zip(x)
                        .map(|(a, b)| a * b)
                        .sum::<f64>();
            }
            let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = z.iter().map(|v| (v - max).exp()).sum();
            let log_sum = max + sum.ln();
            loss += log_sum - (0..k).map(|c| target[c] * z[c]).sum::<f64>();
            for c in 0..k {
                let dz = ((z[c] - log_sum).exp() - target[c]) / n;
                for (g, xi) in grad[c * d..(c + 1) * d].iter_mut().zip(x) {
                    *g += dz * xi;
                }
                grad[k * d + c] += dz;
            }
        }
        let mut square = 0.0;
        for (g, wi) in grad[..k * d].iter_mut().zip(w) {
            *g += self.penalty * wi;
            square += wi * wi;
        }
        (loss / n + 0.5 * self.penalty * square, grad)
    }
}

impl CostFunction for Objective {
    type Param = Vec<f64>;
    type Output = f64;

    fn cost(&self, p: &Vec<f64>) -> Result<f64, ArgminError> {
        Ok(self.evaluate(p).0)
    }
}

impl Gradient for Objective {
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;

    fn gradient(&self, p: &Vec<f64>) -> Result<Vec<f64>, ArgminError> {
        Ok(self.evaluate(p).1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mixed_target_of_one_class_is_a_label_and_mixtures_pull_between_classes() {
        let x = vec![
            vec![-1.0, 0.2],
            vec![1.0, -0.1],
            vec![-0.8, -0.3],
            vec![0.9, 0.4],
        ];
        let probe = LogisticRegression::default();
        let hard = probe.fit(&x, &[0, 1, 0, 1], 2).unwrap();
        let same = probe
            .fit_mixed(&x, &[0, 1, 0, 1].map(|y| vec![(y, 1.0)]), 2)
            .unwrap();
        assert_eq!(hard, same);
        // A point between the classes labelled half and half moves the boundary less than one
        // labelled class 0 does.
        let mut more = x.clone();
        more.push(vec![0.3, 0.0]);
        let half = probe
            .fit_mixed(
                &more,
                &[
                    vec![(0, 1.0)],
                    vec![(1, 1.0)],
                    vec![(0, 1.0)],
                    vec![(1, 1.0)],
                    vec![(0, 0.5), (1, 0.5)],
                ],
                2,
            )
            .unwrap();
        let zero = probe.fit(&more, &[0, 1, 0, 1, 0], 2).unwrap();
        let margin = |p: &FittedProbe| {
            let s = p.scores(&[0.3, 0.0]);
            s[0] - s[1]
        };
        assert!(
            margin(&zero) > margin(&half),
            "{} vs {}",
            margin(&zero),
            margin(&half)
        );
        assert!(
            margin(&half) > margin(&hard),
            "{} vs {}",
            margin(&half),
            margin(&hard)
        );
    }

    #[test]
    fn the_gradient_is_the_objectives() {
        let problem = Objective {
            x: vec![vec![0.5, -1.0], vec![2.0, 0.25], vec![-0.5, 1.5]],
            y: vec![vec![(0, 1.0)], vec![(2, 0.3), (1, 0.7)], vec![(1, 1.0)]],
            classes: 3,
            dim: 2,
            penalty: 0.3,
        };
        let p: Vec<f64> = (0..9).map(|i| (i as f64 * 0.37).sin()).collect();
        let (_, grad) = problem.evaluate(&p);
        for i in 0..p.len() {
            let mut up = p.clone();
            let mut down = p.clone();
            up[i] += 1e-6;
            down[i] -= 1e-6;
            let numeric = (problem.evaluate(&up).0 - problem.evaluate(&down).0) / 2e-6;
            assert!(
                (numeric - grad[i]).abs() < 1e-7,
                "{i}: {numeric} vs {}",
                grad[i]
            );
        }
    }

    #[test]
    fn bad_inputs_are_named() {
        let probe = LogisticRegression::default();
        assert_eq!(probe.fit(&[], &[], 2), Err(LogRegError::Empty));
        let x = vec![vec![1.0, 2.0], vec![1.0]];
        assert!(matches!(
            probe.fit(&x, &[0, 1], 2),
            Err(LogRegError::Dimension { index: 1, .. })
        ));
        let x = vec![vec![1.0], vec![f32::NAN]];
        assert_eq!(probe.fit(&x, &[0, 1], 2), Err(LogRegError::NonFinite(1)));
        let x = vec![vec![1.0], vec![2.0]];
        assert!(matches!(
            probe.fit(&x, &[0, 2], 2),
            Err(LogRegError::Label { label: 2, .. })
        ));
        for weights in [
            vec![(0, 0.5), (1, 0.4)],
            vec![(0, 1.5), (1, -0.5)],
            vec![(0, f64::NAN)],
        ] {
            assert_eq!(
                probe.fit_mixed(&x, &[vec![(0, 1.0)], weights], 2),
                Err(LogRegError::Weights(1))
            );
        }
        let strict = LogisticRegression { c: 0.0, ..probe };
        assert_eq!(strict.fit(&x, &[0, 1], 2), Err(LogRegError::Penalty(0.0)));
    }
}
