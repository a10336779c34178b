//! How the engine samples (everything here changes the pixels), and the device and dtype names.

use candle_core::{DType, Device};

use super::{DiffusionError, SchedulerKind};

/// Engine options, or a device or dtype name, that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionsError {
    /// A dtype name that is not f32, f16 or bf16.
    #[error("dtype {0} (use f32, f16 or bf16)")]
    Dtype(String),
    /// bf16 asked for on the CPU.
    #[error(
        "bf16 needs a CUDA device: candle's CPU backend has no bf16 matrix multiply (use f16 or \
         f32 on the CPU)"
    )]
    Bf16OnCpu,
    /// A chain or prompt-cache limit of 0.
    #[error("max_chains_per_call, prompt_cache and threads must be at least 1")]
    ZeroLimit,
    /// A guidance scale that is NaN or infinite.
    #[error("guidance {0} is not a finite number")]
    Guidance(f64),
    /// An image size the model cannot take.
    #[error(
        "size {size} must be a positive multiple of {multiple}, at most {max}, for this model"
    )]
    Size {
        /// Asked for.
        size: u32,
        /// What it must be a multiple of (the VAE factor × the UNet's downsampling).
        multiple: usize,
        /// [`MAX_SIZE`](super::MAX_SIZE).
        max: u32,
    },
    /// A device name that is neither `cpu` nor `cuda:N`.
    #[error("unknown device {0:?} (expected cpu or cuda:N)")]
    UnknownDevice(String),
    /// A CUDA device in a build without the `cuda` feature.
    #[error("device {0:?} needs a build with the `cuda` feature (see scripts/build-cuda.sh)")]
    CudaNotBuilt(String),
    /// A dtype name genie does not know.
    #[error("unknown dtype {0:?} (expected f32, f16 or bf16)")]
    UnknownDtype(String),
}

impl EngineOptions {
    /// Checks what can be checked without the model: dtype, device, limits, guidance.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if !matches!(self.dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(OptionsError::Dtype(format!("{:?}", self.dtype)));
        }
        if self.dtype == DType::BF16 && self.device.is_cpu() {
            return Err(OptionsError::Bf16OnCpu);
        }
        if self.max_chains_per_call == Some(0) || self.prompt_cache == 0 || self.threads == Some(0)
        {
            return Err(OptionsError::ZeroLimit);
        }
        if !self.guidance.is_finite() {
            return Err(OptionsError::Guidance(self.guidance));
        }
        Ok(())
    }
}

/// Largest image side an engine accepts. Attention memory grows with the fourth power of the
/// side (SD 1.5 at 1024 px already needs ~17 GB for one guided chain's largest attention map);
/// a larger request is a typed error, not an allocation failure that aborts the process.
pub const MAX_SIZE: u32 = 1024;

/// How the engine samples; everything here changes the pixels.
///
/// New settings may be added: start from [`EngineOptions::default`] and set fields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EngineOptions {
    /// The sampler.
    pub scheduler: SchedulerKind,
    /// N: the length of the full timestep grid (r = 1 runs all of it).
    pub steps: usize,
    /// Classifier-free guidance scale; ≤ 1 disables guidance (one UNet branch).
    pub guidance: f64,
    /// Image side length; `None` uses the model's native size (UNet `sample_size` × VAE factor).
    pub size: Option<u32>,
    /// Weights and activations of the UNet and text encoder (the VAE always runs in f32).
    pub dtype: DType,
    /// Where the engine runs.
    pub device: Device,
    /// Most chains evaluated by one UNet call (each is two rows with guidance). `None` sizes it
    /// from the attention matrices one row needs (0.5 GiB at 512 px for SD 1.5) against a budget
    /// of 2 GiB on the CPU and 16 GiB on a GPU: 2 and 16 chains for SD 1.5 at 512 px.
    pub max_chains_per_call: Option<usize>,
    /// Prompt embeddings kept (one per target class is typical); least recently used go first.
    pub prompt_cache: usize,
    /// With an f16/bf16 `dtype`, rerun a chain whose latents come out non-finite (half-precision
    /// overflow) with an f32 UNet, built from the same files on first need, instead of failing
    /// the batch. Chains that stay finite are untouched, so this changes no cached pixels.
    pub half_fallback: bool,
    /// CPU threads the engine computes on, in a thread pool of its own. `None` (the default)
    /// uses the process's pool, every core. `Some(1)` suits several engines side by side, one per
    /// core (`GeneratorConfig::devices` = `["cpu", "cpu"]`): on small models a UNet call keeps
    /// two threads only partly busy, so two one-thread engines make more images per second than
    /// one two-thread engine (BENCHMARKS.md). The images are the same either way.
    pub threads: Option<usize>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            scheduler: SchedulerKind::DpmSolverPp,
            steps: 50,
            guidance: 7.5,
            size: None,
            dtype: DType::F32,
            device: Device::Cpu,
            max_chains_per_call: None,
            prompt_cache: 256,
            half_fallback: true,
            threads: None,
        }
    }
}

pub(super) fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "f32",
    }
}

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(spec: &str) -> Result<Device, DiffusionError> {
    match spec.trim() {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                None => 0,
                Some(n) => n
                    .parse::<usize>()
                    .map_err(|_| OptionsError::UnknownDevice(s.to_string()))?,
            };
            if cfg!(feature = "cuda") {
                Ok(Device::new_cuda(ordinal)?)
            } else {
                Err(OptionsError::CudaNotBuilt(s.to_string()).into())
            }
        }
        other => Err(OptionsError::UnknownDevice(other.to_string()).into()),
    }
}

/// Parses `f32`, `f16` or `bf16`.
pub fn parse_dtype(spec: &str) -> Result<DType, OptionsError> {
    match spec.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" | "fp16" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(OptionsError::UnknownDtype(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each bad option is its own variant, so callers (the CLI, `genie serve`) can tell them apart.
    #[test]
    fn bad_options_are_typed() {
        let with = |f: fn(&mut EngineOptions)| {
            let mut options = EngineOptions::default();
            f(&mut options);
            options.validate()
        };
        assert_eq!(with(|_| {}), Ok(()));
        assert_eq!(
            with(|o| o.dtype = DType::U8),
            Err(OptionsError::Dtype("U8".into()))
        );
        assert_eq!(
            with(|o| o.dtype = DType::BF16),
            Err(OptionsError::Bf16OnCpu)
        );
        assert_eq!(with(|o| o.prompt_cache = 0), Err(OptionsError::ZeroLimit));
        assert_eq!(
            with(|o| o.max_chains_per_call = Some(0)),
            Err(OptionsError::ZeroLimit)
        );
        assert!(matches!(
            with(|o| o.guidance = f64::NAN),
            Err(OptionsError::Guidance(g)) if g.is_nan()
        ));
        assert_eq!(parse_dtype(" FP16 "), Ok(DType::F16));
        assert_eq!(
            parse_dtype("f8"),
            Err(OptionsError::UnknownDtype("f8".into()))
        );
        assert!(matches!(
            parse_device("tpu:0"),
            Err(DiffusionError::Options(OptionsError::UnknownDevice(d))) if d == "tpu:0"
        ));
        assert!(matches!(
            parse_device("cuda:x"),
            Err(DiffusionError::Options(OptionsError::UnknownDevice(_)))
        ));
        if !cfg!(feature = "cuda") {
            assert!(matches!(
                parse_device("cuda:1"),
                Err(DiffusionError::Options(OptionsError::CudaNotBuilt(_)))
            ));
        }
    }
}
