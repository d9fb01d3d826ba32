//! The element types the simulated libraries compute with (`cudaDataType` for cuBLAS,
//! `ncclDataType_t` for NCCL: f32, f16, bf16), read from and written to raw host memory. Half
//! types are widened to f32 exactly and rounded back to nearest, ties to even, as the GPU's
//! `__float2half_rn` / `__float2bfloat16_rn` do.

use half::{bf16, f16};
use std::ffi::c_void;

/// An element type of a simulated library call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    /// `CUDA_R_32F` / `ncclFloat32`
    F32,
    /// `CUDA_R_16F` / `ncclFloat16`
    F16,
    /// `CUDA_R_16BF` / `ncclBfloat16`
    Bf16,
}

impl DataType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DataType::F32 => 4,
            DataType::F16 | DataType::Bf16 => 2,
        }
    }

    /// Element `i` of the array at `p`, widened to f32.
    ///
    /// # Safety
    /// `p` must address at least `i + 1` elements of this type.
    pub(crate) unsafe fn load(self, p: *const c_void, i: usize) -> f32 {
        match self {
            DataType::F32 => p.cast::<f32>().add(i).read_unaligned(),
            DataType::F16 => f16::from_bits(p.cast::<u16>().add(i).read_unaligned()).to_f32(),
            DataType::Bf16 => bf16::from_bits(p.cast::<u16>().add(i).read_unaligned()).to_f32(),
        }
    }

    /// Stores `v` rounded to this type (to nearest, ties to even) as element `i` at `p`.
    ///
    /// # Safety
    /// `p` must address at least `i + 1` writable elements of this type.
    pub(crate) unsafe fn store(self, p: *mut c_void, i: usize, v: f32) {
        let bits = match self {
            DataType::F32 => return p.cast::<f32>().add(i).write_unaligned(v),
            DataType::F16 => f16::from_f32(v).to_bits(),
            DataType::Bf16 => bf16::from_f32(v).to_bits(),
        };
        p.cast::<u16>().add(i).write_unaligned(bits)
    }
}
