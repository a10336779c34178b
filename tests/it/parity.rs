//! Parity with diffusers: the tiny model saved by `tests/parity/make_fixtures.py`
//! (diffusers `save_pretrained`) goes through genie's real loader and must reproduce diffusers'
//! img2img (and text-to-image at r = 1) for DDIM and DPM-Solver++ within 1e-4 relative error.

use crate::support::copy_dir;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use genie::diffusion::parity::{self, Metric};
use genie::diffusion::{
    ClipTokenizer, EngineOptions, ModelSource, SchedulerConfig, SchedulerKind, SdEngine,
};
use genie::{image_io, Job, NoiseLevel};
use serde_json::Value;

const TOLERANCE: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity/fixtures")
}

fn meta() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("meta.json")).unwrap()).unwrap()
}

/// The prompt the fixtures were made with.
fn fixture_prompt() -> String {
    meta()["prompt"].as_str().unwrap().to_string()
}

fn tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("outputs.safetensors"), &Device::Cpu).unwrap()
}

/// max |a − b| / max |b|.
fn rel_err(actual: &Tensor, expected: &Tensor) -> f32 {
    parity::compare("tensor", actual, expected)
        .unwrap()
        .max_relative
}

fn engine(kind: SchedulerKind) -> SdEngine {
    let mut opts = EngineOptions::default();
    opts.scheduler = kind;
    opts.steps = 50;
    opts.guidance = 7.5;
    SdEngine::load(&ModelSource::Local(fixtures().join("model")), opts).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    numbers(v).into_iter().map(|x| x as u32).collect()
}

