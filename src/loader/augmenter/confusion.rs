//! How a batch reads the confusion matrix that picks sources: live, or a snapshot at a fixed
//! batch count when a metric thread records it, so that runs repeat.

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use super::Augmenter;
use crate::loader::item::GenieItem;
use crate::policy::{ConfusionMatrix, SharedConfusion, SNAPSHOT_EVERY};

/// How a batch reads the confusion matrix ([`Augmenter::confusion_read`]).
pub(super) enum ConfusionRead {
    /// The live matrix (or none attached).
    Live,
    /// A snapshot at a fixed batch count; `None` before the first.
    Fixed(Option<Arc<ConfusionMatrix>>),
}

/// Batches a metric thread may trail the batch being built by before the augmenter waits for it:
/// the snapshot read is the last one at least this many batches back.
pub(super) const CONFUSION_LAG: u64 = 2;

/// How long a batch waits for the metric thread to reach a snapshot before giving up on
/// snapshots for the run.
pub(super) const CONFUSION_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl<I: GenieItem> Augmenter<I> {
    pub(super) fn confusion_guard(&self) -> Option<MutexGuard<'_, ConfusionMatrix>> {
        self.confusion.as_ref().map(SharedConfusion::lock)
    }

    /// How the batch after `earlier` batches reads the confusion matrix. A matrix recorded on
    /// the training thread is read live: it holds exactly the batches before this one. One a
    /// metric thread records (burn's `SupervisedTraining`) is read as its snapshot after a fixed
    /// number of batches — the last multiple of [`SNAPSHOT_EVERY`] at least
    /// [`CONFUSION_LAG`] batches back, waited for if the metric thread is behind — so that the
    /// sources proposed do not depend on that thread's timing.
    pub(super) fn confusion_read(&self, earlier: u64) -> ConfusionRead {
        let Some(confusion) = &self.confusion else {
            return ConfusionRead::Live;
        };
        let gave_up = self.counters.confusion_timeouts.load(Ordering::Relaxed) > 0;
        if !confusion.is_recorded_asynchronously() || gave_up {
            return ConfusionRead::Live;
        }
        let tag = earlier.saturating_sub(CONFUSION_LAG) / SNAPSHOT_EVERY * SNAPSHOT_EVERY;
        if tag == 0 {
            return ConfusionRead::Fixed(None);
        }
        let mut last = crate::sync::lock(&self.confusion_snapshot);
        if let Some((_, matrix)) = last.as_ref().filter(|(seen, _)| *seen == tag) {
            self.counters
                .confusion_snapshots
                .fetch_add(1, Ordering::Relaxed);
            return ConfusionRead::Fixed(Some(Arc::clone(matrix)));
        }
        match confusion.snapshot_after(tag, CONFUSION_WAIT) {
            Some(matrix) => {
                let matrix = Arc::new(matrix);
                *last = Some((tag, Arc::clone(&matrix)));
                self.counters
                    .confusion_snapshots
                    .fetch_add(1, Ordering::Relaxed);
                ConfusionRead::Fixed(Some(matrix))
            }
            None => {
                self.counters
                    .confusion_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    batches = tag,
                    recorded = confusion.batches(),
                    "the confusion metric did not record {tag} batches within {CONFUSION_WAIT:?} \
                     (is it registered with the training loop?): the live matrix is read from \
                     now on, so the sources proposed depend on the metric thread's timing"
                );
                ConfusionRead::Live
            }
        }
    }
}
