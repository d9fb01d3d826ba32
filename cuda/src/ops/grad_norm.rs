//! The squared global L2 norm of a list of gradients (`kernels/grad_norm.cu`), for gradient
//! clipping as nn/src/clip.rs's `total_norm`: one launch writes an f64 sum of squares per chunk
//! of every gradient, and the host adds the chunks' sums in order (one small copy, the step's one
//! wait for the GPU).
//!
//! Versus the CPU: each square is formed and accumulated in f64 on both sides, but the additions
//! are grouped differently (per 16384-element chunk and a block tree here, eight running sums per
//! 8192-element piece there), so the two sums may differ in their last few f64 bits; the same
//! gradients on the same device always give the same bits.

use super::multi_tensor::{self, Chunks};
use super::{len_i64, FloatElem, FLOATS};
use crate::buffer::DeviceBuffer;
use crate::gpu::{arg, Gpu};
use crate::nvrtc::{kernels::GRAD_NORM, KernelFile};
use crate::Result;
use cudarc::driver::DeviceRepr;

/// Elements per block (grad_norm.cu `GRAD_NORM_CHUNK`).
const CHUNK: usize = 16384;

pub(crate) fn mirrored_constants() -> Vec<(&'static KernelFile, String)> {
    vec![(&GRAD_NORM, format!("#define GRAD_NORM_CHUNK {CHUNK}"))]
}

pub(crate) fn kernel_names() -> Vec<(&'static KernelFile, String)> {
    FLOATS
        .iter()
        .map(|t| (&GRAD_NORM, format!("sum_squares_{t}")))
        .chain([(&GRAD_NORM, "clip_factor".to_string())])
        .collect()
}

/// grad_norm.cu's `GradNormTensor` record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Record {
    g: u64,
    n: i64,
}

// SAFETY: plain repr(C) numbers, laid out as grad_norm.cu's GradNormTensor.
unsafe impl DeviceRepr for Record {}

/// Σ g² over every element of every buffer in `grads` (read as f32, summed in f64). Waits for
/// the GPU; 0 for an empty list.
pub fn sum_of_squares<G: FloatElem>(gpu: &Gpu, grads: &[&DeviceBuffer<G>]) -> Result<f64> {
    match partial_sums(gpu, grads)? {
        None => Ok(0.0),
        Some(partial) => Ok(gpu.download(&partial)?.iter().sum()),
    }
}

/// The clipping of `grads` to a global norm of `max_norm`, decided on the device: (the total
/// norm, f64 [1]; the factor to multiply the gradients by, f32 [1], 1 when no clipping applies
/// or the norm is not finite), the same numbers as the host's (module docs of nn/src/clip.rs).
/// Does not wait for the GPU.
pub fn clip_factor<G: FloatElem>(
    gpu: &Gpu,
    grads: &[&DeviceBuffer<G>],
    max_norm: f64,
) -> Result<(DeviceBuffer<f64>, DeviceBuffer<f32>)> {
    const OP: &str = "clip_factor";
    let partial = match partial_sums(gpu, grads)? {
        Some(p) => p,
        None => gpu.zeros::<f64>(1)?,
    };
    let (norm, factor) = (gpu.alloc::<f64>(1)?, gpu.alloc::<f32>(1)?);
    let (pa, na, fa) = (
        partial.device_address(),
        norm.device_address(),
        factor.device_address(),
    );
    let n = len_i64(OP, partial.len())?;
    let one = crate::gpu::Launch {
        grid: (1, 1, 1),
        block: (1, 1, 1),
        shared_bytes: 0,
    };
    // SAFETY: matches `clip_factor(const double*, i64, double, double*, float*)`; `partial` holds
    // n doubles, `norm` and `factor` one element each.
    unsafe {
        gpu.launch(
            &GRAD_NORM,
            "clip_factor",
            one,
            &mut [arg(&pa), arg(&n), arg(&max_norm), arg(&na), arg(&fa)],
        )?;
    }
    Ok((norm, factor))
}

/// One f64 sum of squares per chunk of `grads` on the device; None for no elements.
fn partial_sums<G: FloatElem>(
    gpu: &Gpu,
    grads: &[&DeviceBuffer<G>],
) -> Result<Option<DeviceBuffer<f64>>> {
    const OP: &str = "sum_of_squares";
    let mut records = Vec::with_capacity(grads.len());
    let mut lens = Vec::with_capacity(grads.len());
    for g in grads {
        gpu.same_device(OP, g)?;
        lens.push(g.len());
        records.push(Record {
            g: g.device_address(),
            n: len_i64(OP, g.len())?,
        });
    }
    let chunks = Chunks::new(OP, &lens, CHUNK)?;
    if chunks.total == 0 {
        return Ok(None);
    }
    let partial = gpu.alloc::<f64>(chunks.total)?;
    let pa = partial.device_address();
    // SAFETY: matches `sum_squares_<g>(const GradNormTensor*, const i64*, int, double*)`; every
    // record's buffer holds n elements and `partial` one double per chunk.
    unsafe {
        multi_tensor::launch(
            gpu,
            OP,
            (&GRAD_NORM, &format!("sum_squares_{}", G::TYPE)),
            &records,
            &chunks,
            &[arg(&pa)],
        )?;
    }
    Ok(Some(partial))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_layout_matches_the_kernel_struct() {
        // grad_norm.cu: u64 g, i64 n.
        assert_eq!(std::mem::size_of::<Record>(), 16);
        assert_eq!(std::mem::align_of::<Record>(), 8);
    }
}
