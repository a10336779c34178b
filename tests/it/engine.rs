//! The engine on a tiny model written by genie itself, through the real loader: chains, seeds,
//! typed errors for bad jobs and bad model folders.

use crate::support::copy_dir;
use genie::diffusion::parity::max_abs_diff;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use candle_core::{DType, Device, Tensor};
use genie::diffusion::{tiny, DiffusionError, EngineOptions, ModelSource, SchedulerKind, SdEngine};
use genie::{Engine, Job, NoiseLevel};
use image::RgbImage;

/// One tiny model for the whole test binary (written once, read by every test).
fn tiny_model() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        tiny::write_tiny_model(dir.path(), 7).unwrap();
        dir
    })
    .path()
}

/// A private copy of the tiny model that a test may break.
fn model_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    copy_dir(tiny_model(), &model);
    (dir, model)
}

fn opts(kind: SchedulerKind, steps: usize) -> EngineOptions {
    let mut options = EngineOptions::default();
    options.scheduler = kind;
    options.steps = steps;
    options
}

fn load(dir: &Path, o: EngineOptions) -> Result<SdEngine, DiffusionError> {
    SdEngine::load(&ModelSource::Local(dir.to_path_buf()), o)
}

fn source(seed: u8) -> Arc<RgbImage> {
    Arc::new(RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([(x * 4) as u8 ^ seed, (y * 4) as u8, ((x + y) * 2) as u8])
    }))
}

fn job(src: Option<Arc<RgbImage>>, prompt: &str, levels: &[u16], seed: u64) -> Job {
    Job {
        source: src,
        prompt: prompt.into(),
        levels: crate::support::levels(levels),
        seed,
        noise: None,
    }
}

#[test]
fn shared_chains_equal_separate_runs() {
    for kind in [SchedulerKind::DpmSolverPp, SchedulerKind::Ddim] {
        let mut e = load(tiny_model(), opts(kind, 20)).unwrap();
        let sweep = [500, 600, 700, 800, 900];
        // Two jobs (two sources, two prompts), five levels each: ten chains on one grid.
        let jobs = [
            job(Some(source(0)), "a photo of a cat.", &sweep, 1),
            job(Some(source(9)), "a photo of a dog.", &sweep, 2),
        ];
        let shared = e.run_chains(&jobs).unwrap();
        for (j, single) in jobs.iter().enumerate() {
            for (l, &level) in sweep.iter().enumerate() {
                let alone = e
                    .run_chains(&[job(
                        single.source.clone(),
                        &single.prompt,
                        &[level],
                        single.seed,
                    )])
                    .unwrap();
                let d = max_abs_diff(&shared[j][l].latents, &alone[0][0].latents).unwrap();
                assert!(
                    d < 1e-4,
                    "{kind:?} job {j} level {level}: shared vs alone differ by {d}"
                );
                assert_eq!(shared[j][l].steps_run, alone[0][0].steps_run);
            }
        }
        // Chains at different levels really are different images.
        assert!(max_abs_diff(&shared[0][0].latents, &shared[0][4].latents).unwrap() > 1e-3);
    }
}

#[test]
fn unet_batch_limit_does_not_change_results() {
    let jobs = [job(
        Some(source(3)),
        "a photo of a cat.",
        &[500, 800, 1000],
        5,
    )];
    let mut wide = load(tiny_model(), {
        let mut options = opts(SchedulerKind::DpmSolverPp, 10);
        options.max_chains_per_call = Some(16);
        options
    })
    .unwrap();
    let mut narrow = load(tiny_model(), {
        let mut options = opts(SchedulerKind::DpmSolverPp, 10);
        options.max_chains_per_call = Some(1);
        options
    })
    .unwrap();
    let a = wide.run_chains(&jobs).unwrap();
    let b = narrow.run_chains(&jobs).unwrap();
    for (x, y) in a[0].iter().zip(&b[0]) {
        assert!(max_abs_diff(&x.image, &y.image).unwrap() < 1e-5);
    }
}

