//! GELU (erf form), its gradient, and the bias + GELU fusion of a Linear layer's output
//! (`kernels/activation.cu`), as tensor/src/ops/activation.rs. The bias gradient of the fused op
//! is the column sum of its input gradient (`reduce::sum`).

use super::reduce::{sum, Axis, SumKind};
use super::{check_mixed, len_i64, FloatElem, FLOATS, MIXED};
use crate::buffer::DeviceBuffer;
use crate::error::bail;
use crate::gpu::{arg, Gpu, Launch};
use crate::nvrtc::{kernels::ACTIVATION, KernelFile};
use crate::strided::Contig;
use crate::Result;

pub(crate) fn kernel_names() -> Vec<(&'static KernelFile, String)> {
    let mut v = Vec::new();
    for t in FLOATS {
        v.push(format!("gelu_fwd_{t}"));
        v.push(format!("gelu_bwd_{t}"));
    }
    for (t, w) in MIXED {
        v.push(format!("bias_gelu_fwd_{t}_{w}"));
        v.push(format!("bias_gelu_bwd_{t}_{w}"));
    }
    v.into_iter().map(|n| (&ACTIVATION, n)).collect()
}

/// gelu(x) over `n` contiguous elements.
pub fn gelu<T: FloatElem>(gpu: &Gpu, x: Contig<'_, T>, n: usize) -> Result<DeviceBuffer<T>> {
    const OP: &str = "gelu";
    gpu.same_device(OP, x.buf)?;
    let xa = x.address(OP, n)?;
    let out = gpu.alloc::<T>(n)?;
    if n == 0 {
        return Ok(out);
    }
    let (oa, n64) = (out.device_address(), len_i64(OP, n)?);
    // SAFETY: matches `gelu_fwd_<t>(const T*, T*, i64)`.
    unsafe {
        gpu.launch(
            &ACTIVATION,
            &format!("gelu_fwd_{}", T::TYPE),
            Launch::grid_stride(n),
            &mut [arg(&xa), arg(&oa), arg(&n64)],
        )?;
    }
    Ok(out)
}

/// dy * gelu'(x) over `n` contiguous elements.
pub fn gelu_backward<T: FloatElem>(
    gpu: &Gpu,
    x: Contig<'_, T>,
    dy: Contig<'_, T>,
    n: usize,
) -> Result<DeviceBuffer<T>> {
    const OP: &str = "gelu_backward";
    gpu.same_device(OP, x.buf)?;
    gpu.same_device(OP, dy.buf)?;
    let (xa, ga) = (x.address(OP, n)?, dy.address(OP, n)?);
    let out = gpu.alloc::<T>(n)?;
    if n == 0 {
        return Ok(out);
    }
    let (oa, n64) = (out.device_address(), len_i64(OP, n)?);
    // SAFETY: matches `gelu_bwd_<t>(const T*, const T*, T*, i64)`.
    unsafe {
        gpu.launch(
            &ACTIVATION,
            &format!("gelu_bwd_{}", T::TYPE),
            Launch::grid_stride(n),
            &mut [arg(&xa), arg(&ga), arg(&oa), arg(&n64)],
        )?;
    }
    Ok(out)
}

fn check_bias<T: FloatElem, W: FloatElem>(
    gpu: &Gpu,
    op: &'static str,
    x: &Contig<'_, T>,
    b: &Contig<'_, W>,
    rows: usize,
    h: usize,
) -> Result<(u64, u64)> {
    check_mixed(op, T::TYPE, W::TYPE)?;
    gpu.same_device(op, x.buf)?;
    gpu.same_device(op, b.buf)?;
    if h == 0 && rows > 0 {
        bail!(op, "rows of length 0");
    }
    Ok((x.address(op, rows * h)?, b.address(op, h)?))
}

/// gelu(x + b) for `rows` contiguous rows of `h`, b of `h` elements (x's type, or f32 for half x).
pub fn bias_gelu<T: FloatElem, W: FloatElem>(
    gpu: &Gpu,
    x: Contig<'_, T>,
    bias: Contig<'_, W>,
    rows: usize,
    h: usize,
) -> Result<DeviceBuffer<T>> {
    const OP: &str = "bias_gelu";
    let (xa, ba) = check_bias(gpu, OP, &x, &bias, rows, h)?;
    let n = rows * h;
    let out = gpu.alloc::<T>(n)?;
    if n == 0 {
        return Ok(out);
    }
    let (oa, n64, h64) = (out.device_address(), len_i64(OP, n)?, len_i64(OP, h)?);
    // SAFETY: matches `bias_gelu_fwd_<t>_<w>(const T*, const W*, T*, i64, i64)`.
    unsafe {
        gpu.launch(
            &ACTIVATION,
            &format!("bias_gelu_fwd_{}_{}", T::TYPE, W::TYPE),
            Launch::grid_stride(n),
            &mut [arg(&xa), arg(&ba), arg(&oa), arg(&n64), arg(&h64)],
        )?;
    }
    Ok(out)
}

/// Gradients of `bias_gelu`: dz = dy * gelu'(x + b) (the input gradient, x's type) and
/// db = Σ_rows dz (summed in f64 from the stored dz, rounded once to the bias's type).
pub fn bias_gelu_backward<T: FloatElem, W: FloatElem>(
    gpu: &Gpu,
    x: Contig<'_, T>,
    bias: Contig<'_, W>,
    dy: Contig<'_, T>,
    rows: usize,
    h: usize,
) -> Result<(DeviceBuffer<T>, DeviceBuffer<W>)> {
    const OP: &str = "bias_gelu_backward";
    let (xa, ba) = check_bias(gpu, OP, &x, &bias, rows, h)?;
    gpu.same_device(OP, dy.buf)?;
    let n = rows * h;
    let ga = dy.address(OP, n)?;
    let dz = gpu.alloc::<T>(n)?;
    if n > 0 {
        let (za, n64, h64) = (dz.device_address(), len_i64(OP, n)?, len_i64(OP, h)?);
        // SAFETY: matches `bias_gelu_bwd_<t>_<w>(const T*, const W*, const T*, T*, i64, i64)`.
        unsafe {
            gpu.launch(
                &ACTIVATION,
                &format!("bias_gelu_bwd_{}_{}", T::TYPE, W::TYPE),
                Launch::grid_stride(n),
                &mut [arg(&xa), arg(&ba), arg(&ga), arg(&za), arg(&n64), arg(&h64)],
            )?;
        }
    }
    let axis = Axis {
        outer: 1,
        r: rows,
        inner: h,
    };
    let db = sum::<T, W>(gpu, Contig::new(&dz, 0), axis, SumKind::Sum)?;
    Ok((dz, db))
}
