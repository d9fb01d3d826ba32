//! Tensor ops, one file per family. Each op checks its arguments (shapes, dtypes, devices, dims),
//! opens a profiler scope, and dispatches to the kernel for the tensor's device. This is the one
//! door every op passes through.

pub mod activation;
pub mod attention;
pub mod attention_bf16;
pub mod cast;
pub mod concat;
pub mod dropout;
pub mod elementwise;
pub mod index;
pub mod layer_norm;
pub mod loss;
pub mod matmul;
pub mod matmul_bf16;
pub mod random;
pub mod reduce;
pub mod softmax;
pub mod topk;