#[test]
fn same_seed_same_image_other_seed_other_image() {
    let mut e = load(tiny_model(), opts(SchedulerKind::DpmSolverPp, 10)).unwrap();
    let a = cat_at(&mut e, 1, 800, 42);
    assert_eq!(a, cat_at(&mut e, 1, 800, 42));
    assert_ne!(a, cat_at(&mut e, 1, 800, 43));
    // A fresh engine (fresh caches) gives the same pixels too.
    let mut e2 = load(tiny_model(), opts(SchedulerKind::DpmSolverPp, 10)).unwrap();
    assert_eq!(a, cat_at(&mut e2, 1, 800, 42));
}

/// The one image of a job asking `e` for a cat at level `thousandths` from source `source_seed`
/// with noise seed `seed`.
fn cat_at(e: &mut SdEngine, source_seed: u8, thousandths: u16, seed: u64) -> RgbImage {
    let job = job(
        Some(source(source_seed)),
        "a photo of a cat.",
        &[thousandths],
        seed,
    );
    e.generate(&[job])
        .unwrap()
        .swap_remove(0)
        .images
        .swap_remove(0)
        .image
}

/// An engine on a one-thread pool of its own makes the same pixels as one on the process's
/// pool (so `EngineOptions::threads` rightly stays out of the cache key); 0 threads is refused.
#[test]
fn an_engine_on_its_own_threads_makes_the_same_images() {
    let jobs = [
        job(Some(source(3)), "a photo of a cat.", &[500, 900], 5),
        job(Some(source(4)), "a photo of a dog.", &[700], 6),
    ];
    let mut shared = load(tiny_model(), opts(SchedulerKind::DpmSolverPp, 10)).unwrap();
    let mut one = opts(SchedulerKind::DpmSolverPp, 10);
    one.threads = Some(1);
    let mut own = load(tiny_model(), one).unwrap();
    let a = shared.generate(&jobs).unwrap();
    let b = own.generate(&jobs).unwrap();
    for (x, y) in a.iter().zip(&b) {
        for (i, j) in x.images.iter().zip(&y.images) {
            assert_eq!(i.image, j.image);
        }
    }
    let mut zero = opts(SchedulerKind::DpmSolverPp, 10);
    zero.threads = Some(0);
    assert!(matches!(
        load(tiny_model(), zero),
        Err(DiffusionError::Options(_))
    ));
}

#[test]
fn injected_noise_equals_seeded_noise() {
    let mut e = load(tiny_model(), opts(SchedulerKind::Ddim, 10)).unwrap();
    let shape = e.noise_shape();
    assert_eq!(shape, [1, 4, 8, 8]);
    let noise = genie::noise::gaussian(11, shape.iter().product());
    let mut with_noise = job(Some(source(2)), "a photo of a cat.", &[700], 999);
    with_noise.noise = Some(Arc::new(noise));
    let a = e.generate(&[with_noise]).unwrap();
    assert_eq!(a[0].images[0].image, cat_at(&mut e, 2, 700, 11));
}

#[test]
fn step_counts_and_start_timesteps() {
    let e = load(tiny_model(), opts(SchedulerKind::Ddim, 50)).unwrap();
    let runs: Vec<(usize, usize)> = NoiseLevel::ADA_SWEEP
        .iter()
        .map(|&l| {
            let s = e.level_start(l).unwrap();
            (s.steps_run, s.timestep)
        })
        .collect();
    assert_eq!(
        runs,
        [(25, 481), (30, 581), (35, 681), (40, 781), (45, 881)]
    );
    let txt = e.level_start(NoiseLevel::TEXT_TO_IMAGE).unwrap();
    assert_eq!((txt.index, txt.steps_run, txt.timestep), (0, 50, 981));
    // ⌊50 · 0.01⌋ = 0 steps: refused rather than returning the unchanged source.
    assert!(e
        .level_start(NoiseLevel::from_thousandths(10).unwrap())
        .is_err());
}

#[test]
fn text_to_image_needs_no_source_but_img2img_does() {
    let mut e = load(tiny_model(), opts(SchedulerKind::DpmSolverPp, 5)).unwrap();
    let out = e
        .generate(&[job(None, "a photo of a cat.", &[1000], 0)])
        .unwrap();
    assert_eq!(out[0].images[0].image.dimensions(), (64, 64));
    let err = e
        .generate(&[job(None, "a photo of a cat.", &[500], 0)])
        .unwrap_err();
    assert!(matches!(err, DiffusionError::Job { job: 0, .. }), "{err}");
}

