//! 2-D convolutions on the CPU as one matrix product over a contiguous im2col, bias fused.
//!
//! candle's CPU convolution re-packs the kernel on every call (a strided gather of the whole
//! weight: 59 MB for the UNet's 1280-channel 3×3 convolutions), transposes the input to NHWC,
//! writes its im2col tile with a stride of the tile width and scatters the result back to NCHW, and
//! it multiplies each sample of a batch by the weight separately. At the UNet's low resolutions
//! (4 or 16 pixels) these copies cost more than the multiplication itself.
//!
//! [`Conv2d`] keeps the weight as loaded (`[c_out, c_in·k·k]` row-major is already the left
//! matrix), writes im2col rows contiguously (`[c_in·k·k, pixels]`, the NCHW-friendly order, so an
//! input row is one `memcpy`), and multiplies once: for small images the whole batch is one product
//! (the weight is read once per call, not once per sample); for large ones each sample is
//! multiplied tile by tile straight into the output with the bias already in place, so the
//! im2col never exceeds [`COL_BUDGET`] floats. Other devices, dtypes and group/dilated
//! convolutions take candle's `Conv2d` unchanged.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn as nn;
use rayon::prelude::*;

use super::tensor_io::contiguous_f32;

/// How this module's operations are named in errors.
const OP: &str = "the CPU convolution";

/// Most floats one im2col buffer holds (16 MiB): larger images are multiplied in row tiles.
pub const COL_BUDGET: usize = 4 << 20;

/// A batch is multiplied as one product when it has at most this many output pixels in all;
/// beyond that the per-sample products are large enough to keep the GEMM busy on their own.
const BATCHED_PIXELS: usize = 1024;

/// diffusers' `Conv2d` (weights `weight` `[c_out, c_in, k, k]` and `bias` `[c_out]`).
#[derive(Debug, Clone)]
pub struct Conv2d {
    candle: nn::Conv2d,
    op: ConvOp,
}

/// What a convolution's arithmetic depends on besides its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConvShape {
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
}

/// The CPU kernel as a candle operation: the shape, and the bias as plain floats (it is added
/// while the output is written, never as a tensor).
#[derive(Debug, Clone)]
struct ConvOp {
    shape: ConvShape,
    bias: Vec<f32>,
}

impl Conv2d {
    /// Loads a `kernel`×`kernel` convolution with a bias under `vb`, as `candle_nn::conv2d` does.
    pub fn new(
        c_in: usize,
        c_out: usize,
        kernel: usize,
        config: nn::Conv2dConfig,
        vb: nn::VarBuilder,
    ) -> Result<Self> {
        let candle = nn::conv2d(c_in, c_out, kernel, config, vb)?;
        let bias = match candle.bias() {
            Some(b) => b.to_dtype(DType::F32)?.to_vec1()?,
            None => vec![0.0; c_out],
        };
        let shape = ConvShape {
            c_in,
            c_out,
            kernel,
            stride: config.stride,
            padding: config.padding,
        };
        Ok(Conv2d {
            candle,
            op: ConvOp { shape, bias },
        })
    }

    /// `self(x) + residual`, the residual added while the output is written (on the CPU).
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        if !self.fast_path(x) || residual.dtype() != DType::F32 {
            return self.candle.forward(x)? + residual;
        }
        let weight = self.candle.weight().contiguous()?;
        x.contiguous()?
            .apply_op3_no_bwd(&weight, &residual.contiguous()?, &self.op)
    }

    fn fast_path(&self, x: &Tensor) -> bool {
        let config = self.candle.config();
        x.device().is_cpu()
            && x.dtype() == DType::F32
            && x.rank() == 4
            && self.candle.weight().dtype() == DType::F32
            && config.groups == 1
            && config.dilation == 1
            && config.stride > 0
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !self.fast_path(x) {
            return self.candle.forward(x);
        }
        let weight = self.candle.weight().contiguous()?;
        x.contiguous()?.apply_op2_no_bwd(&weight, &self.op)
    }
}

