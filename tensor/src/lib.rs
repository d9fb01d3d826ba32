//! `tensor`: the n-dimensional array under the whole stack.
//!
//! Reading order: [`DType`] (element types), [`Layout`] (shape, strides, offset: how a view maps
//! onto storage), [`Storage`] (the flat buffer, owned or memory-mapped), [`Tensor`] (storage +
//! layout), then `ops/` (one file per op family: argument checks and dispatch, the single door
//! every op passes through) and `cpu/` (the CPU kernels those ops call). With the `cuda` feature,
//! `cuda/` adds `Storage::Cuda` / `Device::Cuda(ordinal)`, `Tensor::to_device` transfers, and
//! the CUDA arms of the ops' dispatch (one file per op family, calling the `cuda` crate).

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod device;
mod dtype;
mod error;
pub mod fs;
pub mod heap;
mod layout;
pub mod memory;
pub mod ops;
pub mod profiler;
pub mod rng;
pub mod safetensors;
mod storage;
mod tensor;
pub mod testing;

pub use device::Device;
pub use dtype::{DType, Float, WithDType};
pub use error::{Error, Result};
pub use layout::{broadcast_shapes, contiguous_strides, resolve_dim, Layout};
pub use ops::matmul_bf16::{PackedEpilogue, PackedWeight};
pub use rng::Rng;
pub use storage::{Buf, CpuStorage, Storage};
pub use tensor::Tensor;
