//! Loading a ResNet's weights from a PyTorch or safetensors file, with errors that name the
//! missing or misshapen tensors.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use burn_store::{
    ApplyError, ApplyResult, BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter,
    PytorchStore, SafetensorsStore,
};

use super::resnet::{ResNet, ResNetConfig};

/// How many names an error lists before it says "and N more".
const LISTED: usize = 8;

/// Why a backbone's weights could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackboneError {
    /// The weights file cannot be read.
    #[error("cannot read backbone weights {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file's extension is none of the formats read.
    #[error("backbone weights {path}: unknown format (expected .pth, .pt, .bin or .safetensors)")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// The file is not a readable file of its format.
    #[error("backbone weights {path} are not a readable {format} file: {message}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The format tried ("PyTorch", "safetensors").
        format: &'static str,
        /// The reader's account.
        message: String,
    },
    /// Tensors the architecture needs are not in the file.
    #[error(
        "backbone weights {path} lack {count} tensor(s) a {depth} needs: {listed}{hint}",
        count = missing.len(),
        listed = list(missing),
    )]
    Missing {
        /// The file.
        path: PathBuf,
        /// The architecture ("ResNet-18", …).
        depth: String,
        /// The missing tensor names.
        missing: Vec<String>,
        /// A few of the file's own tensor names, when none of the expected ones were found.
        hint: String,
    },
    /// Tensors of the wrong shape for the architecture.
    #[error(
        "backbone weights {path} have {count} tensor(s) of the wrong shape for a {depth}: {listed}",
        count = misshapen.len(),
        listed = list(misshapen),
    )]
    Misshapen {
        /// The file.
        path: PathBuf,
        /// The architecture.
        depth: String,
        /// `name: expected [..], found [..]`, one per tensor.
        misshapen: Vec<String>,
    },
    /// The weights could not be written.
    #[error("cannot write backbone weights {path}: {message}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The writer's account.
        message: String,
    },
}

fn list(names: &[String]) -> String {
    let mut text = names
        .iter()
        .take(LISTED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > LISTED {
        text.push_str(&format!(" and {} more", names.len() - LISTED));
    }
    text
}

/// Key rewrites from the usual checkpoint layouts to [`ResNet`]'s paths. Applied in order.
const REMAP: [(&str, &str); 3] = [
    // Wrappers: a nested `state_dict`/`model` entry, DataParallel's `module.`, and the
    // `backbone.`/`encoder.` of self-supervised and few-shot checkpoints (UniSiam and others).
    (
        r"^((state_dict|model|module|backbone|encoder|feature_extractor|net)\.)+",
        "",
    ),
    (r"\.downsample\.0\.", ".downsample.conv."),
    (r"\.downsample\.1\.", ".downsample.bn."),
];

/// Loads a ResNet of `config`'s shape from `path`: `.safetensors`, or PyTorch's pickle format
/// (`.pth`, `.pt`, `.bin`; a `state_dict` or `model` entry is unwrapped). Every tensor the
/// network needs must be present with its shape; the file's other tensors (a classifier head,
/// `num_batches_tracked`) are ignored.
pub fn load_resnet(
    path: &Path,
    config: ResNetConfig,
    device: &Device,
) -> Result<ResNet, BackboneError> {
    let io = |source| BackboneError::Io {
        path: path.to_path_buf(),
        source,
    };
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let mut model = config.init(device);
    let loaded = match extension.as_str() {
        "safetensors" => {
            let bytes = crate::safe_open::read(path).map_err(io)?;
            let mut store = REMAP.iter().fold(
                SafetensorsStore::from_bytes(Some(bytes))
                    .with_from_adapter(PyTorchToBurnAdapter)
                    .allow_partial(true)
                    .validate(false),
                |store, (from, to)| store.with_key_remapping(from, *to),
            );
            guarded(path, "safetensors", || model.load_from(&mut store))?
        }
        "pth" | "pt" | "bin" | "tar" => {
            // Refuses FIFOs and devices before the reader opens the path itself.
            crate::safe_open::open_regular(path).map_err(io)?;
            let mut store = REMAP.iter().fold(
                PytorchStore::from_file(path)
                    .allow_partial(true)
                    .validate(false),
                |store, (from, to)| store.with_key_remapping(from, *to),
            );
            guarded(path, "PyTorch", || model.load_from(&mut store))?
        }
        _ => {
            return Err(BackboneError::UnknownFormat {
                path: path.to_path_buf(),
            })
        }
    };
    check(path, config, &loaded)?;
    Ok(model)
}

/// Writes `model` to `path` as safetensors in torchvision's names (`bn1.weight`/`bias` for batch
/// norm's gamma/beta, `downsample.0`/`.1`): what [`load_resnet`] reads back, and what PyTorch's
/// `resnet.load_state_dict(safetensors.torch.load_file(path), strict=False)` takes (without the
/// `fc` head). The file is written whole to a temporary name and renamed into place.
pub fn save_resnet(model: &ResNet, path: &Path) -> Result<(), BackboneError> {
    let failed = |message: String| BackboneError::Write {
        path: path.to_path_buf(),
        message,
    };
    let mut store = SafetensorsStore::from_bytes(None)
        .with_to_adapter(BurnToPyTorchAdapter)
        .with_key_remapping(r"\.downsample\.conv\.", ".downsample.0.")
        .with_key_remapping(r"\.downsample\.bn\.", ".downsample.1.");
    model
        .save_into(&mut store)
        .map_err(|e| failed(e.to_string()))?;
    let bytes = store.get_bytes().map_err(|e| failed(e.to_string()))?;
    crate::image_io::write_atomic(path, &bytes).map_err(|e| failed(e.to_string()))
}

/// Runs a store's load; burn-store's readers are third-party parsers of user files, so a panic
/// in one on a hostile file is reported as an unreadable file rather than ending the process.
fn guarded<E: std::fmt::Display>(
    path: &Path,
    format: &'static str,
    load: impl FnOnce() -> Result<ApplyResult, E>,
) -> Result<ApplyResult, BackboneError> {
    let unreadable = |message| BackboneError::Unreadable {
        path: path.to_path_buf(),
        format,
        message,
    };
    match catch_unwind(AssertUnwindSafe(load)) {
        Ok(result) => result.map_err(|e| unreadable(e.to_string())),
        Err(payload) => {
            let text = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "no message".into());
            Err(unreadable(format!("the reader failed: {text}")))
        }
    }
}

