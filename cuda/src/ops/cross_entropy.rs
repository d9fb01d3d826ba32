//! Fused cross-entropy over rows of class logits with `ignore_index`, forward and backward
//! (`kernels/cross_entropy.cu`), as tensor/src/ops/loss.rs: the mean over valid rows (0 when
//! every row is ignored), the per-row log-sum-exp saved for the backward. Targets are i64 on the
//! device; a target outside `0..c` (other than ignore_index) is reported through the GPU's status
//! word ([`crate::Gpu::check_status`]) and its row counts as ignored.

use super::{len_i64, FloatElem, FLOATS};
use crate::buffer::DeviceBuffer;
use crate::gpu::{arg, Gpu, Launch};
use crate::nvrtc::{kernels::CROSS_ENTROPY, KernelFile};
use crate::strided::Contig;
use crate::Result;

pub(crate) fn kernel_names() -> Vec<(&'static KernelFile, String)> {
    let mut v = vec!["ce_count".to_string()];
    for t in FLOATS {
        for k in ["ce_fwd", "ce_mean", "ce_bwd"] {
            v.push(format!("{k}_{t}"));
        }
    }
    v.into_iter().map(|n| (&CROSS_ENTROPY, n)).collect()
}

/// The single-block launch of the reductions over rows.
fn one_block() -> Launch {
    Launch {
        grid: (1, 1, 1),
        block: (1024, 1, 1),
        shared_bytes: 0,
    }
}

/// The forward's outputs: the mean loss (one element of the logits' type) and lse (f32, one per
/// row).
pub struct CrossEntropyOut<T: FloatElem> {
    pub loss: DeviceBuffer<T>,
    pub lse: DeviceBuffer<f32>,
}

/// Mean cross-entropy of `rows` contiguous rows of `c` logits against `targets` (`rows` i64).
pub fn cross_entropy<T: FloatElem>(
    gpu: &Gpu,
    logits: Contig<'_, T>,
    rows: usize,
    c: usize,
    targets: Contig<'_, i64>,
    ignore_index: i64,
) -> Result<CrossEntropyOut<T>> {
    const OP: &str = "cross_entropy";
    gpu.same_device(OP, logits.buf)?;
    gpu.same_device(OP, targets.buf)?;
    let (xa, ta) = (logits.address(OP, rows * c)?, targets.address(OP, rows)?);
    let out = CrossEntropyOut {
        loss: gpu.alloc::<T>(1)?,
        lse: gpu.alloc::<f32>(rows)?,
    };
    let row_loss = gpu.alloc::<f64>(rows)?;
    let (c64, rows64) = (len_i64(OP, c)?, len_i64(OP, rows)?);
    let (la, ra, sa, oa) = (
        out.lse.device_address(),
        row_loss.device_address(),
        gpu.status_address_for(OP),
        out.loss.device_address(),
    );
    let t = T::TYPE;
    // SAFETY: the argument lists match cross_entropy.cu's ce_fwd / ce_mean; extents checked.
    unsafe {
        if rows > 0 {
            gpu.launch(
                &CROSS_ENTROPY,
                &format!("ce_fwd_{t}"),
                Launch::per_row(OP, rows, c)?,
                &mut [
                    arg(&xa),
                    arg(&ta),
                    arg(&c64),
                    arg(&ignore_index),
                    arg(&la),
                    arg(&ra),
                    arg(&sa),
                ],
            )?;
        }
        gpu.launch(
            &CROSS_ENTROPY,
            &format!("ce_mean_{t}"),
            one_block(),
            &mut [
                arg(&ra),
                arg(&ta),
                arg(&rows64),
                arg(&c64),
                arg(&ignore_index),
                arg(&oa),
            ],
        )?;
    }
    Ok(out)
}

/// Gradient of `cross_entropy`'s mean loss w.r.t. the logits, scaled by the loss gradient
/// `grad_host` times, when given, the device scalar `grad_device` (so an upstream gradient that
/// lives on the GPU needs no copy to the host): grad * (softmax(row) - onehot(target)) / n_valid,
/// zero rows where ignored.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_backward<T: FloatElem>(
    gpu: &Gpu,
    logits: Contig<'_, T>,
    rows: usize,
    c: usize,
    targets: Contig<'_, i64>,
    lse: Contig<'_, f32>,
    ignore_index: i64,
    grad_host: f64,
    grad_device: Option<&DeviceBuffer<f32>>,
) -> Result<DeviceBuffer<T>> {
    const OP: &str = "cross_entropy_backward";
    gpu.same_device(OP, logits.buf)?;
    gpu.same_device(OP, targets.buf)?;
    gpu.same_device(OP, lse.buf)?;
    let (xa, ta, la) = (
        logits.address(OP, rows * c)?,
        targets.address(OP, rows)?,
        lse.address(OP, rows)?,
    );
    let ga = match grad_device {
        Some(g) => {
            gpu.same_device(OP, g)?;
            g.address_at(OP, 0, 1)?
        }
        None => 0,
    };
    let out = gpu.alloc::<T>(rows * c)?;
    if rows * c == 0 {
        return Ok(out);
    }
    let n_valid = gpu.alloc::<i32>(1)?;
    let (c64, rows64) = (len_i64(OP, c)?, len_i64(OP, rows)?);
    let (na, oa) = (n_valid.device_address(), out.device_address());
    // SAFETY: the argument lists match cross_entropy.cu's ce_count / ce_bwd; extents checked;
    // a null grad pointer means "no device factor".
    unsafe {
        gpu.launch(
            &CROSS_ENTROPY,
            "ce_count",
            one_block(),
            &mut [
                arg(&ta),
                arg(&rows64),
                arg(&c64),
                arg(&ignore_index),
                arg(&na),
            ],
        )?;
        gpu.launch(
            &CROSS_ENTROPY,
            &format!("ce_bwd_{}", T::TYPE),
            Launch::per_row(OP, rows, c)?,
            &mut [
                arg(&xa),
                arg(&ta),
                arg(&la),
                arg(&c64),
                arg(&ignore_index),
                arg(&na),
                arg(&ga),
                arg(&grad_host),
                arg(&oa),
            ],
        )?;
    }
    Ok(out)
}
