//! [`TrainDevice`]: the burn device the classifier trains on, named at run time — burn's CPU
//! backend, or a GPU through burn's Vulkan or WebGPU backends (genie's `burn-vulkan` /
//! `burn-wgpu` features).
//!
//! burn's CUDA backend is not offered: it does not build next to genie's `cuda` feature (candle
//! and cubecl link cudarc in two incompatible ways) and its LLVM dependency is downloaded at
//! build time. Train with burn-cuda in a process of its own and generate with `genie serve`
//! (README: "Which GPU builds where").

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

/// Why a training device cannot be named or had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainDeviceError {
    /// A device name genie does not know.
    #[error(
        "unknown training device {0:?}: use cpu, vulkan[:N] or wgpu[:N] (genie's `burn-vulkan` / \
         `burn-wgpu` features), or auto (the first GPU found, else cpu)"
    )]
    Unknown(String),
    /// A GPU backend this build was compiled without.
    #[error(
        "training device {spec:?} needs genie built with the `{feature}` feature \
         (cargo build --features {feature})"
    )]
    NotBuilt {
        /// The device asked for.
        spec: String,
        /// The cargo feature it needs.
        feature: &'static str,
    },
    /// burn's CUDA backend, which genie cannot link (see the message).
    #[error(
        "burn's CUDA backend cannot live in this binary: it does not build next to genie's `cuda` \
         (candle and cubecl link cudarc differently) and downloads LLVM at build time. Train on \
         vulkan here, or train with burn-cuda in a process of your own and generate with \
         `genie serve` plus genie::remote::RemoteGenerator (README: \"Which GPU builds where\")"
    )]
    Cuda,
    /// No GPU adapter of the backend.
    #[error("no {api} GPU adapter {which} on this machine: {message}")]
    NoAdapter {
        /// "Vulkan" or "WebGPU".
        api: &'static str,
        /// Which adapter was asked for.
        which: String,
        /// The backend's account.
        message: String,
    },
}

/// A training device by name: what `--train-device` (or `BURN_DEVICE`) says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrainDeviceSpec {
    /// burn's pure-Rust CPU backend (`flex`). Also spelled `flex`.
    Cpu,
    /// A GPU through Vulkan: the N-th discrete one, or without N the first discrete, integrated
    /// or virtual one.
    Vulkan(Option<usize>),
    /// A GPU through whichever graphics API wgpu settles on (Vulkan, Metal, DX12), chosen as for
    /// [`TrainDeviceSpec::Vulkan`].
    Wgpu(Option<usize>),
    /// The first GPU the built backends find, else the CPU.
    Auto,
}

impl FromStr for TrainDeviceSpec {
    type Err = TrainDeviceError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let unknown = || TrainDeviceError::Unknown(spec.to_string());
        let lower = spec.trim().to_ascii_lowercase();
        let (api, index) = match lower.split_once(':') {
            Some((api, n)) => (api, Some(n.parse::<usize>().map_err(|_| unknown())?)),
            None => (lower.as_str(), None),
        };
        match (api, index) {
            ("cpu" | "flex", None) => Ok(TrainDeviceSpec::Cpu),
            ("auto", None) => Ok(TrainDeviceSpec::Auto),
            ("vulkan", n) => Ok(TrainDeviceSpec::Vulkan(n)),
            ("wgpu", n) => Ok(TrainDeviceSpec::Wgpu(n)),
            ("cuda", _) => Err(TrainDeviceError::Cuda),
            _ => Err(unknown()),
        }
    }
}

impl fmt::Display for TrainDeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (api, index) = match self {
            TrainDeviceSpec::Cpu => return f.write_str("cpu"),
            TrainDeviceSpec::Auto => return f.write_str("auto"),
            TrainDeviceSpec::Vulkan(n) => ("vulkan", n),
            TrainDeviceSpec::Wgpu(n) => ("wgpu", n),
        };
        match index {
            Some(n) => write!(f, "{api}:{n}"),
            None => f.write_str(api),
        }
    }
}