/// Turns burn-store's summary into an error when anything the network needs was not loaded.
fn check(path: &Path, config: ResNetConfig, result: &ApplyResult) -> Result<(), BackboneError> {
    let depth = format!("{} (width {})", config.depth, config.width);
    let misshapen: Vec<String> = result
        .errors
        .iter()
        .map(|e| match e {
            ApplyError::ShapeMismatch {
                path,
                expected,
                found,
            } => format!(
                "{}: expected {:?}, found {:?}",
                checkpoint_name(path),
                expected.as_slice(),
                found.as_slice()
            ),
            other => other.to_string(),
        })
        .collect();
    if !misshapen.is_empty() {
        return Err(BackboneError::Misshapen {
            path: path.to_path_buf(),
            depth,
            misshapen,
        });
    }
    if !result.missing.is_empty() {
        let mut missing: Vec<String> = result
            .missing
            .iter()
            .map(|(p, _)| checkpoint_name(p))
            .collect();
        missing.sort();
        let hint = if result.applied.is_empty() && !result.unused.is_empty() {
            format!(
                " (none of the expected names were found; the file has e.g. {})",
                result
                    .unused
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            String::new()
        };
        return Err(BackboneError::Missing {
            path: path.to_path_buf(),
            depth,
            missing,
            hint,
        });
    }
    Ok(())
}

/// A [`ResNet`] path as the checkpoint names it (torchvision's `weight`/`bias` for batch norm's
/// `gamma`/`beta`, `downsample.0/1`), so an error names what the user can look for in the file.
fn checkpoint_name(path: &str) -> String {
    let path = path
        .replace(".downsample.conv.", ".downsample.0.")
        .replace(".downsample.bn.", ".downsample.1.");
    if let Some(stem) = path.strip_suffix(".gamma") {
        format!("{stem}.weight")
    } else if let Some(stem) = path.strip_suffix(".beta") {
        format!("{stem}.bias")
    } else {
        path
    }
}
