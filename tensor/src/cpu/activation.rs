//! GELU (erf form, as `torch.nn.functional.gelu` with approximate='none') and its gradient,
//! elementwise over contiguous slices, plus the branch-free f32 erf they are built on.
//!
//! gelu(x) = x Φ(x) = 0.5 x (1 + erf(x/√2)); gelu'(x) = Φ(x) + x φ(x) with
//! φ(x) = exp(-x²/2)/√(2π). f64 uses the exact `erf_f64`; f32 uses [`erfc_scaled`], an
//! Abramowitz–Stegun 7.1.26 form (the one PyTorch's vectorised CPU erf uses) evaluated with
//! fused multiply-adds and a vectorisable exp. For x < 0 the f32 GELU takes
//! 1 + erf(u) = erfc(|u|) straight from that form instead of cancelling 1 - (1 - ...), so its
//! relative error stays below 2e-3 down to x = -5 (where gelu(x) ~ -1.4e-6) rather than losing
//! every digit there.

use crate::cpu::math::erf_f64;
use crate::cpu::simd::{build, multiversion, Filled, Uninit, VecFloat};

const FRAC_1_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
/// 1/√(2π).
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// 2^(c·y) for a constant c < 0 and y >= 0 (+inf allowed, NaN propagates): the exp of
/// [`erfc_scaled`], cut down from `math::exp_f32` for this one use, as the f32 GELU is
/// compute-bound (measured ~20% faster than `exp_f32(-m·y)` there).
/// - Base 2 with the scale folded in: k = round(c·y) and f = c·y - k come from two fused
///   multiply-adds of the same product (f rounded once, |f| <= 1/2), so neither a scaling
///   multiply nor the two-constant ln 2 reduction of `exp_f32` is needed. The product c·y is
///   off by up to 126 · 2^-24 relative where it is large, but there the result is scaled by
///   erfc's other factors (all small) and the absolute error stays below 1e-8.
/// - The exponent is never positive, so one clamp suffices: c·y is held at >= -126 (2^k stays a
///   normal float) and no special cases follow. Below that (|x| > 13.2 in GELU, where the exact
///   value is below 1.2e-38) it returns ~2^-126 instead of 0.
#[inline(always)]
fn exp2_neg(y: f32, c: f32) -> f32 {
    // 1.5 * 2^23 + 127: adding it rounds to the integer k and leaves k + 127, the biased exponent
    // of 2^k, in the low mantissa bits (as in `exp_f32`).
    const SHIFT: f32 = 12_583_039.0;
    let lim = -126.0 / c;
    let yc = if y > lim { lim } else { y }; // NaN stays NaN
    let kf = yc.mul_add(c, SHIFT);
    let k = kf - SHIFT;
    let f = yc.mul_add(c, -k);
    // 2^f on [-1/2, 1/2] as 1 + f·p(f), p fitted for relative error (2e-9 in exact arithmetic,
    // 8e-8 evaluated in f32; the fit's first coefficient rounds to ln 2 in f32).
    const P: [f32; 6] = [
        std::f32::consts::LN_2,
        0.240_226_48,
        0.055_503_324,
        0.009_618_438,
        0.001_339_887_6,
        0.000_153_533_58,
    ];
    let mut p = P[5];
    for &coef in P[..5].iter().rev() {
        p = p.mul_add(f, coef);
    }
    p.mul_add(f, 1.0) * f32::from_bits(kf.to_bits() << 23)
}

/// (c·erfc(s·b), exp(-(s·b)²)) for b >= 0, by Abramowitz & Stegun 7.1.26:
/// erfc(a) ≈ t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) exp(-a²), t = 1 / (1 + p a).
/// `s` (the argument scale, 1/√2 for GELU), `m` = s² (exactly: 1 or 1/2) and `c` (the output
/// scale, 1/2 for Φ) are literals at every call, so after inlining they fold into the
/// constants and cost nothing at run time. Branch-free, so loops over it vectorise.
#[inline(always)]
fn erfc_scaled(b: f32, s: f32, m: f32, c: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152,
        1.061_405_4,
    ];
    let t = 1.0 / (P * s).mul_add(b, 1.0);
    let mut poly = A[4] * c;
    for &a in A[..4].iter().rev() {
        poly = poly.mul_add(t, a * c);
    }
    // exp(-m b²) = 2^(-m log2(e) b²).
    let e = exp2_neg(b * b, -m * std::f32::consts::LOG2_E);
    (t * poly * e, e)
}

/// (erfc(a), exp(-a²)) for a >= 0 (see [`erfc_scaled`]).
#[inline(always)]
pub fn erfc_parts(a: f32) -> (f32, f32) {
    erfc_scaled(a, 1.0, 1.0, 1.0)
}

/// Branch-free f32 erf. Max absolute error 4.9e-7 over [-10, 10], at |x| ~ 0.18 (the A&S bound
/// 1.5e-7 plus f32 rounding in the alternating polynomial and exp; measured against `erf_f64` on
/// a 1e-5 grid in the tests).
#[inline(always)]
pub fn erf_fast(x: f32) -> f32 {
    let (q, _) = erfc_parts(x.abs());
    (1.0 - q).copysign(x)
}

