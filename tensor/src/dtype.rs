//! Element types. `DType` is the runtime tag; `WithDType` ties a Rust type to its tag and to the
//! typed buffer that holds it in CPU storage; `Float` is what the CPU kernels compute in.

use crate::storage::{Buf, CpuStorage};
use half::{bf16, f16};

/// The element type of a tensor. f64 exists for `gradcheck` (finite differences need it); the model
/// itself computes in f32 (CPU) or f32/f16/bf16 (GPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
    I64,
    U8,
}

impl DType {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
            DType::F16 | DType::BF16 => 2,
            DType::I64 => 8,
            DType::U8 => 1,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
    }

    /// The name used by safetensors headers ("F32", "BF16", ...).
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I64 => "I64",
            DType::U8 => "U8",
        }
    }

    pub fn from_safetensors_name(name: &str) -> Option<DType> {
        Some(match name {
            "F32" => DType::F32,
            "F64" => DType::F64,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "I64" => DType::I64,
            "U8" | "BOOL" => DType::U8,
            _ => return None,
        })
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I64 => "i64",
            DType::U8 => "u8",
        };
        f.write_str(s)
    }
}

/// A Rust element type that a tensor can hold.
pub trait WithDType:
    Copy + Send + Sync + PartialOrd + std::fmt::Debug + bytemuck::Pod + 'static
{
    const DTYPE: DType;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    /// The typed buffer inside a CPU storage, if it holds this type.
    fn buf(s: &CpuStorage) -> Option<&Buf<Self>>;
    fn wrap(b: Buf<Self>) -> CpuStorage;
}

macro_rules! with_dtype {
    ($t:ty, $variant:ident, $from:expr, $to:expr) => {
        impl WithDType for $t {
            const DTYPE: DType = DType::$variant;
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                $from(v)
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                $to(self)
            }
            fn buf(s: &CpuStorage) -> Option<&Buf<Self>> {
                match s {
                    CpuStorage::$variant(b) => Some(b),
                    _ => None,
                }
            }
            fn wrap(b: Buf<Self>) -> CpuStorage {
                CpuStorage::$variant(b)
            }
        }
    };
}

with_dtype!(f32, F32, |v: f64| v as f32, |v: f32| v as f64);
with_dtype!(f64, F64, |v: f64| v, |v: f64| v);
with_dtype!(f16, F16, |v| f16::from_f32(f64_to_f32_odd(v)), f16::to_f64);
with_dtype!(bf16, BF16, |v| bf16::from_f32(f64_to_f32_odd(v)), bf16::to_f64);

/// f64 -> f32 rounded to odd: toward zero, then the last bit set when inexact. Rounding that
/// f32 to nearest-even in a format with at least two fewer mantissa bits (f16, bf16) gives the
/// f64 rounded directly, with no double rounding; the kernels' `f64_to_f32_odd`
/// (`cuda/kernels/common.cuh`) is the same function. (`half`'s own `from_f64` drops the low 32
/// bits of the f64's mantissa before rounding, so a value just above a tie, such as the f32
/// 0xbfbc8002, rounded down: the CPU's bf16 casts disagreed with the bf16 GEMM's packing and the
/// GPU's casts.)
#[inline(always)]
pub fn f64_to_f32_odd(v: f64) -> f32 {
    let t = v as f32;
    if !t.is_finite() || t as f64 == v {
        return t;
    }
    let mut bits = t.to_bits();
    if (t as f64).abs() > v.abs() {
        // Rounded away from zero: step back one ulp toward zero (the same sign's next smaller
        // magnitude), which is the truncation.
        bits -= 1;
    }
    f32::from_bits(bits | 1)
}
with_dtype!(i64, I64, |v: f64| v as i64, |v: i64| v as f64);
with_dtype!(u8, U8, |v: f64| v as u8, |v: u8| v as f64);

/// The types CPU float kernels compute in (f32 and f64). f16/bf16 tensors are widened to f32,
/// computed, and narrowed back.
pub trait Float:
    WithDType
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + std::ops::MulAssign
    + std::iter::Sum
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;
    fn from_f32(v: f32) -> Self;
    fn from_usize(v: usize) -> Self;
    fn to_f32(self) -> f32;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn tanh(self) -> Self;
    fn abs(self) -> Self;
    fn powf(self, e: Self) -> Self;
    fn max(self, o: Self) -> Self;
    fn min(self, o: Self) -> Self;
    fn erf(self) -> Self;
    fn is_nan(self) -> bool;
}

