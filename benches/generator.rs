//! Generator benchmarks (a plain harness: we want latency percentiles, not means).
//!
//! 1. `request()` latency while every worker is busy (goal: p99 under 100 µs), with a disk cache.
//! 2. Throughput on the tiny model: jobs batched into one engine call (shared chains) versus one
//!    job per call.
//!
//! `cargo bench --bench generator` (results in BENCHMARKS.md).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use genie::cache::Cache;
use genie::generator::{Generator, GeneratorConfig, Priority, Request, Shutdown, SourceImage};
use genie::testing::{FakeFactory, Gate};
use genie::{EngineFingerprint, NoiseLevel};
use image::RgbImage;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn request_latency() {
    let fp = EngineFingerprint {
        model: "bench".into(),
        scheduler: "-".into(),
        steps: 1,
        guidance: "1".into(),
        resolution: 8,
        dtype: "f32".into(),
        algorithm_version: 1,
    };
    // Every engine call waits at a closed gate: every worker stays busy.
    let gate = Gate::closed();
    let factory = FakeFactory::new(fp, 8, |_, _| image::Rgb([0, 0, 0])).with_gate(gate.clone());
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(Cache::open_dir(dir.path(), 64 << 20).unwrap());
    let n = 100_000;
    let mut config = GeneratorConfig::default();
    config.devices = vec!["a".into(), "b".into()];
    config.queue_capacity = n;
    config.max_batch = 1;
    let generator = Generator::start(Arc::new(factory), cache, config).unwrap();
    let source = SourceImage::new(RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3])));
    let mut times = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let req = Request {
            source: Some(source.clone()),
            target: "cat".into(),
            prompt: "a photo of a cat.".into(),
            levels: vec![NoiseLevel::GENIE_DEFAULT],
            seed: i % 50_000, // half the requests repeat a pending key
            priority: Priority::Online,
        };
        let t = Instant::now();
        let receipt = generator.request(req).unwrap();
        times.push(t.elapsed());
        std::hint::black_box(receipt);
    }
    let stats = generator.stats();
    gate.open();
    generator.shutdown(Shutdown::Cancel);
    times.sort();
    println!(
        "request latency, workers busy, {n} requests ({} queued, {} deduplicated): p50 {:?}  p99 {:?}  p99.9 {:?}  max {:?}",
        stats.queued,
        stats.deduplicated,
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        percentile(&times, 0.999),
        times[n - 1]
    );
}

fn throughput() {
    let (_model, factory) = common::tiny_factory();
    let sources: Vec<SourceImage> = (0..16u8)
        .map(|i| {
            SourceImage::new(RgbImage::from_fn(64, 64, |x, y| {
                image::Rgb([x as u8 * 4, y as u8 * 4, i * 15])
            }))
        })
        .collect();
    for batch in [1, 8] {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(Cache::open_dir(dir.path(), 64 << 20).unwrap());
        let mut config = GeneratorConfig::default();
        config.max_batch = batch;
        let generator = Generator::start(factory.clone(), cache, config).unwrap();
        let start = Instant::now();
        for s in &sources {
            generator
                .request(Request {
                    source: Some(s.clone()),
                    target: "cat".into(),
                    prompt: "a photo of a cat.".into(),
                    levels: vec![NoiseLevel::GENIE_DEFAULT],
                    seed: 0,
                    priority: Priority::Prewarm,
                })
                .unwrap();
        }
        let stats = generator.shutdown(Shutdown::Drain);
        let secs = start.elapsed().as_secs_f64();
        println!(
            "tiny model, 16 jobs at r = 0.8, DPM 50 steps, max_batch {batch}: {:.2} s, {:.2} images/s, {} engine calls",
            secs,
            stats.done as f64 / secs,
            stats.engine_calls
        );
    }
}

fn main() {
    genie::diffusion::tune_cpu_process();
    request_latency();
    throughput();
}
