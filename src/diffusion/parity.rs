//! Checks this build of the engine, on a chosen device and dtype, against parity fixtures that
//! diffusers wrote (`tests/parity/make_fixtures.py`): the way to validate a new machine or GPU.
//!
//! The fixtures hold a tiny model saved with diffusers' `save_pretrained`, a source image, the
//! initial noise, and diffusers' intermediate and final tensors for DDIM and DPM-Solver++ img2img
//! at r ∈ {0.5, 0.8, 1.0}. [`check`] loads that model through the real loader and compares every
//! tensor by max |a − b| / max |b| and by ‖a − b‖₂ / ‖b‖₂ ([`Metric`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use serde_json::Value;

use super::{DiffusionError, EngineOptions, ModelSource, SchedulerKind, SdEngine};
use crate::engine::{Job, NoiseLevel};
use crate::image_io;

/// How a tensor's distance from diffusers' is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// max |a − b| / max |b|: the strict, worst-element bound, for f32.
    MaxRelative,
    /// ‖a − b‖₂ / ‖b‖₂: the bound for half precision, whose ~1e-3 rounding makes a few elements
    /// of every tensor differ by more than the tensor does on average.
    L2Relative,
}

impl Metric {
    /// The documented bound for a dtype: max-relative 1e-4 in f32, L2-relative 1e-2 in f16/bf16.
    pub fn for_dtype(dtype: DType) -> (Metric, f32) {
        if dtype == DType::F32 {
            (Metric::MaxRelative, 1e-4)
        } else {
            (Metric::L2Relative, 1e-2)
        }
    }
}

/// One compared tensor.
#[derive(Clone, Debug, Serialize)]
pub struct ParityCheck {
    /// The tensor's name in the fixtures.
    pub name: String,
    /// max |genie − diffusers|; infinite when a step count or timestep differs.
    pub max_abs: f32,
    /// max |genie − diffusers| / max |diffusers|; infinite when a step count or timestep differs.
    pub max_relative: f32,
    /// ‖genie − diffusers‖₂ / ‖diffusers‖₂; infinite when a step count or timestep differs.
    pub l2_relative: f32,
}

impl ParityCheck {
    /// The error under `metric` (NaN counts as infinite).
    pub fn error(&self, metric: Metric) -> f32 {
        let e = match metric {
            Metric::MaxRelative => self.max_relative,
            Metric::L2Relative => self.l2_relative,
        };
        if e.is_nan() {
            f32::INFINITY
        } else {
            e
        }
    }
}

/// Every comparison of one run of [`check`].
#[derive(Clone, Debug, Serialize)]
pub struct ParityReport {
    /// The device genie ran on.
    pub device: String,
    /// The dtype genie ran in.
    pub dtype: String,
    /// How differences are measured.
    pub metric: Metric,
    /// The largest difference that passes.
    pub tolerance: f32,
    /// One per compared tensor.
    pub checks: Vec<ParityCheck>,
}

impl ParityReport {
    /// The largest error under the report's metric.
    pub fn worst(&self) -> f32 {
        self.checks
            .iter()
            .map(|c| c.error(self.metric))
            .fold(0.0, f32::max)
    }

    /// Whether every check is within the tolerance.
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.worst() <= self.tolerance
    }
}

/// The largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(actual: &Tensor, expected: &Tensor) -> Result<f32, DiffusionError> {
    Ok(compare("max_abs_diff", actual, expected)?.max_abs)
}

/// Compares two tensors of the same shape under both metrics.
pub fn compare(
    name: &str,
    actual: &Tensor,
    expected: &Tensor,
) -> Result<ParityCheck, DiffusionError> {
    let flat = |t: &Tensor| -> Result<Tensor, DiffusionError> {
        Ok(t.to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?)
    };
    if actual.dims() != expected.dims() {
        return Err(DiffusionError::ShapeMismatch {
            name: name.to_string(),
            actual: actual.dims().to_vec(),
            expected: expected.dims().to_vec(),
        });
    }
    let (a, b) = (flat(actual)?, flat(expected)?);
    let diff = (&a - &b)?;
    let max = |t: &Tensor| -> Result<f32, DiffusionError> { Ok(t.abs()?.max(0)?.to_scalar()?) };
    let norm = |t: &Tensor| -> Result<f32, DiffusionError> {
        Ok(t.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt())
    };
    let max_abs = max(&diff)?;
    Ok(ParityCheck {
        name: name.to_string(),
        max_abs,
        max_relative: max_abs / max(&b)?.max(1e-12),
        l2_relative: norm(&diff)? / norm(&b)?.max(1e-12),
    })
}

/// The fixture files, read once.
struct Fixtures {
    dir: PathBuf,
    meta: Value,
    tensors: HashMap<String, Tensor>,
}

impl Fixtures {
    fn open(dir: &Path) -> Result<Self, DiffusionError> {
        let bad = |file: &str, message: String| DiffusionError::Fixtures {
            path: dir.join(file),
            message,
        };
        let text = crate::safe_open::read_to_string(&dir.join("meta.json"))
            .map_err(|e| bad("meta.json", e.to_string()))?;
        let meta: Value =
            serde_json::from_str(&text).map_err(|e| bad("meta.json", e.to_string()))?;
        // candle opens the file itself; a FIFO in its place would block that open.
        crate::safe_open::open_regular(&dir.join("outputs.safetensors"))
            .map_err(|e| bad("outputs.safetensors", e.to_string()))?;
        let tensors = candle_core::safetensors::load(dir.join("outputs.safetensors"), &Device::Cpu)
            .map_err(|e| bad("outputs.safetensors", e.to_string()))?;
        Ok(Fixtures {
            dir: dir.to_path_buf(),
            meta,
            tensors,
        })
    }

