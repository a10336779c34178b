//! One poison-tolerant lock for genie's shared state.
//!
//! A poisoned `Mutex` means a thread panicked while holding it. Every critical section in genie
//! leaves its data consistent after each statement (counters, sets, maps, plain matrices), so the
//! data a panic leaves behind is still valid, and refusing it would turn one caught engine panic
//! into a failure of the whole service.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking the data over from a thread that panicked while holding it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
