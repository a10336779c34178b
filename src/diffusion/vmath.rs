//! Vectorisable `exp` and `erf` for f32: branch-free polynomials that the CPU kernels' loops
//! (softmax, the fused SiLU, GEGLU) turn into SIMD code, where the C library's scalar calls
//! cannot be.

/// `e^x` for f32, branch-free: `x = n·ln 2 + f` with |f| ≤ ln 2 / 2, `e^f` by its Taylor
/// polynomial to degree 7, and `2^n` written into the exponent bits. Below −70 the answer is 0
/// (e^−70 ≈ 4e-31, which no softmax row or SiLU can tell from 0): every result, and every
/// product of it with a softmax's 1/sum, stays a normal float, where a denormal would cost
/// about a hundred cycles per operation. Above 88.3 it is about 2e38 instead of infinity.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n·LN2_HI is exact for the n that occur.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5·2^23: adding and subtracting it rounds to the nearest integer without a branch.
    const ROUND: f32 = 12_582_912.0;
    let flushed = x < FLUSH_BELOW;
    let x = x.clamp(FLUSH_BELOW, 88.3);
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
    if flushed {
        0.0
    } else {
        p * scale
    }
}

/// Where [`exp`] answers 0.
const FLUSH_BELOW: f32 = -70.0;

/// Runs `kernel` compiled for AVX2 and FMA when this CPU has them (eight f32 lanes instead of the
/// baseline's four), else as built. `kernel` should be `#[inline(always)]` code, so that it is
/// compiled inside the AVX2 function.
#[inline(always)]
pub(crate) fn widest_simd(kernel: impl FnOnce()) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has both features, checked just above.
        unsafe { with_avx2(kernel) };
        return;
    }
    kernel();
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2(kernel: impl FnOnce()) {
    kernel();
}

/// `erf(x)` for f32 (Abramowitz and Stegun 7.1.26 on |x|, odd extension): absolute error below
/// 1e-6 in f32 arithmetic (1.5e-7 in exact arithmetic), branch-free.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152_1,
        1.061_405_4,
    ];
    let z = x.abs();
    let t = 1.0 / (1.0 + P * z);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let y = 1.0 - poly * exp(-z * z);
    y.copysign(x)
}

/// The exact (erf) GELU: `x · Φ(x)`.
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_an_ulp_or_two_of_the_c_library() {
        let mut worst = 0f32;
        let mut x = FLUSH_BELOW;
        while x < 88.0 {
            let (got, want) = (exp(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 2e-7, "relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-70.1), 0.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert!(exp(FLUSH_BELOW).is_normal());
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn erf_and_gelu_are_within_1e_6_of_double_precision() {
        let mut worst = 0f64;
        let mut x = -6.0f32;
        while x < 6.0 {
            let want = candle_core::cpu::erf::erf_f64(x as f64);
            worst = worst.max((erf(x) as f64 - want).abs());
            x += 0.001_37;
        }
        assert!(worst < 1e-6, "erf: absolute error {worst}");
        assert!(erf(0.0).abs() < 1e-6);
        assert_eq!(erf(-2.0), -erf(2.0));
        let exact =
            |x: f64| 0.5 * x * (1.0 + candle_core::cpu::erf::erf_f64(x / std::f64::consts::SQRT_2));
        for x in [-5.0f32, -1.0, -0.1, 0.0, 0.3, 1.0, 4.0] {
            let error = (gelu(x) as f64 - exact(x as f64)).abs();
            assert!(error < 1e-6 * (1.0 + x.abs() as f64), "gelu({x}): {error}");
        }
    }
}