    fn tensor(&self, name: &str) -> Result<&Tensor, DiffusionError> {
        self.tensors
            .get(name)
            .ok_or_else(|| DiffusionError::Fixtures {
                path: self.dir.join("outputs.safetensors"),
                message: format!("no tensor named {name:?}"),
            })
    }

    fn field(&self, path: &[&str]) -> Result<&Value, DiffusionError> {
        let mut v = &self.meta;
        for key in path {
            v = v.get(key).ok_or_else(|| DiffusionError::Fixtures {
                path: self.dir.join("meta.json"),
                message: format!("no field {}", path.join(".")),
            })?;
        }
        Ok(v)
    }

    fn number(&self, path: &[&str]) -> Result<u64, DiffusionError> {
        self.field(path)?
            .as_u64()
            .ok_or_else(|| DiffusionError::Fixtures {
                path: self.dir.join("meta.json"),
                message: format!("{} is not a whole number", path.join(".")),
            })
    }

    fn text(&self, path: &[&str]) -> Result<&str, DiffusionError> {
        self.field(path)?
            .as_str()
            .ok_or_else(|| DiffusionError::Fixtures {
                path: self.dir.join("meta.json"),
                message: format!("{} is not a string", path.join(".")),
            })
    }
}

/// Runs the fixtures' model with `options` (its scheduler, steps and guidance are replaced by the
/// fixtures' own) and compares text embeddings, VAE latents, one UNet call, and the final latents
/// and images of every run; `bound` is the metric and tolerance that decide
/// [`ParityReport::passed`] (usually [`Metric::for_dtype`]).
pub fn check(
    fixtures_dir: &Path,
    options: &EngineOptions,
    bound: (Metric, f32),
) -> Result<ParityReport, DiffusionError> {
    let fx = Fixtures::open(fixtures_dir)?;
    let prompt = fx.text(&["prompt"])?.to_string();
    let steps = fx.number(&["num_inference_steps"])? as usize;
    let size = fx.number(&["height"])? as u32;
    let guidance =
        fx.field(&["guidance_scale"])?
            .as_f64()
            .ok_or_else(|| DiffusionError::Fixtures {
                path: fixtures_dir.join("meta.json"),
                message: "guidance_scale is not a number".into(),
            })?;
    let source = image_io::load_source(&fixtures_dir.join("source.png"), size).map_err(|e| {
        DiffusionError::Fixtures {
            path: fixtures_dir.join("source.png"),
            message: e.to_string(),
        }
    })?;
    let noise: Vec<f32> = fx
        .tensor("noise")?
        .flatten_all()?
        .to_dtype(DType::F32)?
        .to_vec1()?;
    let model = ModelSource::Local(fixtures_dir.join("model"));
    let levels = [500u16, 800, 1000].map(|t| NoiseLevel::from_thousandths(t).expect("valid level"));

    let mut checks: Vec<ParityCheck> = Vec::new();
    for kind in [SchedulerKind::Ddim, SchedulerKind::DpmSolverPp] {
        let mut engine = SdEngine::load(
            &model,
            EngineOptions {
                scheduler: kind,
                steps,
                guidance,
                size: Some(size),
                ..options.clone()
            },
        )?;
        if kind == SchedulerKind::Ddim {
            let cond = engine.prompt_embedding(&prompt)?;
            let uncond = engine.prompt_embedding("")?;
            let latents = engine.source_latents(&source)?;
            checks.push(compare(
                "prompt_embeds",
                &cond,
                fx.tensor("prompt_embeds")?,
            )?);
            checks.push(compare(
                "uncond_embeds",
                &uncond,
                fx.tensor("uncond_embeds")?,
            )?);
            checks.push(compare(
                "source_latents",
                &latents,
                fx.tensor("source_latents")?,
            )?);
            let x = fx.tensor("noise")?.to_device(&options.device)?;
            for (context, name) in [(&cond, "unet_t981_cond"), (&uncond, "unet_t981_uncond")] {
                let eps = engine.predict_noise(&x, 981, context)?;
                checks.push(compare(name, &eps, fx.tensor(name)?)?);
            }
        }
        let job = Job {
            source: Some(Arc::new(source.clone())),
            prompt: prompt.clone(),
            levels: levels.to_vec(),
            seed: 0,
            noise: Some(Arc::new(noise.clone())),
        };
        for chain in engine.run_chains(&[job])?.remove(0) {
            let name = format!("{}_r{}", kind.name(), chain.level.thousandths());
            let steps_run = fx.number(&["runs", &name, "num_steps_run"])?;
            let first = fx.number(&["runs", &name, "first_timestep"])?;
            if chain.steps_run as u64 != steps_run || chain.start_timestep as u64 != first {
                checks.push(ParityCheck {
                    name: format!("{name}_schedule"),
                    max_abs: f32::INFINITY,
                    max_relative: f32::INFINITY,
                    l2_relative: f32::INFINITY,
                });
            }
            let latents = format!("{name}_latents");
            checks.push(compare(&latents, &chain.latents, fx.tensor(&latents)?)?);
            let image = format!("{name}_image");
            checks.push(compare(
                &image,
                &chain.image.unsqueeze(0)?,
                fx.tensor(&image)?,
            )?);
        }
    }
    Ok(ParityReport {
        device: match options.device.location() {
            candle_core::DeviceLocation::Cpu => "cpu".to_string(),
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
        },
        dtype: super::options::dtype_name(options.dtype).to_string(),
        metric: bound.0,
        tolerance: bound.1,
        checks,
    })
}
