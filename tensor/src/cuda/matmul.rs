//! CUDA dispatch of `matmul` and `matmul_bias` through cuBLAS (`cuda::blas`), for f32, f16 and
//! bf16 (f32 accumulation, exact f32 math).
//!
//! Layout: cuBLAS takes each operand as one matrix view (a row stride and a column stride, one of
//! them 1) repeated with one batch stride. An operand whose (broadcast) layout is not of that form
//! (batch dims that do not merge into one stride, neither matrix stride 1) is first copied into a
//! contiguous buffer of its broadcast shape.

use super::{float_kernel, operands, tensor_of, wrap, CudaElem, CudaStorage};
use crate::{Layout, Result, Tensor};
use cuda::blas::{self, GemmElem, Mat, MatMut, MathMode};
use cuda::DeviceBuffer;

/// `layout` (of rank >= 2, `[.., rows, cols]`) as (offset, row stride, col stride, batch
/// stride) when cuBLAS can read it in place.
fn mat_strides(layout: &Layout) -> Option<(usize, usize, usize, usize)> {
    let (shape, strides) = (layout.shape(), layout.strides());
    let r = shape.len();
    let (rows, cols, rs, cs) = (shape[r - 2], shape[r - 1], strides[r - 2], strides[r - 1]);
    if !((cs == 1 && rs >= cols.max(1)) || (rs == 1 && cs >= rows.max(1))) {
        return None;
    }
    // The non-trivial batch dims must walk the buffer with one stride.
    let mut batch: Option<(usize, usize)> = None; // (stride of the innermost dim, expected next)
    for d in (0..r - 2).rev().filter(|&d| shape[d] > 1) {
        batch = match batch {
            None => Some((strides[d], strides[d] * shape[d])),
            Some((s, next)) if strides[d] == next => Some((s, next * shape[d])),
            Some(_) => return None,
        };
    }
    Some((layout.offset(), rs, cs, batch.map_or(0, |(s, _)| s)))
}

/// An operand's matrix view, copying it contiguous first when needed. The returned storage
/// keeps the buffer the view reads alive.
fn operand(s: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, [usize; 4])> {
    if let Some((o, rs, cs, bs)) = mat_strides(layout) {
        return Ok((s.clone(), [o, rs, cs, bs]));
    }
    let shape = layout.shape();
    let (rows, cols) = (shape[shape.len() - 2], shape[shape.len() - 1]);
    Ok((s.copy(layout)?, [0, cols, 1, rows * cols]))
}

fn mat<'a, T: CudaElem>(
    op: &'static str,
    s: &'a CudaStorage,
    [offset, row_stride, col_stride, batch_stride]: [usize; 4],
    (rows, cols): (usize, usize),
) -> Result<Mat<'a, T>> {
    Ok(Mat {
        buf: s.typed::<T>(op)?,
        offset,
        rows,
        cols,
        row_stride,
        col_stride,
        batch_stride,
    })
}

/// A fresh output of `len` elements (zeroed when the product is empty in k, which cuBLAS does
/// not write).
fn output<T: CudaElem>(gpu: &cuda::Gpu, len: usize, k: usize) -> Result<DeviceBuffer<T>> {
    Ok(if k == 0 {
        gpu.zeros(len)?
    } else {
        gpu.alloc(len)?
    })
}

/// `x @ y` over `batch` (broadcast) matrices: `xl` and `yl` are the operands' layouts
/// broadcast to `[batch.., m, k]` and `[batch.., k, n]`.
pub(crate) fn matmul(
    (x, xl): (&Tensor, &Layout),
    (y, yl): (&Tensor, &Layout),
    batch: &[usize],
    (m, k, n): (usize, usize, usize),
) -> Result<Tensor> {
    const OP: &str = "matmul";
    let [sx, sy] = operands(OP, [x, y])?;
    let gpu = &sx.gpu;
    let count: usize = batch.iter().product();
    let (ax, ay) = (operand(sx, xl)?, operand(sy, yl)?);
    let shape = [batch, &[m, n]].concat();
    float_kernel!(OP, x.dtype(), T => {
        let mut out = output::<T>(gpu, count * m * n, k)?;
        let a = mat::<T>(OP, &ax.0, ax.1, (m, k))?;
        let b = mat::<T>(OP, &ay.0, ay.1, (k, n))?;
        let c = MatMut::row_major(&mut out, 0, m, n);
        gemm(gpu, a, b, c, count)?;
        Ok(tensor_of(gpu, wrap(out), &shape))
    })
}

fn gemm<T: GemmElem>(
    gpu: &cuda::Gpu,
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    c: MatMut<'_, T>,
    batch: usize,
) -> Result<()> {
    Ok(blas::gemm(gpu, a, b, c, batch, 1.0, 0.0, MathMode::Exact)?)
}

/// `x [m, k] @ y [k, n] + bias [n]` through cuBLASLt's bias epilogue.
pub(crate) fn matmul_bias(x: &Tensor, y: &Tensor, bias: &Tensor) -> Result<Tensor> {
    const OP: &str = "matmul_bias";
    let (m, k, n) = (x.shape()[0], x.shape()[1], y.shape()[1]);
    let [sx, sy, _] = operands(OP, [x, y, bias])?;
    let gpu = &sx.gpu;
    let (ax, ay) = (operand(sx, x.layout())?, operand(sy, y.layout())?);
    let bias = bias.contiguous()?;
    let [sb] = operands(OP, [&bias])?;
    float_kernel!(OP, x.dtype(), T => {
        let mut out = output::<T>(gpu, m * n, k)?;
        let a = mat::<T>(OP, &ax.0, ax.1, (m, k))?;
        let b = mat::<T>(OP, &ay.0, ay.1, (k, n))?;
        let c = MatMut::row_major(&mut out, 0, m, n);
        let b_off = bias.layout().offset();
        blas::gemm_bias(gpu, a, b, (sb.typed::<T>(OP)?, b_off), c, MathMode::Exact)?;
        Ok(tensor_of(gpu, wrap(out), &[m, n]))
    })
}
