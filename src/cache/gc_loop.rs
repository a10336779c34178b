//! A disk cache kept under a size bound while something fills it: [`DiskStore::gc`] on a
//! thread of its own, every few seconds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::disk::{DiskStore, GcPolicy};

/// The gc thread; stopped (and joined) when dropped.
pub struct GcLoop {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl GcLoop {
    /// Runs `policy` on `store` every `every` (and once at once). A failed round (another gc
    /// holding the lock, a full disk) is logged and the next one tried.
    pub fn start(
        store: Arc<DiskStore>,
        policy: GcPolicy,
        every: Duration,
    ) -> std::io::Result<GcLoop> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("genie-cache-gc".into())
            .spawn(move || {
                while !stopped.load(Ordering::Acquire) {
                    match store.gc(&policy) {
                        Ok(r) if r.removed_entries > 0 => tracing::info!(
                            removed = r.removed_entries,
                            removed_bytes = r.removed_bytes,
                            remaining_bytes = r.remaining_bytes,
                            "cache gc"
                        ),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "cache gc failed; trying again later"),
                    }
                    // Short naps, so that stopping does not wait a whole round.
                    let mut slept = Duration::ZERO;
                    while slept < every && !stopped.load(Ordering::Acquire) {
                        let nap = (every - slept).min(Duration::from_millis(50));
                        std::thread::sleep(nap);
                        slept += nap;
                    }
                }
            })?;
        Ok(GcLoop {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for GcLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
