//! The `Cache` facade: memory hits, store hits, counters, the byte budget, and images that verify but do not decode.

use std::sync::Arc;

use crate::support::{content, key, meta};
use genie::cache::{
    Cache, CacheCounters, DiskStore, Lookup, MemoryStore, MemoryTier, PutOutcome, Store,
};
use image::RgbImage;

fn noisy_image(seed: u64, side: u32) -> RgbImage {
    let bytes = content(seed, (side * side * 3) as usize);
    RgbImage::from_raw(side, side, bytes).expect("RGB buffer of the right size")
}

#[test]
fn a_put_image_is_served_from_memory_then_from_disk_by_a_fresh_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = Cache::open_dir(dir.path(), 1 << 20).expect("open");
    let image = noisy_image(1, 32);
    let mut m = meta("cat", 1);
    (m.width, m.height) = (0, 0); // put_image sets them from the image
    assert_eq!(
        cache.put_image(&key(1), &image, m).expect("put"),
        PutOutcome::Stored
    );
    let served = cache.get_image(&key(1)).expect("get").expect("hit");
    assert_eq!(*served, image);
    assert!(cache.get_image(&key(2)).expect("get").is_none());
    assert_eq!(
        cache.counters(),
        CacheCounters {
            memory_hits: 1,
            misses: 1,
            puts_stored: 1,
            ..CacheCounters::default()
        }
    );

    let fresh = Cache::open_dir(dir.path(), 1 << 20).expect("reopen");
    assert!(fresh.contains(&key(1)).expect("contains"));
    let from_disk = fresh.get_image(&key(1)).expect("get").expect("hit");
    assert_eq!(*from_disk, image);
    let again = fresh.get_image(&key(1)).expect("get").expect("hit");
    assert!(
        Arc::ptr_eq(&from_disk, &again),
        "the second read is the memory tier's"
    );
    let counters = fresh.counters();
    assert_eq!((counters.store_hits, counters.memory_hits), (1, 1));

    let entry = fresh
        .store()
        .get(&key(1))
        .expect("get")
        .into_entry()
        .expect("hit");
    assert_eq!(
        (entry.manifest.meta.width, entry.manifest.meta.height),
        (32, 32)
    );
    assert_eq!(
        fresh
            .put_image(&key(1), &noisy_image(99, 32), meta("cat", 1))
            .expect("put"),
        PutOutcome::AlreadyPresent
    );
    assert_eq!(fresh.counters().puts_already_present, 1);
    assert_eq!(*fresh.get_image(&key(1)).expect("get").expect("hit"), image);
}

#[test]
fn verified_bytes_that_do_not_decode_are_quarantined_and_missed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(DiskStore::open(dir.path()).expect("open"));
    let cache = Cache::new(store.clone(), 1 << 20);
    // Valid store entries (hash matches), but not a PNG / not the promised size.
    store
        .put(&key(1), b"definitely not a png", &meta("cat", 1))
        .expect("put");
    let small_png = genie::image_io::encode_png(&noisy_image(2, 8)).expect("encode");
    store
        .put(&key(2), &small_png, &meta("cat", 2))
        .expect("put"); // meta says 64x64

    for n in [1, 2] {
        assert!(cache.get_image(&key(n)).expect("get").is_none(), "key {n}");
        assert_eq!(
            store.get(&key(n)).expect("get"),
            Lookup::Miss,
            "key {n} left in place"
        );
    }
    let counters = cache.counters();
    assert_eq!((counters.corrupt, counters.misses), (2, 2));
    assert_eq!(
        std::fs::read_dir(store.quarantine_dir())
            .expect("list")
            .count(),
        2
    );
}

#[test]
fn the_memory_tier_stays_within_its_byte_budget() {
    let image = noisy_image(0, 16);
    let budget = 2 * MemoryTier::cost_of(&image) + 10;
    let cache = Cache::new(Arc::new(MemoryStore::new()), budget);
    for n in 0..6 {
        cache
            .put_image(&key(n), &noisy_image(n, 16), meta("dog", n))
            .expect("put");
        let usage = cache.memory_usage();
        assert!(usage.used_bytes <= usage.budget_bytes, "{usage:?}");
        assert!(usage.entries <= 2, "{usage:?}");
    }
    // The two most recent are in memory, the rest come from the store.
    for n in [4, 5] {
        cache.get_image(&key(n)).expect("get").expect("hit");
    }
    assert_eq!(cache.counters().memory_hits, 2);
    cache.get_image(&key(0)).expect("get").expect("hit");
    assert_eq!(cache.counters().store_hits, 1);
}

#[test]
fn a_zero_budget_goes_to_the_store_every_time() {
    let cache = Cache::new(Arc::new(MemoryStore::new()), 0);
    cache
        .put_image(&key(1), &noisy_image(1, 16), meta("cat", 1))
        .expect("put");
    for _ in 0..3 {
        cache.get_image(&key(1)).expect("get").expect("hit");
    }
    let counters = cache.counters();
    assert_eq!((counters.memory_hits, counters.store_hits), (0, 3));
    assert_eq!(cache.memory_usage().used_bytes, 0);
}
