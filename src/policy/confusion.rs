//! A running confusion matrix of the live classifier, and the classes most confused with a target.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

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

    /// Per true class: (times predicted right, times seen) — a test set's per-class accuracy.
    pub fn hits(&self) -> Vec<(usize, usize)> {
        (0..self.classes)
            .map(|t| {
                let row = &self.counts[t * self.classes..(t + 1) * self.classes];
                (row[t] as usize, row.iter().sum::<f64>() as usize)
            })
            .collect()
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
///
/// Each [`record`](Self::record) call is one batch. Every [`SNAPSHOT_EVERY`] batches a copy is
/// kept, tagged with the batch count, so that a reader on another thread can see the matrix as
/// it was after exactly that many batches ([`snapshot_after`](Self::snapshot_after)), however
/// far the recording thread has got since. burn's `SupervisedTraining` runs metrics on a thread
/// of their own, so the [`ConfusionMetric`](crate::loader::ConfusionMetric) marks its matrix
/// [`recorded_asynchronously`](Self::recorded_asynchronously) and the augmenter then reads such
/// snapshots at fixed batch counts: the sources it proposes do not depend on the metric thread's
/// timing.
#[derive(Clone, Debug)]
pub struct SharedConfusion(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    matrix: Mutex<ConfusionMatrix>,
    history: Mutex<History>,
    kept: Condvar,
}

/// The batch count and the kept snapshots, newest last.
#[derive(Debug, Default)]
struct History {
    batches: u64,
    asynchronous: bool,
    snapshots: VecDeque<(u64, ConfusionMatrix)>,
}

/// A copy of the matrix is kept after every this many recorded batches.
pub const SNAPSHOT_EVERY: u64 = 16;

/// Snapshots kept: a reader may lag the recorder by this many [`SNAPSHOT_EVERY`]s.
const SNAPSHOTS_KEPT: usize = 4;

impl SharedConfusion {
    /// A shared all-zero matrix for `classes` classes.
    pub fn new(classes: usize) -> Self {
        SharedConfusion(Arc::new(Shared {
            matrix: Mutex::new(ConfusionMatrix::new(classes)),
            history: Mutex::new(History::default()),
            kept: Condvar::new(),
        }))
    }

    /// Records one batch of predictions (see [`ConfusionMatrix::record`]) and counts the batch.
    pub fn record(&self, predictions: &[usize], targets: &[usize]) -> usize {
        let mut matrix = self.lock();
        let skipped = matrix.record(predictions, targets);
        let mut history = crate::sync::lock(&self.0.history);
        history.batches += 1;
        if history.batches % SNAPSHOT_EVERY == 0 {
            let tag = history.batches;
            history.snapshots.push_back((tag, matrix.clone()));
            while history.snapshots.len() > SNAPSHOTS_KEPT {
                history.snapshots.pop_front();
            }
            self.0.kept.notify_all();
        }
        skipped
    }

    /// Says that batches are recorded on another thread than the one that reads the matrix
    /// (a burn metric): readers that must repeat across runs use
    /// [`snapshot_after`](Self::snapshot_after) instead of the live matrix.
    pub fn recorded_asynchronously(&self) {
        crate::sync::lock(&self.0.history).asynchronous = true;
    }

    /// Whether [`recorded_asynchronously`](Self::recorded_asynchronously) was called.
    pub fn is_recorded_asynchronously(&self) -> bool {
        crate::sync::lock(&self.0.history).asynchronous
    }

    /// Batches recorded so far.
    pub fn batches(&self) -> u64 {
        crate::sync::lock(&self.0.history).batches
    }

    /// The matrix as it was right after batch `batches` was recorded (a multiple of
    /// [`SNAPSHOT_EVERY`]), waiting up to `timeout` for the recorder to get there. `None` when
    /// `batches` is not such a multiple, when the wait timed out, or when that snapshot is no
    /// longer kept (the reader lagged by more than a few snapshots).
    pub fn snapshot_after(&self, batches: u64, timeout: Duration) -> Option<ConfusionMatrix> {
        if batches == 0 || batches % SNAPSHOT_EVERY != 0 {
            return None;
        }
        let history = crate::sync::lock(&self.0.history);
        let (history, _) = self
            .0
            .kept
            .wait_timeout_while(history, timeout, |h| h.batches < batches)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        history
            .snapshots
            .iter()
            .find(|(tag, _)| *tag == batches)
            .map(|(_, m)| m.clone())
    }

    /// A copy of the matrix now.
    pub fn snapshot(&self) -> ConfusionMatrix {
        self.lock().clone()
    }

    /// The matrix, locked (a poisoned lock is taken over: counts stay usable).
    pub fn lock(&self) -> MutexGuard<'_, ConfusionMatrix> {
        crate::sync::lock(&self.0.matrix)
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
    fn hits_are_the_diagonal_over_each_true_class() {
        let mut m = ConfusionMatrix::new(3);
        m.record(&[0, 0, 1, 2, 2, 2], &[0, 1, 1, 2, 2, 0]);
        assert_eq!(m.hits(), vec![(1, 2), (1, 2), (2, 2)]);
    }

    #[test]
    fn snapshots_are_the_matrix_after_exactly_their_batch_count() {
        let shared = SharedConfusion::new(2);
        let reader = shared.clone();
        let waiting = std::thread::spawn(move || {
            reader.snapshot_after(2 * SNAPSHOT_EVERY, Duration::from_secs(30))
        });
        for n in 0..3 * SNAPSHOT_EVERY {
            // Batch n (1-based n + 1) predicts class 1 for class 0 n + 1 times.
            let k = n as usize + 1;
            shared.record(&vec![1; k], &vec![0; k]);
        }
        let sum = |b: u64| (1..=b).sum::<u64>() as f64;
        let seen = waiting.join().unwrap().expect("snapshot 32");
        assert_eq!(seen.get(0, 1), sum(2 * SNAPSHOT_EVERY));
        let later = shared
            .snapshot_after(3 * SNAPSHOT_EVERY, Duration::ZERO)
            .unwrap();
        assert_eq!(later.get(0, 1), sum(3 * SNAPSHOT_EVERY));
        assert_eq!(shared.batches(), 3 * SNAPSHOT_EVERY);
        // Not a snapshot's count, or not reached in time: none.
        assert!(shared.snapshot_after(5, Duration::ZERO).is_none());
        assert!(shared
            .snapshot_after(4 * SNAPSHOT_EVERY, Duration::from_millis(10))
            .is_none());
        assert!(!shared.is_recorded_asynchronously());
        shared.recorded_asynchronously();
        assert!(shared.is_recorded_asynchronously());
    }

    #[test]
    fn ties_go_to_the_lower_class() {
        let mut m = ConfusionMatrix::new(5);
        m.record(&[0, 0, 0], &[4, 2, 3]);
        assert_eq!(m.most_confused_with(0, 2), vec![2, 3]);
    }
}
