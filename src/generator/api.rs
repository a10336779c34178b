//! What a training loop needs from a generator, whether it runs in this process or behind `genie serve`.

use std::time::Duration;

use super::service::Generator;
use super::types::{GeneratorError, Priority, Receipt, Request, WaitOutcome};
use crate::cache::CacheKey;
use crate::engine::EngineFingerprint;

/// A source of hard negatives: the in-process [`Generator`] or a
/// [`RemoteGenerator`](crate::remote::RemoteGenerator). Both store into a cache the caller reads;
/// the caller learns that an image is ready by finding it there.
pub trait HardNegativeGenerator: Send + Sync {
    /// The engine the generated images come from; it is part of every cache key.
    fn fingerprint(&self) -> &EngineFingerprint;

    /// Asks for a request's levels and answers at once, never waiting on generation or on the
    /// network. A remote generator answers [`LevelOutcome::Sent`](super::LevelOutcome::Sent) and
    /// delivers the server's answer later through [`late_receipts`](Self::late_receipts).
    fn request(&self, req: Request) -> Result<Receipt, GeneratorError>;

    /// Whether a request of `priority` would be taken now (a hint: a caller that would do work
    /// only to be refused can skip it).
    fn has_room(&self, priority: Priority) -> bool;

    /// Waits until `key` is settled (cached or failed), at most `timeout`.
    fn wait(&self, key: &CacheKey, timeout: Duration) -> Result<WaitOutcome, GeneratorError>;

    /// Waits for each of `keys` in turn (at most `timeout` each), calling `progress(settled,
    /// total)` after each, and returns the keys that did not become ready with why — what every
    /// batch job does after queueing its run (a progress bar, a log line every few seconds).
    fn wait_all(
        &self,
        keys: &[CacheKey],
        timeout: Duration,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<(CacheKey, WaitOutcome)>, GeneratorError> {
        let mut not_ready = Vec::new();
        for (n, key) in keys.iter().enumerate() {
            let outcome = self.wait(key, timeout)?;
            if outcome != WaitOutcome::Ready {
                not_ready.push((*key, outcome));
            }
            progress(n + 1, keys.len());
        }
        Ok(not_ready)
    }

    /// Answers to earlier [`Sent`](super::LevelOutcome::Sent) levels that arrived since the
    /// last call, each for the whole request it answers. In-process generators answer at once
    /// and return none.
    fn late_receipts(&self) -> Vec<Receipt> {
        Vec::new()
    }

    /// Takes no new batch until [`release`](Self::release), so that a run queued whole is
    /// batched the same way every time (see [`Generator::hold`]). A remote generator batches as
    /// requests reach its server and cannot promise that: a no-op there.
    fn hold(&self) {}

    /// Lets work go on after [`hold`](Self::hold).
    fn release(&self) {}
}

impl HardNegativeGenerator for Generator {
    fn fingerprint(&self) -> &EngineFingerprint {
        Generator::fingerprint(self)
    }
    fn request(&self, req: Request) -> Result<Receipt, GeneratorError> {
        Generator::request(self, req)
    }
    fn has_room(&self, priority: Priority) -> bool {
        Generator::has_room(self, priority)
    }
    fn wait(&self, key: &CacheKey, timeout: Duration) -> Result<WaitOutcome, GeneratorError> {
        Generator::wait(self, key, timeout)
    }
    fn hold(&self) {
        Generator::hold(self)
    }
    fn release(&self) {
        Generator::release(self)
    }
}
