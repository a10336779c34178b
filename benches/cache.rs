//! Cache read cost for one 512×512 entry: a memory hit and a disk hit.
//!
//! A memory hit is a lookup in the LRU tier (no I/O, no decode); a disk hit reads the manifest
//! and the content, verifies the blake3 and decodes the PNG.
//!
//! `cargo bench --bench cache`

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use genie::cache::{Cache, CacheKey, DiskStore, EntryMeta, KeyInputs};
use genie::{EngineFingerprint, NoiseLevel};
use image::RgbImage;

/// Smooth gradients plus noise: compresses about as badly as a generated photo would, so the
/// PNG is not trivially small.
fn photo_like(side: u32) -> RgbImage {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    RgbImage::from_fn(side, side, |x, y| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let noise = (state & 0x1f) as u8;
        image::Rgb([
            ((x / 2) as u8).wrapping_add(noise),
            ((y / 2) as u8).wrapping_add(noise / 2),
            (((x + y) / 4) as u8).wrapping_add(noise),
        ])
    })
}

fn bench(c: &mut Criterion) {
    let fingerprint = EngineFingerprint {
        model: "bench".into(),
        scheduler: "dpm-solver++".into(),
        steps: 50,
        guidance: "7.5".into(),
        resolution: 512,
        dtype: "f16".into(),
        algorithm_version: 1,
    };
    let key = CacheKey::new(&KeyInputs {
        source: Some([1; 32]),
        prompt: "a photo of a cat.",
        level: NoiseLevel::GENIE_DEFAULT,
        seed: 0,
        fingerprint: &fingerprint,
    });
    let meta = EntryMeta {
        target: "cat".into(),
        prompt: "a photo of a cat.".into(),
        level: NoiseLevel::GENIE_DEFAULT,
        seed: 0,
        source: None,
        fingerprint: fingerprint.clone(),
        width: 512,
        height: 512,
    };
    let image = photo_like(512);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(DiskStore::open(dir.path()).expect("open cache"));
    let with_memory = Cache::new(store.clone(), 64 << 20);
    with_memory
        .put_image(&key, &image, meta)
        .expect("store the entry");
    let png_bytes = std::fs::metadata(
        store.content_path(
            &key,
            &genie::cache::Store::get(&*store, &key)
                .expect("get")
                .into_entry()
                .expect("hit")
                .manifest
                .content_file,
        ),
    )
    .expect("stat content")
    .len();
    eprintln!("512x512 entry: {png_bytes} PNG bytes");
    // A zero budget: every read goes to the disk (manifest, content, blake3, PNG decode).
    let disk_only = Cache::new(store, 0);

    let mut group = c.benchmark_group("cache_512px");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    group.bench_function("memory_hit", |b| {
        b.iter(|| with_memory.get_image(&key).expect("get").expect("hit"))
    });
    group.bench_function("disk_hit", |b| {
        b.iter(|| disk_only.get_image(&key).expect("get").expect("hit"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
