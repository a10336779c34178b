//! Softmax over the last dimension on the CPU, with an `exp` the compiler vectorises.
//!
//! candle's CPU softmax calls the C library's scalar `expf` once per score; in the shapes
//! model's self-attention (256 tokens, 8 heads) that was a quarter of a denoising step
//! (`perf`, BENCHMARKS.md). [`exp`] is a branch-free polynomial (relative error below 2e-7,
//! about one f32 ulp) that the loops here and the fused SiLU turn into SIMD code. Other devices
//! and dtypes take candle's softmax unchanged.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use candle_nn as nn;
use rayon::prelude::*;

use super::tensor_io::contiguous_f32;

/// `e^x` for f32, branch-free: `x = n·ln 2 + f` with |f| ≤ ln 2 / 2, `e^f` by its Taylor
/// polynomial to degree 7, and `2^n` written into the exponent bits. Inputs are clamped to
/// [−87.3, 88.3]: below, about 1e-38 instead of a smaller number or 0; above, about 2e38
/// instead of infinity (softmax subtracts the row's maximum first, so it never goes above 0).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n·LN2_HI is exact for the n that occur.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5·2^23: adding and subtracting it rounds to the nearest integer without a branch.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let shifted = x * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let f = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + f * (1.0
            + f * (0.5
                + f * (1.0 / 6.0
                    + f * (1.0 / 24.0
                        + f * (1.0 / 120.0 + f * (1.0 / 720.0 + f * (1.0 / 5040.0)))))));
    // n sits in the low mantissa bits of `shifted` (whose bits are ROUND's plus n): integer
    // arithmetic on those bits makes 2^n without a float-to-int conversion.
    let biased = shifted
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127);
    let scale = f32::from_bits(biased << 23);
    p * scale
}

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

/// Softmax of each `dim`-long row of `x` into `out`, in the widest SIMD this CPU has.
fn softmax_rows(out: &mut [f32], x: &[f32], dim: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has both features, checked just above.
        unsafe { softmax_rows_avx2(out, x, dim) };
        return;
    }
    softmax_rows_portable(out, x, dim);
}

/// [`softmax_rows_portable`] compiled for AVX2: eight lanes instead of the baseline's four.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_rows_avx2(out: &mut [f32], x: &[f32], dim: usize) {
    softmax_rows_portable(out, x, dim);
}

#[inline(always)]
fn softmax_rows_portable(out: &mut [f32], x: &[f32], dim: usize) {
    for (out, row) in out.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
        softmax_row(out, row);
    }
}

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
            .for_each(|(out, x)| softmax_rows(out, x, dim));
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn exp_is_within_an_ulp_or_two_of_the_c_library() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 2e-7, "relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37 && exp(-1000.0) >= 0.0);
        assert!(exp(1000.0).is_finite());
    }

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
