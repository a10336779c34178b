//! Engine cost on the tiny model (50-step DPM-Solver++, guidance 7.5, 64 px): one level
//! (r = 0.8), the GeNIe-Ada 5-level sweep run as shared chains, and the same 5 levels run
//! one after another. The ratio sweep / one level is what makes GeNIe-Ada affordable.
//!
//! `cargo bench --bench engine` (results in BENCHMARKS.md).

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use genie::diffusion::{tiny, EngineOptions, ModelSource, SchedulerKind, SdEngine};
use genie::{Engine, Job, NoiseLevel};
use image::RgbImage;

fn job(levels: &[NoiseLevel]) -> Job {
    Job {
        source: Some(Arc::new(RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 4) as u8, 128])
        }))),
        prompt: "a photo of a cat.".into(),
        levels: levels.to_vec(),
        seed: 0,
        noise: None,
    }
}

fn bench(c: &mut Criterion) {
    genie::diffusion::tune_cpu_process();
    let dir = tempfile::tempdir().unwrap();
    tiny::write_tiny_model(dir.path(), 1).unwrap();
    let mut opts = EngineOptions::default();
    opts.scheduler = SchedulerKind::DpmSolverPp;
    opts.steps = 50;
    opts.guidance = 7.5;
    let mut engine = SdEngine::load(&ModelSource::Local(dir.path().to_path_buf()), opts).unwrap();
    // Warm the prompt and source-latent caches: the bench measures denoising, not first use.
    engine
        .generate(&[job(&[NoiseLevel::GENIE_DEFAULT])])
        .unwrap();

    let mut group = c.benchmark_group("tiny_engine_dpm50");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(1));
    group.bench_function("one_level_r0.8", |b| {
        b.iter(|| {
            engine
                .generate(&[job(&[NoiseLevel::GENIE_DEFAULT])])
                .unwrap()
        })
    });
    group.bench_function("sweep_5_levels_shared_chains", |b| {
        b.iter(|| engine.generate(&[job(&NoiseLevel::ADA_SWEEP)]).unwrap())
    });
    group.bench_function("sweep_5_levels_separately", |b| {
        b.iter(|| {
            for level in NoiseLevel::ADA_SWEEP {
                engine.generate(&[job(&[level])]).unwrap();
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
