//! Mixing ready hard negatives into a batch, and the items built from cached images, kept
//! within a byte budget.

use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

use super::Augmenter;
use crate::cache::CacheKey;
use crate::loader::item::GenieItem;
use crate::policy::PairId;

/// Ready-made hard-negative items by cache key, within a byte budget.
pub(super) struct BuiltItems<I> {
    pub(super) items: lru::LruCache<CacheKey, (I, usize)>,
    pub(super) used: usize,
    pub(super) budget: usize,
}

impl<I: GenieItem> BuiltItems<I> {
    pub(super) fn get(&mut self, key: &CacheKey) -> Option<I> {
        self.items.get(key).map(|(item, _)| item.clone())
    }

    pub(super) fn insert(&mut self, key: CacheKey, item: I) {
        let bytes = item.heap_bytes();
        if bytes > self.budget {
            return;
        }
        if let Some((_, old)) = self.items.pop(&key) {
            self.used -= old;
        }
        while self.used + bytes > self.budget {
            match self.items.pop_lru() {
                Some((_, (_, old))) => self.used -= old,
                None => break,
            }
        }
        self.used += bytes;
        self.items.put(key, (item, bytes));
    }

    pub(super) fn remove(&mut self, key: &CacheKey) {
        if let Some((_, old)) = self.items.pop(key) {
            self.used -= old;
        }
    }
}

/// Bytes held in memory by an augmenter's ready-made items.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ItemMemory {
    /// Items held.
    pub items: usize,
    /// Their estimated bytes.
    pub used_bytes: usize,
    /// [`AugmenterConfig::item_memory_bytes`](super::AugmenterConfig::item_memory_bytes).
    pub budget_bytes: usize,
}

impl<I: GenieItem> Augmenter<I> {
    /// Phase 3 (after the follow-ups: late receipts, retries, probes): ready hard negatives
    /// replace items of over-represented classes (or are appended); those that turn out to be
    /// gone from the cache are marked not ready.
    pub(super) fn mix(&self, items: &mut Vec<I>, labelled: &[(usize, usize)], labels: &[usize]) {
        let mut state = self.state();
        let ready: Vec<PairId> = state
            .status
            .iter()
            .enumerate()
            .filter(|(_, st)| st.is_ready())
            .map(|(id, _)| id)
            .collect();
        let plan = state.policy.plan_mix(labels, &ready);
        let picks: Vec<(PairId, usize, CacheKey, usize)> = plan
            .insert
            .iter()
            .map(|&id| {
                let e = &state.pairs[id];
                let level = state.status[id].current as usize;
                (id, level, e.keys[level], e.target)
            })
            .collect();
        drop(state);

        let mut appended = Vec::new();
        let mut gone = Vec::new();
        let mut replaced_labels = Vec::new();
        let mut mixed_targets = Vec::new();
        // Ready-made items under one lock; the rest are read from the cache one by one.
        let mut ready_made: Vec<Option<I>> = {
            let mut built = self.built();
            picks.iter().map(|(_, _, key, _)| built.get(key)).collect()
        };
        for (n, (id, level, key, target)) in picks.into_iter().enumerate() {
            let slot = plan.replace.get(n).map(|&i| labelled[i]);
            let item = ready_made[n]
                .take()
                .or_else(|| self.hard_negative(id, &key, target));
            match item {
                Some(item) => {
                    self.counters.mixed.fetch_add(1, Ordering::Relaxed);
                    mixed_targets.push(target);
                    match slot {
                        Some((i, label)) => {
                            if !items[i].is_generated() {
                                replaced_labels.push(label);
                            }
                            items[i] = item;
                        }
                        None => appended.push(item),
                    }
                }
                None => gone.push((id, level)),
            }
        }
        if !gone.is_empty() || !mixed_targets.is_empty() {
            let mut state = self.state();
            state.policy.record_mix(&replaced_labels, &mixed_targets);
            for (id, level) in gone {
                state.status[id].cached &= !(1 << level);
                self.built().remove(&state.pairs[id].keys[level]);
            }
        }
        items.extend(appended);
    }

    /// The hard negative of `key`, not ready-made, as an item shaped like pair `id`'s source:
    /// read from the cache and built (then kept ready-made). `None` (counted) when it is gone.
    pub(super) fn hard_negative(&self, id: PairId, key: &CacheKey, target: usize) -> Option<I> {
        let source = self.state().pairs[id].item.clone();
        let built = match self.cache.get_image(key) {
            Ok(Some(image)) => source
                .with_generated(&image, target, &key.to_string())
                .map_err(|e| tracing::warn!(%key, error = %e, "cannot build an item"))
                .ok(),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(%key, error = %e, "cache read failed");
                None
            }
        };
        match &built {
            Some(item) => self.built().insert(*key, item.clone()),
            None => {
                self.counters.lookups_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        built
    }

    pub(super) fn built(&self) -> MutexGuard<'_, BuiltItems<I>> {
        crate::sync::lock(&self.built)
    }

    /// Memory held by ready-made hard-negative items (the decoded images are in the cache's
    /// memory tier, under its own budget).
    pub fn item_memory(&self) -> ItemMemory {
        let built = self.built();
        ItemMemory {
            items: built.items.len(),
            used_bytes: built.used,
            budget_bytes: built.budget,
        }
    }
}
