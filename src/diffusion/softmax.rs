//! Softmax over the last dimension on the CPU, with an `exp` the compiler vectorises.
//!
//! candle's CPU softmax calls the C library's scalar `expf` once per score; in the shapes
//! model's self-attention (256 tokens, 8 heads) that was a quarter of a denoising step
//! (`perf`, BENCHMARKS.md). [`super::vmath::exp`] is a polynomial the loop here turns into SIMD
//! code. Other devices and dtypes take candle's softmax unchanged.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use candle_nn as nn;
use rayon::prelude::*;

use super::tensor_io::contiguous_f32;
use super::vmath::{exp, widest_simd};

/// `softmax(x)` over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 && x.rank() >= 1 {
        x.contiguous()?.apply_op1_no_bwd(&SoftmaxLastDim)
    } else {
        nn::ops::softmax_last_dim(x)
    }
}

struct SoftmaxLastDim;

/// Rows per parallel task: enough work per task to pay for it.
const ROWS_PER_TASK: usize = 64;

#[inline(always)]
fn softmax_row(out: &mut [f32], row: &[f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for (o, &v) in out.iter_mut().zip(row) {
        *o = exp(v - max);
    }
    // Eight partial sums: a sum the compiler may not reorder is a sum it cannot vectorise.
    let mut lanes = [0f32; 8];
    let mut chunks = out.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    let sum = lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
    let inv = 1.0 / sum;
    for o in out.iter_mut() {
        *o *= inv;
    }
}

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "softmax-last-dim-fast-exp"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "the softmax")?;
        let dim = layout.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(dim * ROWS_PER_TASK)
            .zip(x.par_chunks(dim * ROWS_PER_TASK))
            .for_each(|(out, x)| {
                widest_simd(
                    #[inline(always)]
                    || {
                        for (out, row) in out.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
                            softmax_row(out, row);
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn softmax_matches_candles_on_rows_of_every_length() {
        let dev = Device::Cpu;
        for len in [1, 7, 8, 9, 64, 77, 256] {
            let x = Tensor::randn(0f32, 4.0, (3, 5, len), &dev).unwrap();
            let got = softmax_last_dim(&x).unwrap();
            let want = nn::ops::softmax_last_dim(&x).unwrap();
            let diff = crate::diffusion::parity::compare("softmax", &got, &want)
                .unwrap()
                .max_abs;
            assert!(diff < 1e-6, "rows of {len}: {diff}");
        }
        // A transposed (strided) input is made contiguous first.
        let x = Tensor::randn(0f32, 1.0, (6, 4), &dev).unwrap().t().unwrap();
        let got = softmax_last_dim(&x).unwrap();
        let want = nn::ops::softmax_last_dim(&x.contiguous().unwrap()).unwrap();
        let diff = crate::diffusion::parity::compare("softmax", &got, &want)
            .unwrap()
            .max_abs;
        assert!(diff < 1e-6, "{diff}");
    }
}