impl ConvOp {
    fn run(
        &self,
        x: &[f32],
        x_shape: &Shape,
        weight: &[f32],
        residual: Option<(&[f32], &Shape)>,
    ) -> Result<(CpuStorage, Shape)> {
        let ConvShape {
            c_in,
            c_out,
            kernel: k,
            padding,
            ..
        } = self.shape;
        let (n, c, h, w) = x_shape.dims4()?;
        if c != c_in || weight.len() != c_out * c_in * k * k {
            candle_core::bail!("conv2d of {c_in} channels ({c_out} out, {k}x{k}) applied to {c}");
        }
        if h + 2 * padding < k || w + 2 * padding < k {
            candle_core::bail!("conv2d: a {h}x{w} input is smaller than the {k}x{k} kernel");
        }
        let geometry = Geometry::new(self.shape, h, w);
        let out_shape = Shape::from((n, c_out, geometry.out_h, geometry.out_w));
        let residual = match residual {
            Some((_, shape)) if shape != &out_shape => candle_core::bail!(
                "conv2d: a residual of shape {shape:?} added to an output of {out_shape:?}"
            ),
            Some((r, _)) => Some(r),
            None => None,
        };
        let out = conv2d_f32(&geometry, n, x, weight, &self.bias, residual, COL_BUDGET);
        Ok((CpuStorage::F32(out), out_shape))
    }
}

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        "conv2d-im2col-gemm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, weight) = (contiguous_f32(s1, l1, OP)?, contiguous_f32(s2, l2, OP)?);
        self.run(x, l1.shape(), weight, None)
    }
}

impl CustomOp3 for ConvOp {
    fn name(&self) -> &'static str {
        "conv2d-im2col-gemm-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, weight) = (contiguous_f32(s1, l1, OP)?, contiguous_f32(s2, l2, OP)?);
        let residual = contiguous_f32(s3, l3, OP)?;
        self.run(x, l1.shape(), weight, Some((residual, l3.shape())))
    }
}

/// One convolution's sizes for one input size.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    conv: ConvShape,
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
}

impl Geometry {
    fn new(conv: ConvShape, h: usize, w: usize) -> Self {
        let out = |size: usize| (size + 2 * conv.padding - conv.kernel) / conv.stride + 1;
        Geometry {
            conv,
            h,
            w,
            out_h: out(h),
            out_w: out(w),
        }
    }

    fn out_pixels(&self) -> usize {
        self.out_h * self.out_w
    }

    /// Rows of the weight matrix's transpose: one per (input channel, kernel row, kernel column).
    fn col_rows(&self) -> usize {
        self.conv.c_in * self.conv.kernel * self.conv.kernel
    }

    /// Writes the im2col row of (`channel`, `ky`, `kx`) for output rows `rows` of one sample
    /// `image` (`[c_in, h, w]`): `row` is `rows.len() · out_w` long.
    fn fill_row(
        &self,
        image: &[f32],
        (channel, ky, kx): (usize, usize, usize),
        rows: std::ops::Range<usize>,
        row: &mut [f32],
    ) {
        let ConvShape {
            stride, padding, ..
        } = self.conv;
        let plane = &image[channel * self.h * self.w..(channel + 1) * self.h * self.w];
        // Output columns whose input column lies inside the image: ox·stride + kx − padding ∈ [0, w).
        let first = padding.saturating_sub(kx).div_ceil(stride).min(self.out_w);
        let last = ((self.w + padding).saturating_sub(kx))
            .div_ceil(stride)
            .clamp(first, self.out_w);
        for (oy, out) in rows.zip(row.chunks_exact_mut(self.out_w)) {
            let iy = (oy * stride + ky) as isize - padding as isize;
            if iy < 0 || iy >= self.h as isize {
                out.fill(0.0);
                continue;
            }
            let input = &plane[iy as usize * self.w..(iy as usize + 1) * self.w];
            out[..first].fill(0.0);
            out[last..].fill(0.0);
            if first == last {
                continue;
            }
            let start = first * stride + kx - padding;
            if stride == 1 {
                out[first..last].copy_from_slice(&input[start..start + (last - first)]);
            } else {
                for (o, &v) in out[first..last]
                    .iter_mut()
                    .zip(input[start..].iter().step_by(stride))
                {
                    *o = v;
                }
            }
        }
    }

    /// Fills `col` (`[col_rows, rows.len() · out_w]`) for output rows `rows` of one sample.
    fn im2col(&self, image: &[f32], rows: std::ops::Range<usize>, col: &mut [f32]) {
        let width = rows.len() * self.out_w;
        col.par_chunks_mut(width)
            .enumerate()
            .for_each(|(r, row)| self.fill_row(image, self.tap(r), rows.clone(), row));
    }

    /// The (input channel, kernel row, kernel column) of im2col row `r`.
    fn tap(&self, r: usize) -> (usize, usize, usize) {
        let k = self.conv.kernel;
        (r / (k * k), (r / k) % k, r % k)
    }

