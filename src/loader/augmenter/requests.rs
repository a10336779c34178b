//! Asking the generator for a pair's levels and following the answers: requests, receipts,
//! retries of deferred pairs, and probes of the cache for levels made elsewhere.

use std::sync::atomic::Ordering;

use super::{Augmenter, State};
use crate::cache::CacheKey;
use crate::generator::{LevelOutcome, Priority, Receipt, SourceImage};
use crate::loader::item::GenieItem;
use crate::policy::PairId;

impl<I: GenieItem> Augmenter<I> {
    /// The item's source as the engine takes it: its original at full resolution
    /// ([`GenieItem::source_rgb`]), resized and cropped to the engine's size, hashed.
    pub(super) fn source_of(&self, item: &I) -> Option<SourceImage> {
        let source = item
            .source_rgb()
            .map_err(|e| e.to_string())
            .and_then(|rgb| self.keys.source(&rgb).map_err(|e| e.to_string()));
        match source {
            Ok(s) => Some(s),
            Err(e) => {
                self.counters.bad_items.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "skipping a source item whose pixels cannot be read");
                None
            }
        }
    }

    pub(super) fn request(&self, id: PairId, source: SourceImage) {
        let Some(generator) = &self.generator else {
            return;
        };
        let (target, seed, hash) = {
            let state = self.state();
            let e = &state.pairs[id];
            (e.target, e.seed, e.source_hash)
        };
        if source.hash != hash {
            // The source changed since its keys were made (e.g. a file rewritten after
            // planning): its images would land under keys nobody reads.
            self.counters.bad_items.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                pair = id,
                "a source no longer has the pixels its keys were made from; not requested"
            );
            return;
        }
        let request =
            self.keys
                .request(source, target, self.levels.clone(), seed, Priority::Online);
        let receipt = match generator.request(request) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "generator refused a request");
                self.state().retry.push_back(id);
                return;
            }
        };
        let mut state = self.state();
        self.apply_receipt(&mut state, id, &receipt);
    }

    /// Records what the generator said of a pair's levels (at once, or later for a remote one).
    pub(super) fn apply_receipt(&self, state: &mut State<I>, id: PairId, receipt: &Receipt) {
        let mut deferred = false;
        for (_, key, outcome) in &receipt.levels {
            let Some(i) = state.pairs[id].keys.iter().position(|k| k == key) else {
                continue;
            };
            match outcome {
                LevelOutcome::AlreadyCached => state.status[id].cached |= 1 << i,
                LevelOutcome::Queued => {
                    self.counters.requested.fetch_add(1, Ordering::Relaxed);
                }
                // The answer comes later, as a late receipt.
                LevelOutcome::AlreadyPending | LevelOutcome::Sent => {}
                LevelOutcome::BackingOff | LevelOutcome::Dropped => {
                    self.counters.deferred.fetch_add(1, Ordering::Relaxed);
                    deferred = true;
                }
            }
        }
        if deferred {
            state.retry.push_back(id);
        }
    }

    /// Applies a remote generator's answers to requests sent in earlier batches.
    pub(super) fn take_late_receipts(&self) {
        let Some(generator) = &self.generator else {
            return;
        };
        let receipts = generator.late_receipts();
        if receipts.is_empty() {
            return;
        }
        let mut state = self.state();
        for receipt in receipts {
            let id = receipt
                .levels
                .iter()
                .find_map(|(_, key, _)| state.by_key.get(key).copied());
            if let Some(id) = id {
                self.apply_receipt(&mut state, id, &receipt);
            }
        }
    }

    pub(super) fn retry_deferred(&self) {
        let Some(generator) = &self.generator else {
            return;
        };
        for _ in 0..self.config.retries_per_batch {
            // A full queue would refuse the retry after its source was hashed again.
            if !generator.has_room(Priority::Online) {
                return;
            }
            let (id, item, missing) = {
                let mut state = self.state();
                let Some(id) = state.retry.pop_front() else {
                    return;
                };
                let cached = state.status[id].cached;
                let missing: Vec<(usize, CacheKey)> = state.pairs[id]
                    .keys
                    .iter()
                    .enumerate()
                    .filter(|&(level, _)| cached & (1 << level) == 0)
                    .map(|(level, &key)| (level, key))
                    .collect();
                (id, state.pairs[id].item.clone(), missing)
            };
            // Pre-warmed levels need no request, and no reading or hashing of the source.
            let found: Vec<usize> = missing
                .iter()
                .filter(|(_, key)| self.cache.contains(key).unwrap_or(false))
                .map(|&(level, _)| level)
                .collect();
            if !found.is_empty() {
                let mut state = self.state();
                for level in &found {
                    state.status[id].cached |= 1 << level;
                }
            }
            if found.len() == missing.len() {
                continue;
            }
            if let Some(source) = self.source_of(&item) {
                self.request(id, source);
            }
        }
    }

    /// Checks a few not-yet-ready (pair, level)s against the cache, current levels first.
    pub(super) fn probe(&self) {
        let budget = self.config.probes_per_batch;
        let todo: Vec<(PairId, usize, CacheKey)> = {
            let mut state = self.state();
            let n = state.pairs.len();
            let full = (1u32 << self.levels.len()) - 1;
            let mut todo = Vec::new();
            let start = state.probe_cursor;
            let mut scanned = 0;
            while todo.len() < budget && scanned < n {
                let id = (start + scanned) % n;
                scanned += 1;
                let st = state.status[id];
                if st.cached == full {
                    continue;
                }
                let keys = &state.pairs[id].keys;
                let order = std::iter::once(st.current as usize).chain(0..self.levels.len());
                for level in order {
                    if st.cached & (1 << level) == 0
                        && todo.len() < budget
                        && !todo.contains(&(id, level, keys[level]))
                    {
                        todo.push((id, level, keys[level]));
                    }
                }
            }
            state.probe_cursor = if n == 0 { 0 } else { (start + scanned) % n };
            todo
        };
        let found: Vec<(PairId, usize)> = todo
            .into_iter()
            .filter(|(_, _, key)| self.cache.contains(key).unwrap_or(false))
            .map(|(id, level, _)| (id, level))
            .collect();
        if !found.is_empty() {
            let mut state = self.state();
            for (id, level) in found {
                state.status[id].cached |= 1 << level;
            }
        }
    }
}
