//! The CUDA simulator: what a simulated device computes in place of the GPU's libraries.
//! `cublas`: cuBLAS / cuBLASLt's column-major GEMMs on the CPU; `nccl`: NCCL's collectives among
//! the ranks of one process; `elem`: the element types both read and write.

pub mod cublas;
pub mod elem;
pub mod nccl;
