//! Counters bumped from many threads and read as one plain snapshot: one declaration makes both.

/// Declares `$live`, a struct of one `AtomicU64` per named field, with `snapshot_into`, which
/// loads every counter into the plain snapshot type `$snapshot` (whose other fields come from
/// the value passed in). The snapshot type is written out by hand, with its docs.
macro_rules! live_counters {
    ($(#[$attr:meta])* $vis:vis struct $live:ident => $snapshot:ident { $($field:ident),+ $(,)? }) => {
        $(#[$attr])*
        #[derive(Debug, Default)]
        $vis struct $live {
            $($vis $field: std::sync::atomic::AtomicU64,)+
        }

        impl $live {
            /// Every counter now, into `rest`'s other fields (a snapshot type of counters
            /// alone takes its `Default`).
            #[allow(dead_code, unused_variables, clippy::needless_update)]
            $vis fn snapshot_into(&self, rest: $snapshot) -> $snapshot {
                $snapshot {
                    $($field: self.$field.load(std::sync::atomic::Ordering::Relaxed),)+
                    ..rest
                }
            }
        }
    };
}

pub(crate) use live_counters;

/// Adds `n` to `counter`: counts are read as snapshots, never to order other memory.
pub(crate) fn add(counter: &std::sync::atomic::AtomicU64, n: u64) {
    counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
}
