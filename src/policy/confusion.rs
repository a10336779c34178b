//! A running confusion matrix of the live classifier, and the classes most confused with a target.

use std::sync::{Arc, Mutex, MutexGuard};

/// Counts of (true class, predicted class), as `f64` so that old epochs can be decayed.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfusionMatrix {
    classes: usize,
    counts: Vec<f64>,
}

impl ConfusionMatrix {
    /// An all-zero matrix for `classes` classes.
    pub fn new(classes: usize) -> Self {
        ConfusionMatrix {
            classes,
            counts: vec![0.0; classes * classes],
        }
    }

    /// A matrix from rows of counts: `rows[truth][predicted]`. `None` unless the rows are square
    /// and every count is finite and non-negative.
    pub fn from_rows(rows: &[Vec<f64>]) -> Option<Self> {
        let classes = rows.len();
        let valid = rows
            .iter()
            .all(|row| row.len() == classes && row.iter().all(|c| c.is_finite() && *c >= 0.0));
        valid.then(|| ConfusionMatrix {
            classes,
            counts: rows.concat(),
        })
    }

    /// Classes.
    pub fn num_classes(&self) -> usize {
        self.classes
    }

    /// Adds one observation per (prediction, target) pair. Pairs naming a class outside the
    /// matrix are skipped and counted in the return value, so one bad label never poisons the rest.
    pub fn record(&mut self, predictions: &[usize], targets: &[usize]) -> usize {
        let mut skipped = predictions.len().abs_diff(targets.len());
        for (&p, &t) in predictions.iter().zip(targets) {
            if p < self.classes && t < self.classes {
                self.counts[t * self.classes + p] += 1.0;
            } else {
                skipped += 1;
            }
        }
        skipped
    }

    /// Times class `truth` was predicted as `predicted`.
    pub fn get(&self, truth: usize, predicted: usize) -> f64 {
        if truth < self.classes && predicted < self.classes {
            self.counts[truth * self.classes + predicted]
        } else {
            0.0
        }
    }

    /// Multiplies every count by `factor` (in [0, 1]) so that recent epochs weigh more.
    pub fn decay(&mut self, factor: f64) {
        let factor = factor.clamp(0.0, 1.0);
        self.counts.iter_mut().for_each(|c| *c *= factor);
    }

    /// The sum of every cell.
    pub fn total(&self) -> f64 {
        self.counts.iter().sum()
    }

    /// The `k` classes most confused with `target`, both ways (S taken for T plus T taken for S),
    /// most confused first; ties go to the lower class index. Classes never confused with the
    /// target are not returned, so the list is shorter than `k` early in training.
    pub fn most_confused_with(&self, target: usize, k: usize) -> Vec<usize> {
        if target >= self.classes {
            return Vec::new();
        }
        let mut scored: Vec<(usize, f64)> = (0..self.classes)
            .filter(|&c| c != target)
            .map(|c| (c, self.get(c, target) + self.get(target, c)))
            .filter(|&(_, s)| s > 0.0)
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.into_iter().take(k).map(|(c, _)| c).collect()
    }
}

/// A confusion matrix shared between whoever records predictions (a burn metric, the training
/// loop) and the policy that reads it.
#[derive(Clone, Debug)]
pub struct SharedConfusion(Arc<Mutex<ConfusionMatrix>>);

impl SharedConfusion {
    /// A shared all-zero matrix for `classes` classes.
    pub fn new(classes: usize) -> Self {
        SharedConfusion(Arc::new(Mutex::new(ConfusionMatrix::new(classes))))
    }

    /// Records one batch of predictions; see [`ConfusionMatrix::record`].
    pub fn record(&self, predictions: &[usize], targets: &[usize]) -> usize {
        self.lock().record(predictions, targets)
    }

    /// A copy of the matrix now.
    pub fn snapshot(&self) -> ConfusionMatrix {
        self.lock().clone()
    }

    /// The matrix, locked (a poisoned lock is taken over: counts stay usable).
    pub fn lock(&self) -> MutexGuard<'_, ConfusionMatrix> {
        crate::sync::lock(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_ranks_both_directions() {
        let mut m = ConfusionMatrix::new(4);
        // class 1 taken for 3 twice, 3 taken for 2 three times, 0 taken for 3 once.
        let skipped = m.record(&[3, 3, 2, 2, 2, 3, 9], &[1, 1, 3, 3, 3, 0, 0]);
        assert_eq!(skipped, 1);
        assert_eq!(m.get(1, 3), 2.0);
        assert_eq!(m.most_confused_with(3, 4), vec![2, 1, 0]);
        assert_eq!(m.most_confused_with(3, 1), vec![2]);
        assert!(m.most_confused_with(9, 2).is_empty());
        m.decay(0.5);
        assert_eq!(m.get(3, 2), 1.5);
    }

    #[test]
    fn ties_go_to_the_lower_class() {
        let mut m = ConfusionMatrix::new(5);
        m.record(&[0, 0, 0], &[4, 2, 3]);
        assert_eq!(m.most_confused_with(0, 2), vec![2, 3]);
    }
}
