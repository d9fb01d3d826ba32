//! Softmax and log-softmax over the last dim with a fused scale and additive mask, and their
//! backward passes (`kernels/softmax.cu`), as tensor/src/ops/softmax.rs. The mask is read in
//! place through its (broadcast) layout, so a `[B,1,1,S]` padding mask against `[B,H,S,S]`
//! scores is never materialised.

use super::{FloatElem, FLOATS};
use crate::buffer::DeviceBuffer;
use crate::error::bail;
use crate::gpu::{arg, Gpu, Launch};
use crate::nvrtc::{kernels::SOFTMAX, KernelFile};
use crate::strided::{Contig, Strided, Walk};
use crate::Result;

pub(crate) fn kernel_names() -> Vec<(&'static KernelFile, String)> {
    FLOATS
        .iter()
        .flat_map(|t| [format!("softmax_fwd_{t}"), format!("softmax_bwd_{t}")])
        .map(|n| (&SOFTMAX, n))
        .collect()
}

/// (rows, n) of a shape whose last dim is reduced.
fn rows_n(op: &'static str, shape: &[usize]) -> Result<(usize, usize)> {
    let Some((&n, rows)) = shape.split_last() else {
        bail!(op, "needs a tensor of rank >= 1, got a scalar");
    };
    Ok((rows.iter().product(), n))
}

/// softmax(x * scale + mask) over the last dim of `shape` (or its log with `log`); `x` is
/// contiguous, `mask` (x's dtype) is any layout broadcast to `shape` whose last-dim stride is 0
/// or 1 (a mask strided along the last dim must be copied first).
pub fn softmax<T: FloatElem>(
    gpu: &Gpu,
    x: Contig<'_, T>,
    shape: &[usize],
    mask: Option<Strided<'_, T>>,
    scale: f32,
    log: bool,
) -> Result<DeviceBuffer<T>> {
    const OP: &str = "softmax";
    gpu.same_device(OP, x.buf)?;
    let (rows, n) = rows_n(OP, shape)?;
    let xa = x.address(OP, rows * n)?;
    let (mut ma, mut walk, mut mask_last) = (0u64, Walk::unused(), 0i32);
    if let Some(m) = mask {
        gpu.same_device(OP, m.buf)?;
        ma = m.address(OP, shape)?;
        let last = *m.strides.last().expect("rank >= 1");
        mask_last = match (n, last) {
            (0 | 1, _) | (_, 0) => 0,
            (_, 1) => 1,
            _ => bail!(
                OP,
                "mask has last-dim stride {last}; make it contiguous along the last dim"
            ),
        };
        let r = shape.len() - 1;
        walk = Walk::new(OP, &shape[..r], &[&m.strides[..r]])?.0;
    }
    let out = gpu.alloc::<T>(rows * n)?;
    if rows * n == 0 {
        return Ok(out);
    }
    let (n64, oa, log) = (super::len_i64(OP, n)?, out.device_address(), log as i32);
    // SAFETY: matches `softmax_fwd_<t>(const T*, const T*, Walk, int, i64, float, int, T*)`;
    // x and out hold rows*n elements, the mask's reachable extent was checked over `shape`.
    unsafe {
        gpu.launch(
            &SOFTMAX,
            &format!("softmax_fwd_{}", T::TYPE),
            Launch::per_row(OP, rows, n)?,
            &mut [
                arg(&xa),
                arg(&ma),
                arg(&walk),
                arg(&mask_last),
                arg(&n64),
                arg(&scale),
                arg(&log),
                arg(&oa),
            ],
        )?;
    }
    Ok(out)
}

/// The gradient of `softmax` (or of its log form with `log`) w.r.t. its input, from the forward
/// output `y` and the output gradient `dy` (both contiguous over `shape`).
pub fn softmax_backward<T: FloatElem>(
    gpu: &Gpu,
    y: Contig<'_, T>,
    dy: Contig<'_, T>,
    shape: &[usize],
    scale: f32,
    log: bool,
) -> Result<DeviceBuffer<T>> {
    const OP: &str = "softmax_backward";
    gpu.same_device(OP, y.buf)?;
    gpu.same_device(OP, dy.buf)?;
    let (rows, n) = rows_n(OP, shape)?;
    let (ya, ga) = (y.address(OP, rows * n)?, dy.address(OP, rows * n)?);
    let out = gpu.alloc::<T>(rows * n)?;
    if rows * n == 0 {
        return Ok(out);
    }
    let (n64, oa, log) = (super::len_i64(OP, n)?, out.device_address(), log as i32);
    // SAFETY: matches `softmax_bwd_<t>(const T*, const T*, i64, float, int, T*)`.
    unsafe {
        gpu.launch(
            &SOFTMAX,
            &format!("softmax_bwd_{}", T::TYPE),
            Launch::per_row(OP, rows, n)?,
            &mut [
                arg(&ya),
                arg(&ga),
                arg(&n64),
                arg(&scale),
                arg(&log),
                arg(&oa),
            ],
        )?;
    }
    Ok(out)
}
