//! CPU kernels, one file per op family. They work on plain slices plus a `Layout` and know
//! nothing of `Tensor`; the op files in `crate::ops` validate arguments and dispatch here.

pub mod activation;
pub mod attention_bf16;
pub mod bf16_gemm;
pub mod copy;
pub mod elementwise;
pub mod index;
pub mod layer_norm;
pub mod loss;
pub mod math;
pub mod matmul;
pub mod reduce;
pub mod simd;
pub mod softmax;
pub mod topk;