    /// The 1×1, stride-1, unpadded case, where a sample is its own im2col.
    fn is_pointwise(&self) -> bool {
        self.conv.kernel == 1 && self.conv.stride == 1 && self.conv.padding == 0
    }
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]`, all row-major with the given row strides.
#[allow(clippy::too_many_arguments)]
fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_row: usize,
    accumulate: bool,
    lhs: &[f32],
    rhs: &[f32],
    rhs_row: usize,
) {
    debug_assert!(m == 0 || dst.len() >= (m - 1) * dst_row + n);
    debug_assert!(lhs.len() >= m * k);
    debug_assert!(k == 0 || rhs.len() >= (k - 1) * rhs_row + n);
    // The pool this runs in: the process's, or an engine's own (`EngineOptions::threads`).
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 && m * n * k >= 1 << 16 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the slices hold every element the strides reach (checked above in debug builds,
    // and by construction in `conv2d_f32`), and `dst` does not alias `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_row as isize,
            accumulate,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            rhs_row as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// The convolution of `n` samples `x` (`[n, c_in, h, w]`) plus `residual` if any (both
/// `[n, c_out, out_h, out_w]`). `col_budget` bounds the im2col buffer in floats (a parameter so
/// tests can force the tiling).
fn conv2d_f32(
    g: &Geometry,
    n: usize,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    col_budget: usize,
) -> Vec<f32> {
    let (c_out, rows, pixels) = (g.conv.c_out, g.col_rows(), g.out_pixels());
    let sample_len = g.conv.c_in * g.h * g.w;
    let mut out = vec![0f32; n * c_out * pixels];
    if pixels == 0 || n == 0 {
        return out;
    }
    if n > 1 && n * pixels <= BATCHED_PIXELS && rows * n * pixels <= col_budget {
        // The whole batch side by side: one product reads the weight once.
        let width = n * pixels;
        let mut col = vec![0f32; rows * width];
        // Each im2col row holds every sample's segment, written in place.
        col.par_chunks_mut(width).enumerate().for_each(|(r, row)| {
            for (image, segment) in x.chunks_exact(sample_len).zip(row.chunks_exact_mut(pixels)) {
                g.fill_row(image, g.tap(r), 0..g.out_h, segment);
            }
        });
        let mut product = vec![0f32; c_out * width];
        matmul(
            (c_out, width, rows),
            &mut product,
            width,
            false,
            weight,
            &col,
            width,
        );
        for (i, sample) in out.chunks_exact_mut(c_out * pixels).enumerate() {
            for (co, (dst, src)) in sample
                .chunks_exact_mut(pixels)
                .zip(product.chunks_exact(width))
                .enumerate()
            {
                let src = &src[i * pixels..(i + 1) * pixels];
                let b = bias[co];
                match residual {
                    Some(r) => {
                        let r = &r[(i * c_out + co) * pixels..][..pixels];
                        for ((d, &s), &r) in dst.iter_mut().zip(src).zip(r) {
                            *d = s + b + r;
                        }
                    }
                    None => {
                        for (d, &s) in dst.iter_mut().zip(src) {
                            *d = s + b;
                        }
                    }
                }
            }
        }
        return out;
    }
    // Sample by sample, output rows in tiles whose im2col fits the budget, multiplied straight
    // into the output (bias and residual first, then accumulated).
    let tile_rows = (col_budget / (rows * g.out_w).max(1)).clamp(1, g.out_h);
    let mut col = if g.is_pointwise() {
        Vec::new()
    } else {
        vec![0f32; rows * tile_rows * g.out_w]
    };
    for (i, (image, sample)) in x
        .chunks_exact(sample_len)
        .zip(out.chunks_exact_mut(c_out * pixels))
        .enumerate()
    {
        for (co, dst) in sample.chunks_exact_mut(pixels).enumerate() {
            match residual {
                Some(r) => {
                    let r = &r[(i * c_out + co) * pixels..][..pixels];
                    for (d, &r) in dst.iter_mut().zip(r) {
                        *d = r + bias[co];
                    }
                }
                None => dst.fill(bias[co]),
            }
        }
        if g.is_pointwise() {
            matmul(
                (c_out, pixels, rows),
                sample,
                pixels,
                true,
                weight,
                image,
                pixels,
            );
            continue;
        }
        let mut first = 0;
        while first < g.out_h {
            let last = (first + tile_rows).min(g.out_h);
            let width = (last - first) * g.out_w;
            let col = &mut col[..rows * width];
            g.im2col(image, first..last, col);
            let dst = &mut sample[first * g.out_w..];
            matmul((c_out, width, rows), dst, pixels, true, weight, col, width);
            first = last;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::parity::max_abs_diff;
    use candle_core::Device;

    fn candle_conv(
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        stride: usize,
        padding: usize,
    ) -> Vec<f32> {
        x.conv2d(weight, padding, stride, 1, 1)
            .unwrap()
            .broadcast_add(&bias.reshape((1, (), 1, 1)).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// Every path (batched, per sample, tiled, pointwise, strided, padded) against candle's
    /// convolution, on sizes that are not multiples of anything.
    #[test]
    fn matches_candles_convolution() {
        let dev = Device::Cpu;
        let cases = [
            // (n, c_in, c_out, h, w, kernel, stride, padding, budget)
            (2, 5, 7, 6, 9, 3, 1, 1, COL_BUDGET),
            (2, 5, 7, 6, 9, 3, 1, 1, 5 * 9 * 9 * 2),
            (1, 3, 4, 11, 10, 3, 2, 1, COL_BUDGET),
            (2, 3, 4, 11, 10, 3, 2, 0, COL_BUDGET),
            (3, 4, 6, 7, 5, 1, 1, 0, COL_BUDGET),
            (1, 4, 6, 40, 40, 1, 1, 0, COL_BUDGET),
            (1, 4, 6, 40, 33, 3, 1, 1, 4 * 9 * 33 * 3),
            (2, 2, 3, 40, 40, 3, 2, 1, COL_BUDGET),
            (2, 6, 2, 3, 3, 3, 1, 1, COL_BUDGET),
            (1, 2, 3, 5, 4, 1, 2, 1, COL_BUDGET),
        ];
        for (n, c_in, c_out, h, w, kernel, stride, padding, budget) in cases {
            let x = Tensor::randn(0f32, 1.0, (n, c_in, h, w), &dev).unwrap();
            let weight = Tensor::randn(0f32, 0.3, (c_out, c_in, kernel, kernel), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1.0, c_out, &dev).unwrap();
            let expected = candle_conv(&x, &weight, &bias, stride, padding);
            let conv = ConvShape {
                c_in,
                c_out,
                kernel,
                stride,
                padding,
            };
            let g = Geometry::new(conv, h, w);
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (x, weight, bias) = (flat(&x), flat(&weight), flat(&bias));
            let residual: Vec<f32> = (0..expected.len()).map(|i| (i % 7) as f32 - 3.0).collect();
            for with_residual in [false, true] {
                let r = with_residual.then_some(&residual[..]);
                let got = conv2d_f32(&g, n, &x, &weight, &bias, r, budget);
                assert_eq!(got.len(), expected.len(), "{conv:?} on {h}x{w}");
                let diff = got
                    .iter()
                    .zip(&expected)
                    .zip(&residual)
                    .map(|((a, b), r)| (a - b - if with_residual { r } else { &0.0 }).abs())
                    .fold(0f32, f32::max);
                assert!(
                    diff < 1e-4,
                    "{conv:?} on {n}x{h}x{w}, budget {budget}, residual {with_residual}: {diff}"
                );
            }
        }
    }

    /// Through the module: the fast path's output equals candle's `Conv2d` (which it falls back
    /// to off the CPU), and a wrong channel count is an error, not a panic.
    #[test]
    fn module_matches_candle_and_rejects_wrong_channels() {
        let dev = Device::Cpu;
        let varmap = nn::VarMap::new();
        let vb = nn::VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let config = nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv = Conv2d::new(4, 6, 3, config, vb.pp("c")).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 4, 8, 8), &dev).unwrap();
        let theirs = conv.candle.forward(&x).unwrap();
        let residual = Tensor::randn(0f32, 1.0, theirs.dims(), &dev).unwrap();
        let max_diff = |a: Tensor, b: &Tensor| max_abs_diff(&a, b).unwrap();
        let diff = max_diff(conv.forward(&x).unwrap(), &theirs);
        assert!(diff < 1e-4, "{diff}");
        let with_residual = conv.forward_add(&x, &residual).unwrap();
        let diff = max_diff(with_residual, &(&theirs + &residual).unwrap());
        assert!(diff < 1e-4, "{diff}");
        let wrong = Tensor::zeros((1, 5, 8, 8), DType::F32, &dev).unwrap();
        assert!(conv.forward(&wrong).is_err());
        let wrong_residual = Tensor::zeros((2, 6, 8, 7), DType::F32, &dev).unwrap();
        assert!(conv.forward_add(&x, &wrong_residual).is_err());
    }
}