#[test]
fn bad_jobs_are_typed_errors() {
    let mut e = load(tiny_model(), opts(SchedulerKind::DpmSolverPp, 5)).unwrap();
    let wrong_size = Arc::new(RgbImage::new(32, 48));
    let err = e
        .generate(&[job(Some(wrong_size), "a cat", &[500], 0)])
        .unwrap_err();
    assert!(err.to_string().contains("32x48"), "{err}");
    let mut bad_noise = job(Some(source(0)), "a cat", &[500], 0);
    bad_noise.noise = Some(Arc::new(vec![0.0; 10]));
    let err = e.generate(&[bad_noise]).unwrap_err();
    assert!(err.to_string().contains("noise has 10 values"), "{err}");
    let err = e
        .generate(&[job(Some(source(0)), "a cat", &[], 0)])
        .unwrap_err();
    assert!(err.to_string().contains("no noise levels"), "{err}");
    let err = e
        .generate(&[job(Some(source(0)), "a cat", &[10], 0)])
        .unwrap_err();
    assert!(err.to_string().contains("runs no denoising step"), "{err}");
}

#[test]
fn tiny_model_is_deterministic() {
    let a = tempfile::tempdir().unwrap();
    tiny::write_tiny_model(a.path(), 7).unwrap();
    for f in [
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "tokenizer/vocab.json",
    ] {
        assert_eq!(
            std::fs::read(a.path().join(f)).unwrap(),
            std::fs::read(tiny_model().join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn fp16_variant_loads_when_the_plain_file_is_absent() {
    let (_tmp, model) = model_copy();
    for (dir, stem) in [
        ("unet", "diffusion_pytorch_model"),
        ("vae", "diffusion_pytorch_model"),
        ("text_encoder", "model"),
    ] {
        let plain = model.join(dir).join(format!("{stem}.safetensors"));
        let tensors = candle_core::safetensors::load(&plain, &Device::Cpu).unwrap();
        let half: std::collections::HashMap<String, Tensor> = tensors
            .into_iter()
            .map(|(k, v)| (k, v.to_dtype(DType::F16).unwrap()))
            .collect();
        candle_core::safetensors::save(
            &half,
            model.join(dir).join(format!("{stem}.fp16.safetensors")),
        )
        .unwrap();
        std::fs::remove_file(plain).unwrap();
    }
    let mut e = load(&model, opts(SchedulerKind::DpmSolverPp, 5)).unwrap();
    let out = e
        .generate(&[job(Some(source(0)), "a photo of a cat.", &[800], 0)])
        .unwrap();
    assert_eq!(out[0].images.len(), 1);
}

fn load_err(model: &Path) -> String {
    match load(model, opts(SchedulerKind::DpmSolverPp, 5)) {
        Ok(_) => panic!("loading {} should fail", model.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_files_are_named() {
    for rel in [
        "unet/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "tokenizer",
        "scheduler/scheduler_config.json",
    ] {
        let (_tmp, model) = model_copy();
        let p = model.join(rel);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
        let err = load_err(&model);
        assert!(err.contains(rel.split('/').next().unwrap()), "{rel}: {err}");
    }
    let err = load_err(Path::new("/definitely/not/here"));
    assert!(err.contains("/definitely/not/here"), "{err}");
}

#[test]
fn pickled_weights_are_refused() {
    let (_tmp, model) = model_copy();
    let dir = model.join("unet");
    std::fs::rename(
        dir.join("diffusion_pytorch_model.safetensors"),
        dir.join("diffusion_pytorch_model.bin"),
    )
    .unwrap();
    let err = load_err(&model);
    assert!(err.contains("safetensors only"), "{err}");
}

#[test]
fn truncated_weights_name_the_file() {
    let (_tmp, model) = model_copy();
    let file = model.join("unet/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(&model);
    assert!(
        err.contains("unet/diffusion_pytorch_model.safetensors"),
        "{err}"
    );
    assert!(err.contains("not a complete safetensors file"), "{err}");
    std::fs::write(&file, b"garbage").unwrap();
    assert!(load_err(&model).contains("unet/diffusion_pytorch_model.safetensors"));
}

#[test]
fn wrong_shapes_and_dtypes_name_the_file_and_tensor() {
    let (_tmp, model) = model_copy();
    let file = model.join("text_encoder/model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let name = "text_model.final_layer_norm.weight";
    tensors.insert(
        name.into(),
        Tensor::zeros(7, DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let err = load_err(&model);
    assert!(
        err.contains("text_encoder/model.safetensors") && err.contains(name),
        "{err}"
    );
    assert!(err.contains("[7]") || err.contains("7"), "{err}");

    tensors.insert(
        name.into(),
        Tensor::zeros(32, DType::U32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let err = load_err(&model);
    assert!(err.contains(name) && err.contains("dtype"), "{err}");
}

#[test]
fn unsupported_config_keys_and_values_are_named() {
    for (key, value) in [
        ("frobnicate", serde_json::json!(1)),
        ("class_embed_type", serde_json::json!("timestep")),
        ("act_fn", serde_json::json!("gelu")),
    ] {
        let (_tmp, model) = model_copy();
        let path = model.join("unet/config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        cfg[key] = value;
        std::fs::write(&path, cfg.to_string()).unwrap();
        let err = load_err(&model);
        assert!(
            err.contains(key) && err.contains("unet/config.json"),
            "{key}: {err}"
        );
    }
    let (_tmp, model) = model_copy();
    std::fs::write(
        model.join("scheduler/scheduler_config.json"),
        r#"{"beta_schedule": "sigmoid"}"#,
    )
    .unwrap();
    assert!(load_err(&model).contains("beta_schedule"));
    std::fs::write(model.join("scheduler/scheduler_config.json"), "{not json").unwrap();
    assert!(load_err(&model).contains("not valid JSON"));
}

#[test]
fn bad_options_are_refused() {
    let err = load(tiny_model(), opts(SchedulerKind::DpmSolverPp, 0))
        .err()
        .unwrap();
    assert!(err.to_string().contains("at least 1"), "{err}");
    let err = load(tiny_model(), {
        let mut options = opts(SchedulerKind::Ddim, 5);
        options.size = Some(60);
        options
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("multiple of 16"), "{err}");
    let err = load(tiny_model(), half(DType::BF16, true)).err().unwrap();
    assert!(
        err.to_string().contains("bf16 needs a CUDA device"),
        "{err}"
    );
}

#[test]
fn other_sizes_than_native_work() {
    let mut e = load(tiny_model(), {
        let mut options = opts(SchedulerKind::Ddim, 4);
        options.size = Some(96);
        options
    })
    .unwrap();
    assert_eq!(e.resolution(), 96);
    let src = Arc::new(RgbImage::new(96, 96));
    let out = e.generate(&[job(Some(src), "a cat", &[900], 0)]).unwrap();
    assert_eq!(out[0].images[0].image.dimensions(), (96, 96));
}

#[test]
fn text_encoder_weights_without_the_text_model_prefix_load() {
    let (_tmp, model) = model_copy();
    let file = model.join("text_encoder/model.safetensors");
    let tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let stripped: std::collections::HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| (k.strip_prefix("text_model.").unwrap().to_string(), v))
        .collect();
    candle_core::safetensors::save(&stripped, &file).unwrap();
    let mut a = load(&model, opts(SchedulerKind::Ddim, 4)).unwrap();
    let mut b = load(tiny_model(), opts(SchedulerKind::Ddim, 4)).unwrap();
    let ea = a.prompt_embedding("a photo of a cat.").unwrap();
    let eb = b.prompt_embedding("a photo of a cat.").unwrap();
    assert_eq!(max_abs_diff(&ea, &eb).unwrap(), 0.0);
}

#[test]
fn fingerprint_captures_every_pixel_changing_option() {
    let base = load(tiny_model(), opts(SchedulerKind::DpmSolverPp, 10)).unwrap();
    let fp = base.fingerprint().clone();
    assert!(fp.model.starts_with("blake3:"), "{}", fp.model);
    assert_eq!(
        (
            fp.steps,
            fp.resolution,
            fp.dtype.as_str(),
            fp.guidance.as_str()
        ),
        (10, 64, "f32", "7.5")
    );
    // Planning from the config files alone predicts it exactly.
    let plan = genie::diffusion::plan_engine(
        &ModelSource::Local(tiny_model().to_path_buf()),
        &opts(SchedulerKind::DpmSolverPp, 10),
    )
    .unwrap();
    assert_eq!((&plan.fingerprint, plan.resolution), (&fp, 64));
    assert_eq!(
        plan.level_start(NoiseLevel::GENIE_DEFAULT).unwrap(),
        base.level_start(NoiseLevel::GENIE_DEFAULT).unwrap()
    );
    // Reloading the same folder gives the same fingerprint.
    assert_eq!(
        load(tiny_model(), opts(SchedulerKind::DpmSolverPp, 10))
            .unwrap()
            .fingerprint(),
        &fp
    );
    let variants = [
        opts(SchedulerKind::Ddim, 10),
        opts(SchedulerKind::DpmSolverPp, 11),
        {
            let mut options = opts(SchedulerKind::DpmSolverPp, 10);
            options.guidance = 5.0;
            options
        },
        {
            let mut options = opts(SchedulerKind::DpmSolverPp, 10);
            options.size = Some(96);
            options
        },
    ];
    for o in variants {
        let other = load(tiny_model(), o.clone()).unwrap();
        assert_ne!(other.fingerprint(), &fp, "{o:?}");
    }
    // A model with other weights (one byte of the VAE changed) has another identity.
    let (_tmp, model) = model_copy();
    let file = model.join("vae/diffusion_pytorch_model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();
    let changed = load(&model, opts(SchedulerKind::DpmSolverPp, 10)).unwrap();
    assert_ne!(changed.fingerprint().model, fp.model);
    // The scheduler config is part of it too.
    let (_tmp2, model2) = model_copy();
    let cfg = model2.join("scheduler/scheduler_config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("0.012", "0.0125");
    std::fs::write(&cfg, text).unwrap();
    let changed = load(&model2, opts(SchedulerKind::DpmSolverPp, 10)).unwrap();
    assert_ne!(changed.fingerprint().scheduler, fp.scheduler);
}

/// Multiplies one tensor of a model copy's UNet weights by `factor`.
fn scale_unet_tensor(model: &Path, name: &str, factor: f64) {
    let file = model.join("unet/diffusion_pytorch_model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let t = tensors.get(name).unwrap_or_else(|| panic!("no {name}"));
    let scaled = (t * factor).unwrap();
    tensors.insert(name.to_string(), scaled);
    candle_core::safetensors::save(&tensors, &file).unwrap();
}

fn half(dtype: DType, fallback: bool) -> EngineOptions {
    let mut options = opts(SchedulerKind::DpmSolverPp, 8);
    options.dtype = dtype;
    options.half_fallback = fallback;
    options
}

fn chain_images(e: &mut SdEngine, jobs: &[Job]) -> Result<Vec<Tensor>, DiffusionError> {
    Ok(e.run_chains(jobs)?
        .into_iter()
        .flatten()
        .map(|c| c.image)
        .collect())
}

/// ‖a − b‖ / ‖b‖ over the whole image.
fn relative_diff(a: &Tensor, b: &Tensor) -> f32 {
    let norm = |t: &Tensor| -> f32 {
        t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt()
    };
    norm(&(a - b).unwrap()) / norm(b)
}

#[test]
fn half_precision_stays_close_to_f32() {
    let jobs = [
        job(Some(source(2)), "a photo of a cat.", &[500, 800], 5),
        job(Some(source(3)), "a photo of a dog.", &[900], 6),
    ];
    let reference = chain_images(
        &mut load(tiny_model(), half(DType::F32, true)).unwrap(),
        &jobs,
    )
    .unwrap();
    // bf16 has no CPU matmul in candle; the engine refuses it there (see bad_options_are_refused).
    for (dtype, tolerance) in [(DType::F16, 1e-2)] {
        let mut e = load(tiny_model(), half(dtype, false)).unwrap();
        let images = chain_images(&mut e, &jobs).unwrap();
        assert_eq!(images.len(), reference.len());
        for (got, want) in images.iter().zip(&reference) {
            let d = relative_diff(got, want);
            assert!(
                d <= tolerance,
                "{dtype:?}: relative difference {d} > {tolerance}"
            );
            assert!(d > 0.0, "{dtype:?} ran in f32");
        }
    }
}

#[test]
fn overflowing_half_precision_chains_rerun_in_f32() {
    // Outputs far beyond f16's range (65504) but ordinary for f32.
    let (_tmp, model) = model_copy();
    scale_unet_tensor(&model, "conv_out.weight", 1e6);
    let jobs = [job(Some(source(4)), "a photo of a cat.", &[600, 800], 9)];

    let err = chain_images(&mut load(&model, half(DType::F16, false)).unwrap(), &jobs).unwrap_err();
    match &err {
        DiffusionError::NonFinite {
            job: 0,
            stage: "UNet",
            dtype: "f16",
            ..
        } => {}
        other => panic!("expected a NonFinite error from the f16 UNet, got {other:?}"),
    }

    let reference =
        chain_images(&mut load(&model, half(DType::F32, true)).unwrap(), &jobs).unwrap();
    let mut e = load(&model, half(DType::F16, true)).unwrap();
    let rescued = chain_images(&mut e, &jobs).unwrap();
    assert_eq!(rescued.len(), 2);
    for (got, want) in rescued.iter().zip(&reference) {
        // Same f32 UNet; only the prompt embeddings were computed in f16.
        let d = relative_diff(got, want);
        assert!(d <= 1e-2, "rescued chain differs from the f32 run by {d}");
    }
    // The engine keeps working (and keeps its f32 UNet) for the next batch.
    let again = chain_images(&mut e, &jobs).unwrap();
    assert_eq!(max_abs_diff(&again[0], &rescued[0]).unwrap(), 0.0);
}

#[test]
fn non_finite_f32_output_is_an_error_not_an_image() {
    let (_tmp, model) = model_copy();
    scale_unet_tensor(&model, "conv_out.weight", 1e38);
    let mut e = load(&model, half(DType::F32, true)).unwrap();
    let err = e
        .generate(&[job(Some(source(5)), "a photo of a cat.", &[800], 1)])
        .unwrap_err();
    assert!(
        matches!(err, DiffusionError::NonFinite { dtype: "f32", .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("non-finite"), "{err}");
}

/// A cancelled token stops `generate` at its next denoising step with `Cancelled`; an engine
/// given a fresh token runs again.
#[test]
fn a_cancelled_engine_stops_and_a_fresh_token_runs_again() {
    let mut engine = load(tiny_model(), opts(SchedulerKind::Ddim, 4)).unwrap();
    let token = genie::CancelToken::new();
    engine.set_cancel(token.clone());
    let jobs = [job(Some(source(1)), "a photo of a cat.", &[500, 800], 3)];
    assert!(engine.generate(&jobs).is_ok());
    token.cancel();
    assert!(matches!(
        engine.generate(&jobs),
        Err(DiffusionError::Cancelled)
    ));
    engine.set_cancel(genie::CancelToken::new());
    assert_eq!(engine.generate(&jobs).unwrap().len(), 1);
}

/// Built-in models are written for everyone sharing a `GENIE_HOME`: their folders are readable by
/// other users (the staging folder they are renamed from is private).
#[cfg(unix)]
#[test]
fn built_in_model_folders_are_readable_by_other_users() {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().unwrap();
    let tiny_dir = tiny::ensure_tiny_model(&home.path().join("tiny")).unwrap();
    let shapes_dir =
        genie::diffusion::shapes::ensure_shapes_model(&home.path().join("shapes")).unwrap();
    for dir in [tiny_dir, shapes_dir] {
        for path in [dir.clone(), dir.join("unet"), dir.join("model_index.json")] {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o044, 0o044, "{} is {mode:o}", path.display());
        }
    }
}
