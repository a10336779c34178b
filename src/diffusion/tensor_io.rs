//! Tensors in and out of the engine: decoded images to 8-bit RGB, initial noise from a file.

use candle_core::{CpuStorage, DType, Device, Layout, Tensor};
use image::RgbImage;

use super::DiffusionError;

/// `[3, H, W]` floats in [0, 1] → 8-bit RGB, rounding as diffusers' `numpy_to_pil` does.
pub fn tensor_to_rgb(image: &Tensor) -> Result<RgbImage, DiffusionError> {
    let (c, h, w) = image.dims3()?;
    if c != 3 {
        return Err(DiffusionError::ImageShape {
            dims: image.dims().to_vec(),
        });
    }
    let bytes = (image.to_device(&Device::Cpu)?.to_dtype(DType::F32)? * 255.0)?
        .round()?
        .clamp(0f32, 255f32)?
        .to_dtype(DType::U8)?
        .permute((1, 2, 0))?
        .flatten_all()?
        .to_vec1::<u8>()?;
    RgbImage::from_raw(w as u32, h as u32, bytes).ok_or_else(|| DiffusionError::ImageShape {
        dims: image.dims().to_vec(),
    })
}

/// Noise from a safetensors file's `noise` tensor of `shape` (parity fixtures, reproductions).
pub fn load_noise_file(
    path: &std::path::Path,
    shape: [usize; 4],
) -> Result<Vec<f32>, DiffusionError> {
    let bad = |message: String| DiffusionError::BadWeights {
        file: path.to_path_buf(),
        message,
    };
    let tensors =
        candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| bad(e.to_string()))?;
    let noise = tensors
        .get("noise")
        .ok_or_else(|| bad("no tensor named \"noise\"".into()))?;
    if noise.dims() != shape {
        return Err(bad(format!(
            "noise has shape {:?}; expected {shape:?}",
            noise.dims()
        )));
    }
    Ok(noise
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

/// The f32 elements of a contiguous CPU operand of a custom operation (genie's fused kernels).
pub(super) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&storage.as_slice::<f32>()?[start..end]),
        None => candle_core::bail!("{op} needs contiguous operands"),
    }
}