macro_rules! float_impl {
    ($t:ident, $erf:path) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = $t::NEG_INFINITY;
            #[inline(always)]
            fn from_f32(v: f32) -> Self {
                v as $t
            }
            #[inline(always)]
            fn from_usize(v: usize) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f32(self) -> f32 {
                self as f32
            }
            #[inline(always)]
            fn exp(self) -> Self {
                $t::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                $t::ln(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                $t::sqrt(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                $t::tanh(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                $t::abs(self)
            }
            #[inline(always)]
            fn powf(self, e: Self) -> Self {
                $t::powf(self, e)
            }
            #[inline(always)]
            fn max(self, o: Self) -> Self {
                $t::max(self, o)
            }
            #[inline(always)]
            fn min(self, o: Self) -> Self {
                $t::min(self, o)
            }
            #[inline(always)]
            fn erf(self) -> Self {
                $erf(self)
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                $t::is_nan(self)
            }
        }
    };
}

float_impl!(f32, crate::cpu::math::erf_f32);
float_impl!(f64, crate::cpu::math::erf_f64);

#[cfg(test)]
mod tests {
    use super::*;

    /// Round-to-nearest-even of a normal f64 into a binary format with `man` mantissa bits and
    /// exponent bias `bias`, by integer arithmetic on the f64's bits (the whole remainder is the
    /// sticky part); the reference for the narrowing casts.
    fn rne_bits(v: f64, man: u32, bias: i64) -> u16 {
        let b = v.to_bits();
        let sign = (b >> 63) << 15;
        let exp = ((b >> 52) & 0x7ff) as i64 - 1023 + bias;
        let m = b & ((1 << 52) - 1);
        let shift = 52 - man;
        let (keep, rem, half) = (m >> shift, m & ((1 << shift) - 1), 1u64 << (shift - 1));
        let mut r = ((exp as u64) << man) | keep;
        if rem > half || (rem == half && keep & 1 == 1) {
            r += 1;
        }
        (sign | r) as u16
    }

    #[test]
    fn narrowing_to_bf16_and_f16_rounds_to_nearest_even_with_every_bit() {
        // The value that exposed `half::bf16::from_f64`: just above a tie, the excess in the f32's
        // last bits (which `half` drops), rounds up.
        let x = f32::from_bits(0xbfbc_8002);
        assert_eq!(<bf16 as WithDType>::from_f64(x as f64).to_bits(), 0xbfbd);
        assert_eq!(bf16::from_f32(x).to_bits(), 0xbfbd);
        // splitmix64: every bit pattern equally likely.
        let mut state = 7u64;
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let z = (state ^ (state >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        for _ in 0..200_000 {
            // Every f32 (as f64) narrows as the f32 itself does.
            let x = f32::from_bits(next() as u32);
            let (b, h) = (
                <bf16 as WithDType>::from_f64(x as f64),
                <f16 as WithDType>::from_f64(x as f64),
            );
            if x.is_nan() {
                assert!(b.is_nan() && h.is_nan());
                continue;
            }
            assert_eq!(b.to_bits(), bf16::from_f32(x).to_bits(), "bf16 of {x:e}");
            assert_eq!(h.to_bits(), f16::from_f32(x).to_bits(), "f16 of {x:e}");
            // An f64 in the normal range, and one a hair away from a bf16 / f16 tie (the
            // remainder only in the f64's lowest bits), against the integer reference.
            let v = (next() >> 11) as f64 / (1u64 << 53) as f64 * 8.0 - 4.0;
            if v.abs() < 1e-4 {
                continue;
            }
            let tie_b = f64::from_bits((v.to_bits() & !((1 << 45) - 1)) | (1 << 44));
            let tie_h = f64::from_bits((v.to_bits() & !((1 << 42) - 1)) | (1 << 41));
            for w in [v, tie_b, tie_b + tie_b * 1e-15, tie_b - tie_b * 1e-15] {
                let got = <bf16 as WithDType>::from_f64(w).to_bits();
                assert_eq!(got, rne_bits(w, 7, 127), "bf16 of {w:e}");
            }
            for w in [v, tie_h, tie_h + tie_h * 1e-15, tie_h - tie_h * 1e-15] {
                let got = <f16 as WithDType>::from_f64(w).to_bits();
                assert_eq!(got, rne_bits(w, 10, 15), "f16 of {w:e}");
            }
        }
    }

    #[test]
    fn round_to_odd_keeps_exact_values_infinities_and_signs() {
        for v in [0.0, -0.0, 1.0, -2.5, f64::INFINITY, f64::NEG_INFINITY, 1e300, -1e-300] {
            let t = f64_to_f32_odd(v);
            assert_eq!(t.is_sign_negative(), v.is_sign_negative(), "{v:e}");
            if (v as f32) as f64 == v {
                assert_eq!(t, v as f32);
            }
        }
        assert!(f64_to_f32_odd(f64::NAN).is_nan());
        // Tiny values keep their sign and become the smallest subnormal, not zero.
        assert_eq!(f64_to_f32_odd(1e-300).to_bits(), 1);
        assert_eq!(f64_to_f32_odd(-1e-300).to_bits(), 0x8000_0001);
    }
}
