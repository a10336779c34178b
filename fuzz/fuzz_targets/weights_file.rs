//! A weights file as the engine reads it (`genie::diffusion::weights::var_builder`): every float
//! tensor read (and converted), integer buffers skipped, or a typed error for a file that is not a
//! complete safetensors file — never a panic, and nothing allocated beyond what the file holds.
#![no_main]

use candle_core::{DType, Device};
use genie::diffusion::weights::var_builder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("diffusion_pytorch_model.safetensors");
    std::fs::write(&path, data).unwrap();
    // f32 keeps f32 tensors as read; f16 converts every one.
    for dtype in [DType::F32, DType::F16] {
        let _ = var_builder(std::slice::from_ref(&path), dtype, &Device::Cpu);
    }
});
