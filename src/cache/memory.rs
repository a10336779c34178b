//! The memory tier: decoded images in LRU order under a byte budget, so a hit costs no I/O and no decode.

use std::sync::Arc;

use image::RgbImage;
use lru::LruCache;

use super::key::CacheKey;

/// Bookkeeping charged per entry on top of its pixels (key, `Arc`, LRU node, image header), so
/// that many tiny images cannot exceed the budget unnoticed.
pub const ENTRY_OVERHEAD_BYTES: usize = 128;

/// Decoded images, least recently used evicted first, never holding more than `budget_bytes`.
#[derive(Debug)]
pub struct MemoryTier {
    // Unbounded by count: the byte budget below is the only limit.
    entries: LruCache<CacheKey, Arc<RgbImage>>,
    budget_bytes: usize,
    used_bytes: usize,
}

impl MemoryTier {
    /// A tier holding at most `budget_bytes` (0 disables it).
    pub fn new(budget_bytes: usize) -> Self {
        MemoryTier {
            entries: LruCache::unbounded(),
            budget_bytes,
            used_bytes: 0,
        }
    }

    /// Bytes an image is charged: its RGB pixels plus [`ENTRY_OVERHEAD_BYTES`].
    pub fn cost_of(image: &RgbImage) -> usize {
        image.as_raw().len().saturating_add(ENTRY_OVERHEAD_BYTES)
    }

    /// The image of `key`, marked most recently used. Pure memory: no I/O, no decode.
    pub fn get(&mut self, key: &CacheKey) -> Option<Arc<RgbImage>> {
        self.entries.get(key).cloned()
    }

    /// Whether `key` is held, without changing the LRU order.
    pub fn contains(&self, key: &CacheKey) -> bool {
        self.entries.contains(key)
    }

    /// Holds `image` under `key`, evicting least recently used images until within budget.
    /// Returns `false`, and holds nothing for `key`, when the image alone exceeds the budget.
    pub fn insert(&mut self, key: CacheKey, image: Arc<RgbImage>) -> bool {
        self.remove(&key);
        let cost = Self::cost_of(&image);
        if cost > self.budget_bytes {
            return false;
        }
        while self.used_bytes + cost > self.budget_bytes {
            match self.entries.pop_lru() {
                Some((_, evicted)) => self.used_bytes -= Self::cost_of(&evicted),
                // Unreachable while the accounting is right; stopping is the safe answer.
                None => break,
            }
        }
        self.used_bytes += cost;
        self.entries.put(key, image);
        true
    }

    /// Drops `key`'s image, if held.
    pub fn remove(&mut self, key: &CacheKey) -> Option<Arc<RgbImage>> {
        let removed = self.entries.pop(key)?;
        self.used_bytes -= Self::cost_of(&removed);
        Some(removed)
    }

    /// Bytes of the images held.
    pub fn used_bytes(&self) -> usize {
        self.used_bytes
    }

    /// The most it holds, in bytes.
    pub fn budget_bytes(&self) -> usize {
        self.budget_bytes
    }

    /// Images held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn image(side: u32) -> Arc<RgbImage> {
        Arc::new(RgbImage::new(side, side))
    }

    fn key(n: u8) -> CacheKey {
        CacheKey::from_bytes([n; 32])
    }

    #[test]
    fn evicts_least_recently_used_first() {
        let cost = MemoryTier::cost_of(&image(10));
        let mut tier = MemoryTier::new(cost * 2);
        assert!(tier.insert(key(1), image(10)));
        assert!(tier.insert(key(2), image(10)));
        assert!(tier.get(&key(1)).is_some()); // 2 is now the least recently used
        assert!(tier.insert(key(3), image(10)));
        assert!(tier.contains(&key(1)));
        assert!(!tier.contains(&key(2)));
        assert!(tier.contains(&key(3)));
        assert_eq!(tier.used_bytes(), cost * 2);
    }

    #[test]
    fn an_image_larger_than_the_budget_is_not_held() {
        let mut tier = MemoryTier::new(MemoryTier::cost_of(&image(10)));
        assert!(tier.insert(key(1), image(10)));
        assert!(!tier.insert(key(2), image(11)));
        assert!(!tier.contains(&key(2)));
        assert!(tier.contains(&key(1)), "a refused insert must not evict");
        // Replacing a key with an image too large drops the old one rather than keep stale data.
        assert!(!tier.insert(key(1), image(11)));
        assert!(tier.is_empty());
        assert_eq!(tier.used_bytes(), 0);
    }

    #[test]
    fn a_zero_budget_holds_nothing() {
        let mut tier = MemoryTier::new(0);
        assert!(!tier.insert(key(1), image(1)));
        assert!(tier.get(&key(1)).is_none());
    }

    proptest! {
        #[test]
        fn used_bytes_never_exceed_the_budget(
            budget in 0usize..20_000,
            ops in proptest::collection::vec((0u8..12, 0u32..60, any::<bool>()), 1..200),
        ) {
            let mut tier = MemoryTier::new(budget);
            for (k, side, remove) in ops {
                if remove {
                    tier.remove(&key(k));
                } else {
                    let img = image(side);
                    let fits = MemoryTier::cost_of(&img) <= budget;
                    prop_assert_eq!(tier.insert(key(k), img), fits);
                    prop_assert_eq!(tier.contains(&key(k)), fits);
                }
                prop_assert!(tier.used_bytes() <= budget);
                let held: usize = tier.entries.iter().map(|(_, img)| MemoryTier::cost_of(img)).sum();
                prop_assert_eq!(held, tier.used_bytes());
            }
        }
    }
}