/// A JSON array of non-negative integers.
fn numbers(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

#[test]
fn tokenizer_matches_transformers_on_both_file_layouts() {
    let m = meta();
    let prompt = m["prompt"].as_str().unwrap();
    let expected = ids(&m["token_ids"]["prompt"]);
    let expected_empty = ids(&m["token_ids"]["negative_prompt"]);
    // tokenizer.json as transformers wrote it.
    let dir = fixtures().join("model/tokenizer");
    let tok = ClipTokenizer::from_dir(&dir, 77).unwrap();
    assert_eq!(tok.encode(prompt).unwrap().ids, expected);
    assert_eq!(tok.encode("").unwrap().ids, expected_empty);
    // SD 1.5's layout: vocab.json + merges.txt only.
    let tmp = tempfile::tempdir().unwrap();
    for f in [
        "vocab.json",
        "merges.txt",
        "special_tokens_map.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(dir.join(f), tmp.path().join(f)).unwrap();
    }
    let tok = ClipTokenizer::from_dir(tmp.path(), 77).unwrap();
    assert_eq!(tok.encode(prompt).unwrap().ids, expected);
    assert_eq!(tok.encode("").unwrap().ids, expected_empty);
    // transformers 5 may write its padding and truncation into tokenizer.json: ignored.
    let padded = tempfile::tempdir().unwrap();
    let mut json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
            .unwrap();
    let pad_id = expected[76];
    json["padding"] = serde_json::json!({
        "strategy": {"Fixed": 77}, "direction": "Right", "pad_to_multiple_of": null,
        "pad_id": pad_id, "pad_type_id": 0, "pad_token": "<|endoftext|>"
    });
    json["truncation"] = serde_json::json!({
        "direction": "Right", "max_length": 77, "strategy": "LongestFirst", "stride": 0
    });
    std::fs::write(padded.path().join("tokenizer.json"), json.to_string()).unwrap();
    let tok_padded = ClipTokenizer::from_dir(padded.path(), 77).unwrap();
    let e = tok_padded.encode(prompt).unwrap();
    assert_eq!(e.ids, expected);
    assert!(!e.truncated);
    assert_eq!(tok_padded.encode("").unwrap().ids, expected_empty);
    // Over-long prompts are cut to 77 ids with EOS last, as diffusers does.
    let long = tok.encode(&"cat ".repeat(200)).unwrap();
    assert!(long.truncated);
    assert_eq!(long.ids.len(), 77);
    assert_eq!(long.ids[76], expected[16]); // <|endoftext|>
}

#[test]
fn text_embeddings_and_vae_latents_match() {
    let t = tensors();
    let mut e = engine(SchedulerKind::DpmSolverPp);
    let prompt = e.prompt_embedding(&fixture_prompt()).unwrap();
    let err = rel_err(&prompt, &t["prompt_embeds"]);
    assert!(err < TOLERANCE, "prompt embedding rel err {err}");
    let uncond = e.prompt_embedding("").unwrap();
    let err = rel_err(&uncond, &t["uncond_embeds"]);
    assert!(err < TOLERANCE, "uncond embedding rel err {err}");
    let src = image_io::load_source(&fixtures().join("source.png"), 64).unwrap();
    let latents = e.source_latents(&src).unwrap();
    let err = rel_err(&latents, &t["source_latents"]);
    assert!(err < TOLERANCE, "VAE mode latents rel err {err}");
}

/// The runs of the fixture, evaluated by genie as one job per scheduler: all three levels run as
/// chains over one grid, which must not change any chain's result.
#[test]
fn img2img_and_txt2img_match_diffusers() {
    let m = meta();
    let t = tensors();
    let noise: Vec<f32> = t["noise"].flatten_all().unwrap().to_vec1().unwrap();
    let src = image_io::load_source(&fixtures().join("source.png"), 64).unwrap();
    let levels = [500u16, 800, 1000].map(|x| NoiseLevel::from_thousandths(x).unwrap());
    for kind in [SchedulerKind::Ddim, SchedulerKind::DpmSolverPp] {
        let mut e = engine(kind);
        let job = Job {
            source: Some(Arc::new(src.clone())),
            prompt: m["prompt"].as_str().unwrap().to_string(),
            levels: levels.to_vec(),
            seed: 0,
            noise: Some(Arc::new(noise.clone())),
        };
        let out = e.run_chains(&[job]).unwrap();
        assert_eq!(out[0].len(), 3);
        for chain in &out[0] {
            let name = format!("{}_r{}", kind.name(), chain.level.thousandths());
            let run = &m["runs"][&name];
            assert_eq!(
                chain.steps_run as u64,
                run["num_steps_run"].as_u64().unwrap(),
                "{name} steps"
            );
            assert_eq!(
                chain.start_timestep as u64,
                run["first_timestep"].as_u64().unwrap(),
                "{name} first timestep"
            );
            let err = rel_err(&chain.latents, &t[&format!("{name}_latents")]);
            assert!(err < TOLERANCE, "{name}: final latents rel err {err}");
            let err = rel_err(
                &chain.image.unsqueeze(0).unwrap(),
                &t[&format!("{name}_image")],
            );
            assert!(err < TOLERANCE, "{name}: decoded image rel err {err}");
            eprintln!("{name}: ok");
        }
    }
}

/// Where img2img starts, for both schedulers, every r in {0.1, …, 1.0} and N in {10, 25, 50},
/// against diffusers' own `set_timesteps` + `get_timesteps`.
#[test]
fn start_steps_match_diffusers_get_timesteps() {
    let m = meta();
    let table = &m["start_step_table"];
    let config = fixtures().join("model/scheduler/scheduler_config.json");
    let mut checked = 0;
    for kind in [SchedulerKind::Ddim, SchedulerKind::DpmSolverPp] {
        let s = SchedulerConfig::from_file(&config, kind).unwrap();
        for n in [10usize, 25, 50] {
            let entry = &table[kind.name()][n.to_string()];
            let grid = s.grid(n).unwrap();
            let full = numbers(&entry["timesteps"]);
            assert_eq!(grid.timesteps, full, "{} N={n} grid", kind.name());
            for tenth in 1..=10u16 {
                let key = if tenth == 10 {
                    "1.0".to_string()
                } else {
                    format!("0.{tenth}")
                };
                let r = NoiseLevel::from_thousandths(tenth * 100).unwrap();
                let want = &entry["strengths"][&key];
                assert_eq!(
                    r.start_index(n) as u64,
                    want["t_start"].as_u64().unwrap(),
                    "{} N={n} r={key}",
                    kind.name()
                );
                let slice = numbers(&want["timesteps"]);
                assert_eq!(
                    &grid.timesteps[r.start_index(n)..],
                    &slice[..],
                    "{} N={n} r={key}",
                    kind.name()
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 60);
}

/// One UNet call, and decoding several chains in one VAE batch, match diffusers row for row.
#[test]
fn unet_call_and_batched_decode_match() {
    let t = tensors();
    let mut e = engine(SchedulerKind::Ddim);
    let cond = e.prompt_embedding(&fixture_prompt()).unwrap();
    let uncond = e.prompt_embedding("").unwrap();
    for (context, name) in [(&cond, "unet_t981_cond"), (&uncond, "unet_t981_uncond")] {
        let out = e.predict_noise(&t["noise"], 981, context).unwrap();
        let err = rel_err(&out, &t[name]);
        assert!(err < TOLERANCE, "{name}: rel err {err}");
    }
    let names = ["ddim_r500", "ddim_r800", "dpm_r1000"];
    let latents: Vec<&Tensor> = names.iter().map(|n| &t[&format!("{n}_latents")]).collect();
    let images = e.decode(&Tensor::cat(&latents, 0).unwrap()).unwrap();
    for (row, name) in names.iter().enumerate() {
        let err = rel_err(
            &images.get(row).unwrap().unsqueeze(0).unwrap(),
            &t[&format!("{name}_image")],
        );
        assert!(err < TOLERANCE, "{name} decoded in a batch: rel err {err}");
    }
}

/// The packaged check (`genie parity`) passes on the CPU in f32 (max-relative 1e-4) and in f16
/// (L2-relative 1e-2), and compares every tensor the fixtures hold results for.
#[test]
fn packaged_parity_check_passes_in_f32_and_f16() {
    for dtype in [DType::F32, DType::F16] {
        let mut options = EngineOptions::default();
        options.dtype = dtype;
        options.half_fallback = false;
        let report = parity::check(&fixtures(), &options, Metric::for_dtype(dtype)).unwrap();
        assert_eq!(report.checks.len(), 5 + 2 * 6, "{dtype:?}");
        assert!(report.passed(), "{dtype:?}: {report:#?}");
        if dtype == DType::F16 {
            // Half precision really ran: it cannot be as close as f32.
            assert!(report.worst() > 1e-4, "{report:#?}");
        }
    }
}

/// A model that differs slightly from the one diffusers ran fails the check, naming the tensors.
#[test]
fn packaged_parity_check_fails_on_a_different_model() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixtures(), tmp.path());
    let unet = tmp
        .path()
        .join("model/unet/diffusion_pytorch_model.safetensors");
    let mut weights = candle_core::safetensors::load(&unet, &Device::Cpu).unwrap();
    let w = (&weights["conv_out.bias"] + 1e-2).unwrap();
    weights.insert("conv_out.bias".into(), w);
    candle_core::safetensors::save(&weights, &unet).unwrap();

    let report = parity::check(
        tmp.path(),
        &EngineOptions::default(),
        Metric::for_dtype(DType::F32),
    )
    .unwrap();
    assert!(!report.passed());
    let failed: Vec<&str> = report
        .checks
        .iter()
        .filter(|c| c.error(report.metric) > report.tolerance)
        .map(|c| c.name.as_str())
        .collect();
    assert!(failed.contains(&"unet_t981_cond"), "{failed:?}");
    assert!(!failed.contains(&"prompt_embeds"), "{failed:?}");
}

#[test]
fn broken_fixtures_are_typed_errors_that_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixtures(), tmp.path());
    std::fs::write(tmp.path().join("outputs.safetensors"), b"not safetensors").unwrap();
    let err = parity::check(
        tmp.path(),
        &EngineOptions::default(),
        Metric::for_dtype(DType::F32),
    )
    .unwrap_err();
    assert!(
        matches!(&err, genie::diffusion::DiffusionError::Fixtures { path, .. } if path.ends_with("outputs.safetensors")),
        "{err:?}"
    );
    std::fs::remove_file(tmp.path().join("meta.json")).unwrap();
    let err = parity::check(
        tmp.path(),
        &EngineOptions::default(),
        Metric::for_dtype(DType::F32),
    )
    .unwrap_err();
    assert!(err.to_string().contains("meta.json"), "{err}");
}
