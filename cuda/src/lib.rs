//! `cuda`: the CUDA backend's runtime. It knows raw device buffers, shapes and strides, never
//! `Tensor`: the tensor crate's dispatch (behind its `cuda` feature) calls these functions with
//! its storages and layouts.
//!
//! Reading order: [`availability`] and [`Gpu`] (`gpu.rs`: finding CUDA at run time, the context,
//! the one compute stream, the stream-ordered memory pool, kernel loading, the status word,
//! timers), [`DeviceBuffer`] (`buffer.rs`), [`Strided`] / [`Contig`] / [`Walk`] (`strided.rs`:
//! how ops see layouts), [`nvrtc`] (compiling `kernels/*.cu` for the device), [`blas`] (GEMMs
//! through cuBLAS / cuBLASLt), [`nccl`] (collectives across GPUs, in one process or several; its
//! communication stream in `comm_stream.rs`), then `ops/`:
//! one Rust file per kernel file, each a typed wrapper that checks its arguments and launches the
//! kernels of `kernels/<family>.cu`.
//!
//! CUDA is loaded at run time (cudarc's dynamic loading), so the crate builds with no CUDA
//! installed; without a driver, a library or a device every entry point returns
//! [`Error::Unavailable`] instead of panicking.

pub mod blas;
mod buffer;
mod comm_stream;
mod counters;
mod error;
mod gpu;
mod lt_plans;
pub mod nccl;
pub mod nccl_lib;
pub mod nvrtc;
pub mod ops;
pub mod sim;
mod strided;
pub mod testing;

pub use buffer::{DeviceBuffer, DeviceElem, ElemType};
pub use counters::Counters;
pub use error::{Error, Result};
pub(crate) use gpu::guard;
pub use gpu::{
    availability, check_libraries, gpu, DeviceInfo, Function, Gpu, GpuTimer, PoolUsage, CUDA_MAJOR,
    CUDA_MINOR,
};
pub use strided::{contiguous_strides, Contig, Strided, Walk, MAX_DIMS};

/// The bindings underneath, for code that needs a driver call this crate does not wrap.
pub use cudarc;
