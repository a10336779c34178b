//! One poison-tolerant lock for genie's shared state, and one bounded wait for a file lock.
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

/// Takes an exclusive (flock) lock on `file`, retrying until `wait` has passed: `Ok(false)` when
/// another process still holds it. fs4's lock rather than std's `File::try_lock`, which needs a
/// newer Rust than genie's minimum.
pub(crate) fn lock_file_within(
    file: &std::fs::File,
    wait: std::time::Duration,
) -> std::io::Result<bool> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match fs4::FileExt::try_lock(file) {
            Ok(()) => return Ok(true),
            Err(fs4::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(fs4::TryLockError::WouldBlock) => return Ok(false),
            Err(fs4::TryLockError::Error(e)) => return Err(e),
        }
    }
}
