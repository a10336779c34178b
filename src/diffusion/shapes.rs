//! genie's shapes model: a small Stable Diffusion (the SD 1.5 component family, 64 px) trained
//! on the drawn-shapes dataset of [`crate::synthetic`], embedded in the crate and written to
//! disk on first use, so that the default run shows the method on pictures that mean something.
//!
//! It knows the prompts `a photo of a {class}.` for the ten classes of
//! [`crate::synthetic::CLASS_NAMES`] (and `""`, for classifier-free guidance). Its files are the
//! diffusers layout with `.fp16.safetensors` weights, loaded by the same loader as SD 1.5.
//! `scripts/shapes-model/` trains it (Python, diffusers, CPU, about an hour on two cores); the
//! README there lists the committed files' hashes.

use std::path::{Path, PathBuf};

use super::{DiffusionError, ModelSource};

/// Bumped whenever the committed model changes: a new folder, so no old copy is ever reused.
pub const SHAPES_MODEL_VERSION: u32 = 1;

/// The model's files, relative to its folder, with their bytes.
pub const FILES: &[(&str, &[u8])] = &[
    (
        "model_index.json",
        include_bytes!("../../assets/shapes-model/model_index.json"),
    ),
    (
        "scheduler/scheduler_config.json",
        include_bytes!("../../assets/shapes-model/scheduler/scheduler_config.json"),
    ),
    (
        "text_encoder/config.json",
        include_bytes!("../../assets/shapes-model/text_encoder/config.json"),
    ),
    (
        "text_encoder/model.fp16.safetensors",
        include_bytes!("../../assets/shapes-model/text_encoder/model.fp16.safetensors"),
    ),
    (
        "tokenizer/merges.txt",
        include_bytes!("../../assets/shapes-model/tokenizer/merges.txt"),
    ),
    (
        "tokenizer/tokenizer.json",
        include_bytes!("../../assets/shapes-model/tokenizer/tokenizer.json"),
    ),
    (
        "tokenizer/tokenizer_config.json",
        include_bytes!("../../assets/shapes-model/tokenizer/tokenizer_config.json"),
    ),
    (
        "tokenizer/vocab.json",
        include_bytes!("../../assets/shapes-model/tokenizer/vocab.json"),
    ),
    (
        "unet/config.json",
        include_bytes!("../../assets/shapes-model/unet/config.json"),
    ),
    (
        "unet/diffusion_pytorch_model.fp16.safetensors",
        include_bytes!("../../assets/shapes-model/unet/diffusion_pytorch_model.fp16.safetensors"),
    ),
    (
        "vae/config.json",
        include_bytes!("../../assets/shapes-model/vae/config.json"),
    ),
    (
        "vae/diffusion_pytorch_model.fp16.safetensors",
        include_bytes!("../../assets/shapes-model/vae/diffusion_pytorch_model.fp16.safetensors"),
    ),
];

/// Where `--model shapes` keeps its model: `$GENIE_HOME/shapes-v{N}`, or the user's cache
/// folder (as for the tiny model).
pub fn default_shapes_dir() -> PathBuf {
    super::tiny::genie_home().join(format!("shapes-v{SHAPES_MODEL_VERSION}"))
}

/// Whether `dir` holds exactly the embedded files.
fn is_complete(dir: &Path) -> bool {
    FILES.iter().all(|(name, bytes)| {
        let path = dir.join(name);
        // Size first: a wrong size needs no read.
        std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == bytes.len() as u64)
            && std::fs::read(&path).is_ok_and(|on_disk| on_disk == *bytes)
    })
}

/// Writes the shapes model into `dir` unless it is already there, byte for byte (a damaged or
/// outdated copy is replaced); returns `dir`. Safe against concurrent writers: the model is
/// staged in a temporary folder and renamed into place.
pub fn ensure_shapes_model(dir: &Path) -> Result<PathBuf, DiffusionError> {
    if is_complete(dir) {
        return Ok(dir.to_path_buf());
    }
    let write_err = |path: &Path, e: std::io::Error| DiffusionError::write(path)(e);
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| write_err(parent, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".shapes-model-")
        .tempdir_in(parent)
        .map_err(|e| write_err(parent, e))?;
    for (name, bytes) in FILES {
        let path = tmp.path().join(name);
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder).map_err(|e| write_err(folder, e))?;
        }
        std::fs::write(&path, bytes).map_err(|e| write_err(&path, e))?;
    }
    super::tiny::make_readable_by_all(tmp.path())?;
    if dir.exists() {
        // A damaged or partial copy: move it aside, then replace it.
        let aside = parent.join(format!(
            ".shapes-model-old-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        if std::fs::rename(dir, &aside).is_ok() {
            let _ = std::fs::remove_dir_all(&aside);
        }
    }
    let staged = tmp.keep();
    if let Err(e) = std::fs::rename(&staged, dir) {
        let _ = std::fs::remove_dir_all(&staged);
        // Another process may have won the race; its copy is identical.
        if !is_complete(dir) {
            return Err(write_err(dir, e));
        }
    }
    Ok(dir.to_path_buf())
}

/// The shapes model as a [`ModelSource`], written to [`default_shapes_dir`] on first use.
pub fn source() -> Result<ModelSource, DiffusionError> {
    Ok(ModelSource::Local(ensure_shapes_model(
        &default_shapes_dir(),
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_once_and_repairs_a_damaged_copy() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("shapes");
        ensure_shapes_model(&dir).unwrap();
        assert!(is_complete(&dir));
        let weights = dir.join("unet/diffusion_pytorch_model.fp16.safetensors");
        let mut bytes = std::fs::read(&weights).unwrap();
        bytes[1000] ^= 0x40;
        std::fs::write(&weights, &bytes).unwrap();
        assert!(!is_complete(&dir));
        ensure_shapes_model(&dir).unwrap();
        assert!(is_complete(&dir));
        // Nothing is left staged beside it.
        let extra: Vec<_> = std::fs::read_dir(home.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != "shapes")
            .collect();
        assert!(extra.is_empty(), "{extra:?}");
    }
}
