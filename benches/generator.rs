//! Generator benchmarks (a plain harness: we want latency percentiles, not means).
//!
//! 1. `request()` latency while every worker is busy (goal: p99 under 100 µs), with a disk cache.
//! 2. Throughput on the tiny model: jobs batched into one engine call (shared chains) versus one
//!    job per call.
//!
//! `cargo bench --bench generator` (results in BENCHMARKS.md).

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use genie::cache::Cache;
use genie::diffusion::{tiny, EngineOptions, ModelSource, SchedulerKind};
use genie::factory::SdEngineFactory;
use genie::generator::{
    DynEngine, EngineFactory, Generator, GeneratorConfig, Priority, Request, Shutdown, SourceImage,
};
use genie::{EngineFingerprint, NoiseLevel};
use image::RgbImage;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An engine that never finishes until released: keeps every worker busy.
struct Stuck(Arc<(Mutex<bool>, Condvar)>, EngineFingerprint);

impl genie::Engine for Stuck {
    type Error = std::io::Error;
    fn resolution(&self) -> u32 {
        8
    }
    fn fingerprint(&self) -> &EngineFingerprint {
        &self.1
    }
    fn generate(&mut self, _jobs: &[genie::Job]) -> Result<Vec<genie::JobOutput>, std::io::Error> {
        let (lock, cv) = &*self.0;
        let mut released = lock.lock().unwrap();
        while !*released {
            released = cv.wait(released).unwrap();
        }
        Err(std::io::Error::other("released"))
    }
}

struct StuckFactory(Arc<(Mutex<bool>, Condvar)>, EngineFingerprint);

impl EngineFactory for StuckFactory {
    fn fingerprint(&self) -> &EngineFingerprint {
        &self.1
    }
    fn resolution(&self) -> u32 {
        8
    }
    fn create(&self, _: &str) -> Result<Box<dyn DynEngine>, BoxError> {
        Ok(Box::new(Stuck(self.0.clone(), self.1.clone())))
    }
}

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
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(Cache::open_dir(dir.path(), 64 << 20).unwrap());
    let n = 100_000;
    let mut config = GeneratorConfig::default();
    config.devices = vec!["a".into(), "b".into()];
    config.queue_capacity = n;
    config.max_batch = 1;
    let generator =
        Generator::start(Arc::new(StuckFactory(gate.clone(), fp)), cache, config).unwrap();
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
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
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
    let model = tempfile::tempdir().unwrap();
    tiny::write_tiny_model(model.path(), 1).unwrap();
    let mut opts = EngineOptions::default();
    opts.scheduler = SchedulerKind::DpmSolverPp;
    opts.steps = 50;
    let factory =
        Arc::new(SdEngineFactory::new(ModelSource::Local(model.path().into()), opts).unwrap());
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