/// The GPU backends this build of genie has: `"vulkan"` with `burn-vulkan`, `"wgpu"` with
/// `burn-wgpu`.
pub fn built_gpu_backends() -> &'static [&'static str] {
    &[
        #[cfg(feature = "burn-vulkan")]
        "vulkan",
        #[cfg(feature = "burn-wgpu")]
        "wgpu",
    ]
}

/// An opened training device and what it is, for the start of a run's log.
#[derive(Clone, Debug)]
pub struct TrainDevice {
    device: Device,
    description: String,
    gpu: bool,
}

impl TrainDevice {
    /// Opens the device a name ([`TrainDeviceSpec`]) stands for.
    ///
    /// ```
    /// let cpu = genie::loader::TrainDevice::open("cpu")?;
    /// assert!(cpu.to_string().starts_with("cpu"));
    /// # Ok::<(), genie::loader::TrainDeviceError>(())
    /// ```
    pub fn open(spec: &str) -> Result<Self, TrainDeviceError> {
        Self::open_spec(spec.parse()?)
    }

    /// [`TrainDevice::open`] for a parsed name. GPU adapters that the graphics API runs on the CPU
    /// (lavapipe, llvmpipe) are never picked: burn's kernels are not made for them, and Mesa's
    /// lavapipe crashes compiling them.
    pub fn open_spec(spec: TrainDeviceSpec) -> Result<Self, TrainDeviceError> {
        match spec {
            TrainDeviceSpec::Cpu => Ok(Self::cpu(String::new())),
            TrainDeviceSpec::Vulkan(n) => gpu::vulkan(&spec.to_string(), n),
            TrainDeviceSpec::Wgpu(n) => gpu::wgpu(&spec.to_string(), n),
            TrainDeviceSpec::Auto => {
                let mut misses = Vec::new();
                for gpu in [TrainDeviceSpec::Vulkan(None), TrainDeviceSpec::Wgpu(None)] {
                    match Self::open_spec(gpu) {
                        Ok(device) => return Ok(device),
                        Err(TrainDeviceError::NotBuilt { .. }) => {}
                        Err(e) => misses.push(e.to_string()),
                    }
                }
                if misses.is_empty() {
                    misses.push("genie built without burn-vulkan or burn-wgpu".into());
                }
                Ok(Self::cpu(format!(" (auto: {})", misses.join("; "))))
            }
        }
    }

    fn cpu(note: String) -> Self {
        TrainDevice {
            device: Device::flex(),
            description: format!("cpu (burn flex){note}"),
            gpu: false,
        }
    }

    /// The burn device; call `.autodiff()` on a clone for training.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether this is a GPU.
    pub fn is_gpu(&self) -> bool {
        self.gpu
    }
}

impl fmt::Display for TrainDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description)
    }
}

#[cfg(any(feature = "burn-vulkan", feature = "burn-wgpu"))]
mod gpu {
    use burn::tensor::wgpu::WgpuBackend;
    use burn::tensor::{Device, DeviceKind};

    use super::{TrainDevice, TrainDeviceError};

