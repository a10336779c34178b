//! GEGLU, the transformer feed-forward's gate (`a · gelu(b)` over the two halves of a
//! projection), fused into one CPU pass with a vectorised erf.
//!
//! candle computes it as a chunk, two copies, an erf GELU through the C library's scalar `erf`
//! and a product: five passes and four buffers. Other devices and dtypes keep those operations.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::tensor_io::contiguous_f32;
use super::vmath::{gelu, widest_simd};

/// `h[…, :k] · gelu(h[…, k:])` for `h` `[…, 2k]`, with the exact (erf) GELU as diffusers has it.
pub fn geglu(h: &Tensor) -> Result<Tensor> {
    if h.device().is_cpu() && h.dtype() == DType::F32 && h.rank() >= 1 {
        return h.contiguous()?.apply_op1_no_bwd(&Geglu);
    }
    let halves = h.chunk(2, D::Minus1)?;
    &halves[0] * halves[1].gelu_erf()?
}

struct Geglu;

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 64;

/// Each `2k`-long row of `h` into a `k`-long row of `out`.
#[inline(always)]
fn geglu_rows(out: &mut [f32], h: &[f32], k: usize) {
    for (out, row) in out.chunks_exact_mut(k).zip(h.chunks_exact(2 * k)) {
        let (a, b) = row.split_at(k);
        for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
            *o = a * gelu(b);
        }
    }
}

impl CustomOp1 for Geglu {
    fn name(&self) -> &'static str {
        "geglu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let h = contiguous_f32(storage, layout, "GEGLU")?;
        let mut dims = layout.shape().dims().to_vec();
        let Some(last) = dims.last_mut() else {
            candle_core::bail!("GEGLU needs at least one dimension");
        };
        if *last % 2 != 0 {
            candle_core::bail!("GEGLU needs an even last dimension, got {last}");
        }
        *last /= 2;
        let k = (*last).max(1);
        let mut out = vec![0f32; h.len() / 2];
        out.par_chunks_mut(k * ROWS_PER_TASK)
            .zip(h.par_chunks(2 * k * ROWS_PER_TASK))
            .for_each(|(out, h)| {
                widest_simd(
                    #[inline(always)]
                    || geglu_rows(out, h, k),
                )
            });
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn geglu_matches_candles_chunk_gelu_and_product() {
        let dev = Device::Cpu;
        for width in [2, 6, 16, 512] {
            let h = Tensor::randn(0f32, 2.0, (2, 9, width), &dev).unwrap();
            let got = geglu(&h).unwrap();
            let halves = h.chunk(2, D::Minus1).unwrap();
            let want = (&halves[0] * halves[1].gelu_erf().unwrap()).unwrap();
            assert_eq!(got.dims(), want.dims());
            let diff = crate::diffusion::parity::compare("geglu", &got, &want)
                .unwrap()
                .max_abs;
            assert!(diff < 1e-5, "width {width}: {diff}");
        }
        let odd = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
        assert!(geglu(&odd).is_err());
    }
}
