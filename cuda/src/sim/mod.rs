//! The CUDA simulator: a GPU made of the host CPU, selected with `COTMAE_CUDA_SIM=1`, behind
//! [`crate::Gpu`] so that everything above it runs unchanged. It executes the same
//! `kernels/*.cu` text with CUDA's semantics and checks what a GPU would not tell.
//!
//! Reading order: `device` (a simulated GPU: selection, memory, the stream, launches), `memory`
//! (allocations fenced by guard pages, use-after-free quarantine, fault descriptions), `compile`
//! (the kernels built by the host C++ compiler against `runtime.h`, cached on disk), `launch`
//! (limits, and one launch's outcome), `runtime.h` (the CUDA dialect for the host compiler, and
//! the fibers that run a block's threads with real barriers). Beside them, what the simulated
//! devices compute in place of the GPU's libraries: `cublas` (cuBLAS / cuBLASLt's column-major
//! GEMMs on the CPU) and `nccl` (NCCL's collectives among the ranks of one process), over the
//! element types of `elem`.

mod compile;
pub mod cublas;
pub(crate) mod device;
pub mod elem;
pub(crate) mod launch;
pub(crate) mod memory;
pub mod nccl;
#[cfg(test)]
mod tests;

pub use device::{enabled, SEED_ENV, SIM_DEVICES, SIM_ENV, SIM_NAME};
