//! Typed launch wrappers, one file per kernel family (`ops/softmax.rs` launches
//! `kernels/softmax.cu`). Each wrapper checks its arguments (lengths against buffers, dtypes the
//! kernels are built for, the GPU each buffer lives on), allocates its outputs from the GPU's pool,
//! and issues the kernels on the GPU's stream; nothing waits for the device unless it says so.
//! Outputs are contiguous row-major.
//!
//! Every kernel a wrapper may launch is listed by [`kernel_names`], and every op code a wrapper
//! passes is listed by [`mirrored_constants`]; the NVRTC test checks both against the compiled
//! files, so a Rust/CUDA mismatch fails CI even without a GPU.

pub mod activation;
pub mod adamw;
pub mod attention;
pub mod cast;
pub mod cross_entropy;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod flash_attention;
pub mod grad_norm;
pub mod index;
pub mod layer_norm;
pub mod loss_scale;
mod multi_tensor;
pub mod reduce;
pub mod softmax;
pub mod topk;

use crate::buffer::{DeviceElem, ElemType};
use crate::error::bail;
use crate::nvrtc::KernelFile;
use crate::Result;
use half::{bf16, f16};

/// f32, f16 and bf16: the storage types of the float kernels, which compute in f32.
pub trait FloatElem: ArithElem {}
impl FloatElem for f32 {}
impl FloatElem for f16 {}
impl FloatElem for bf16 {}

/// The types the `binary` arithmetic kernels take: the float kernels' (computed in f32) and i64 /
/// u8 (wrapping integer arithmetic, as the CPU).
pub trait ArithElem: DeviceElem {}
impl ArithElem for f32 {}
impl ArithElem for f16 {}
impl ArithElem for bf16 {}
impl ArithElem for i64 {}
impl ArithElem for u8 {}

/// The [`ArithElem`] types, for building kernel-name lists.
pub(crate) const ARITH: [ElemType; 5] = [
    ElemType::F32,
    ElemType::F16,
    ElemType::BF16,
    ElemType::I64,
    ElemType::U8,
];

/// The float storage types, for building kernel-name lists.
pub(crate) const FLOATS: [ElemType; 3] = [ElemType::F32, ElemType::F16, ElemType::BF16];

/// The (activation, parameter) dtype pairs of the mixed-precision kernels: same type, or half
/// activations with f32 parameters.
pub(crate) const MIXED: [(ElemType, ElemType); 5] = [
    (ElemType::F32, ElemType::F32),
    (ElemType::F16, ElemType::F16),
    (ElemType::BF16, ElemType::BF16),
    (ElemType::F16, ElemType::F32),
    (ElemType::BF16, ElemType::F32),
];

/// Errors unless (x, w) is one of [`MIXED`].
pub(crate) fn check_mixed(op: &'static str, x: ElemType, w: ElemType) -> Result<()> {
    if !MIXED.contains(&(x, w)) {
        bail!(op, "parameters of type {w} do not go with activations of type {x} (same type, or f32 for f16/bf16)");
    }
    Ok(())
}

/// `n` as the kernels' i64.
pub(crate) fn len_i64(op: &'static str, n: usize) -> Result<i64> {
    crate::strided::check_len(op, n)
}

/// Every (file, kernel) a wrapper in `ops` (or `blas`) can launch.
pub fn kernel_names() -> Vec<(&'static KernelFile, String)> {
    let mut v = Vec::new();
    v.extend(activation::kernel_names());
    v.extend(adamw::kernel_names());
    v.extend(cast::kernel_names());
    v.extend(cross_entropy::kernel_names());
    v.extend(dropout::kernel_names());
    v.extend(elementwise::kernel_names());
    v.extend(embedding::kernel_names());
    v.extend(flash_attention::kernel_names());
    v.extend(grad_norm::kernel_names());
    v.extend(index::kernel_names());
    v.extend(layer_norm::kernel_names());
    v.extend(loss_scale::kernel_names());
    v.extend(reduce::kernel_names());
    v.extend(softmax::kernel_names());
    v.extend(topk::kernel_names());
    v
}

/// Constants that a kernel file defines and Rust mirrors: each entry is a file and a text
/// (`M_NEG = 0`, `#define ADAMW_CHUNK 16384`) that must appear in it verbatim.
pub fn mirrored_constants() -> Vec<(&'static KernelFile, String)> {
    let mut v = Vec::new();
    v.extend(elementwise::mirrored_constants());
    v.extend(reduce::mirrored_constants());
    v.extend(layer_norm::mirrored_constants());
    v.extend(adamw::mirrored_constants());
    v.extend(loss_scale::mirrored_constants());
    v.extend(flash_attention::mirrored_constants());
    v.extend(grad_norm::mirrored_constants());
    v
}