    fn open(
        api: WgpuBackend,
        name: &'static str,
        index: Option<usize>,
    ) -> Result<TrainDevice, TrainDeviceError> {
        let kinds = match index {
            Some(n) => vec![DeviceKind::DiscreteGpu(n)],
            None => vec![
                DeviceKind::DiscreteGpu(0),
                DeviceKind::IntegratedGpu(0),
                DeviceKind::VirtualGpu(0),
            ],
        };
        let mut last = String::new();
        for kind in kinds {
            match Device::wgpu_options()
                .graphics_api(api)
                .device_kind(kind.clone())
                .init_with_setup()
            {
                Ok((device, setup)) => {
                    let info = setup.adapter.get_info();
                    return Ok(TrainDevice {
                        device,
                        description: format!(
                            "{} ({kind:?} via {:?}, driver {} {})",
                            info.name, info.backend, info.driver, info.driver_info
                        ),
                        gpu: true,
                    });
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(TrainDeviceError::NoAdapter {
            api: name,
            which: index.map_or("(discrete, integrated or virtual)".into(), |n| {
                format!("number {n} (discrete)")
            }),
            message: last,
        })
    }

    #[cfg(feature = "burn-vulkan")]
    pub fn vulkan(_spec: &str, index: Option<usize>) -> Result<TrainDevice, TrainDeviceError> {
        open(WgpuBackend::Vulkan, "Vulkan", index)
    }

    #[cfg(not(feature = "burn-vulkan"))]
    pub fn vulkan(spec: &str, _: Option<usize>) -> Result<TrainDevice, TrainDeviceError> {
        super::not_built(spec, "burn-vulkan")
    }

    #[cfg(feature = "burn-wgpu")]
    pub fn wgpu(_spec: &str, index: Option<usize>) -> Result<TrainDevice, TrainDeviceError> {
        open(WgpuBackend::Auto, "WebGPU", index)
    }

    #[cfg(not(feature = "burn-wgpu"))]
    pub fn wgpu(spec: &str, _: Option<usize>) -> Result<TrainDevice, TrainDeviceError> {
        super::not_built(spec, "burn-wgpu")
    }
}

#[cfg(not(any(feature = "burn-vulkan", feature = "burn-wgpu")))]
mod gpu {
    use super::{not_built, TrainDevice, TrainDeviceError};

    pub fn vulkan(spec: &str, _: Option<usize>) -> Result<TrainDevice, TrainDeviceError> {
        not_built(spec, "burn-vulkan")
    }

    pub fn wgpu(spec: &str, _: Option<usize>) -> Result<TrainDevice, TrainDeviceError> {
        not_built(spec, "burn-wgpu")
    }
}

#[allow(dead_code)] // unused when both GPU features are on
fn not_built(spec: &str, feature: &'static str) -> Result<TrainDevice, TrainDeviceError> {
    Err(TrainDeviceError::NotBuilt {
        spec: spec.to_string(),
        feature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        for (name, spec) in [
            ("cpu", TrainDeviceSpec::Cpu),
            ("auto", TrainDeviceSpec::Auto),
            ("vulkan", TrainDeviceSpec::Vulkan(None)),
            ("vulkan:1", TrainDeviceSpec::Vulkan(Some(1))),
            ("wgpu:0", TrainDeviceSpec::Wgpu(Some(0))),
        ] {
            assert_eq!(name.parse::<TrainDeviceSpec>().unwrap(), spec);
            assert_eq!(spec.to_string(), name);
        }
        assert_eq!(
            " FLEX ".parse::<TrainDeviceSpec>().unwrap(),
            TrainDeviceSpec::Cpu
        );
    }

    #[test]
    fn bad_names_say_what_is_accepted() {
        for bad in ["tpu", "vulkan:x", "cpu:0", "", "vulkan:-1"] {
            let err = bad.parse::<TrainDeviceSpec>().unwrap_err();
            assert!(matches!(err, TrainDeviceError::Unknown(_)), "{bad}: {err}");
            assert!(err.to_string().contains("vulkan[:N]"), "{err}");
        }
        let err = "cuda:0".parse::<TrainDeviceSpec>().unwrap_err();
        assert!(err.to_string().contains("genie serve"), "{err}");
    }

    #[test]
    fn a_backend_not_built_is_named_with_its_feature() {
        for (spec, feature) in [("vulkan", "burn-vulkan"), ("wgpu:0", "burn-wgpu")] {
            if built_gpu_backends().contains(&spec.split(':').next().unwrap()) {
                continue;
            }
            let err = TrainDevice::open(spec).unwrap_err();
            assert!(
                matches!(err, TrainDeviceError::NotBuilt { feature: f, .. } if f == feature),
                "{err}"
            );
        }
    }

    #[test]
    fn auto_falls_back_to_the_cpu_and_says_why() {
        let device = TrainDevice::open("auto").unwrap();
        if !device.is_gpu() {
            assert!(device.to_string().contains("auto:"), "{device}");
        }
    }
}