/// GELU and its derivative in a type's own precision.
pub trait GeluFloat: VecFloat {
    fn gelu(self) -> Self;
    fn gelu_grad(self) -> Self;
}

impl GeluFloat for f64 {
    #[inline(always)]
    fn gelu(self) -> f64 {
        0.5 * self * (1.0 + erf_f64(self * FRAC_1_SQRT_2))
    }
    #[inline(always)]
    fn gelu_grad(self) -> f64 {
        let cdf = 0.5 * (1.0 + erf_f64(self * FRAC_1_SQRT_2));
        cdf + self * FRAC_1_SQRT_2PI * (-0.5 * self * self).exp()
    }
}

/// Φ(x) = (1 + erf(x/√2)) / 2 and exp(-x²/2), for f32. The 1/2 is folded into the erfc
/// coefficients (exact: a power of two).
#[inline(always)]
fn cdf_f32(x: f32) -> (f32, f32) {
    let (half_q, e) = erfc_scaled(x.abs(), FRAC_1_SQRT_2 as f32, 0.5, 0.5);
    let cdf = if x < 0.0 { half_q } else { 1.0 - half_q };
    (cdf, e)
}

/// |x| beyond which exp(-x²/2) is below the smallest normal f32 and [`exp2_neg`] is clamped.
const PDF_UNDERFLOW: f32 = 13.2;

impl GeluFloat for f32 {
    #[inline(always)]
    fn gelu(self) -> f32 {
        self * cdf_f32(self).0
    }
    #[inline(always)]
    fn gelu_grad(self) -> f32 {
        let (cdf, e) = cdf_f32(self);
        // Flushes the clamped exp to 0, as the exact one is: x φ(x) is then 0 for large finite
        // x and NaN at ±inf (inf · 0), like PyTorch and the f64 path, not ±inf.
        let e = if self.abs() < PDF_UNDERFLOW { e } else { 0.0 };
        (self * FRAC_1_SQRT_2PI as f32).mul_add(e, cdf)
    }
}

/// gelu(x) elementwise.
pub fn gelu<T: GeluFloat>(x: &[T]) -> Vec<T> {
    build(x.len(), 1, |i0, len, out| gelu_map(&x[i0..i0 + len], out))
}

/// dy * gelu'(x) elementwise.
pub fn gelu_backward<T: GeluFloat>(x: &[T], dy: &[T]) -> Vec<T> {
    build(x.len(), 1, |i0, len, out| {
        let r = i0..i0 + len;
        gelu_grad_map(&x[r.clone()], &dy[r], out)
    })
}

multiversion! {
    fn gelu_map<'a, T: GeluFloat>(x: &[T], out: Uninit<'a, T>) -> Filled<'a> {
        let mut out = out;
        out.next(x.len(), x.iter().map(|&v| v.gelu()));
        out.finish()
    }
}

multiversion! {
    fn gelu_grad_map<'a, T: GeluFloat>(x: &[T], dy: &[T], out: Uninit<'a, T>) -> Filled<'a> {
        let mut out = out;
        out.next(x.len(), x.iter().zip(dy).map(|(&v, &g)| g * v.gelu_grad()));
        out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_erf_error_bound() {
        // Dense grid over [-10, 10] (beyond ±4 erf is ±1 to f32 precision).
        let mut worst = 0f64;
        for i in -1_000_000..=1_000_000 {
            let x = i as f32 * 1e-5;
            let err = (erf_fast(x) as f64 - erf_f64(x as f64)).abs();
            worst = worst.max(err);
        }
        assert!(worst < 5.5e-7, "max |erf_fast - erf| = {worst}");
        assert_eq!(erf_fast(0.0), 0.0);
        assert_eq!(erf_fast(f32::INFINITY), 1.0);
        assert_eq!(erf_fast(f32::NEG_INFINITY), -1.0);
    }

    #[test]
    fn f32_gelu_keeps_relative_accuracy_in_the_left_tail() {
        // Measured: relative error 6e-7 on [-1, 0], 5e-4 on [-4, -3], 1.6e-3 on [-5, -4]
        // (a 1 - (1 - q) form would lose all digits there: gelu(-5) ~ -1.4e-6).
        let (mut rel, mut abs) = (0f64, 0f64);
        for i in 0..=9000 {
            let x = -9.0 + i as f32 * 1e-3;
            let (want, got) = ((x as f64).gelu(), x.gelu() as f64);
            abs = abs.max((got - want).abs());
            if x >= -5.0 {
                rel = rel.max(((got - want) / want).abs());
            }
        }
        assert!(rel < 2e-3, "worst relative error on [-5, 0]: {rel}");
        assert!(abs < 3e-7, "worst absolute error on [-9, 0]: {abs}");
    }
}
