//! CUDA dispatch of the reductions of `ops/reduce.rs` (`cuda::ops::reduce`): sums, sums of
//! squares (and from them `mean`, `var`, `norm_l2`) over a set of dims, and max / min / argmax /
//! argmin over one dim, for f32/f16/bf16; and the integer sums (i64 / u8 into i64, wrapping).
//!
//! Layout: the kernels reduce the middle axis of a contiguous `[outer, r, inner]` view. Reduced
//! dims that are adjacent are that axis directly; otherwise the kept dims are permuted to the
//! front and the copy is reduced as `[kept, reduced, 1]`. Sums accumulate in the kernel, come
//! out in f32, are scaled (and square-rooted) in f32 and rounded to the input's dtype once.

use super::rows::contig;
use super::{float_kernel, tensor_of, wrap};
use crate::{DType, Error, Result, Tensor};
use cuda::ops::reduce::{self as k, Axis, Extreme, SumKind};
use cuda::Contig;

/// `x` arranged so the masked dims form the middle axis, and that axis.
fn arrange(x: &Tensor, mask: &[bool]) -> Result<(Tensor, Axis)> {
    let shape = x.shape();
    let (first, last) = match (mask.iter().position(|&m| m), mask.iter().rposition(|&m| m)) {
        (Some(a), Some(b)) => (a, b + 1),
        // Nothing reduced: every element is its own output.
        _ => {
            return Ok((
                x.clone(),
                Axis {
                    outer: x.elem_count(),
                    r: 1,
                    inner: 1,
                },
            ))
        }
    };
    let prod = |r: std::ops::Range<usize>| shape[r].iter().product::<usize>();
    if mask[first..last].iter().all(|&m| m) {
        let axis = Axis {
            outer: prod(0..first),
            r: prod(first..last),
            inner: prod(last..shape.len()),
        };
        return Ok((x.clone(), axis));
    }
    let kept = (0..shape.len()).filter(|&d| !mask[d]);
    let perm: Vec<usize> = kept.chain((0..shape.len()).filter(|&d| mask[d])).collect();
    let r: usize = (0..shape.len())
        .filter(|&d| mask[d])
        .map(|d| shape[d])
        .product();
    let outer = x.elem_count().checked_div(r).unwrap_or(0);
    Ok((x.permute(&perm)?.copy()?, Axis { outer, r, inner: 1 }))
}

/// Σ x (Σ x² with `squares`) over the masked dims, times `scale`, square-rooted with `sqrt`;
/// shaped `out_shape`.
pub(crate) fn float_sum(
    op: &'static str,
    x: &Tensor,
    mask: &[bool],
    (squares, scale, sqrt): (bool, f64, bool),
    out_shape: &[usize],
) -> Result<Tensor> {
    let (xa, axis) = arrange(x, mask)?;
    let s = contig(op, &xa)?;
    let kind = if squares {
        SumKind::SumSq
    } else {
        SumKind::Sum
    };
    let sum = float_kernel!(op, x.dtype(), T => {
        let out = k::sum::<T, f32>(&s.gpu, Contig::new(s.typed::<T>(op)?, 0), axis, kind)?;
        tensor_of(&s.gpu, wrap(out), out_shape)
    });
    let scaled = if scale == 1.0 {
        sum
    } else {
        sum.mul_scalar(scale)?
    };
    let out = if sqrt { scaled.sqrt()? } else { scaled };
    out.to_dtype(x.dtype())
}

/// Σ x over the masked dims of an i64 or u8 tensor, as i64 (wrapping); shaped `out_shape`.
pub(crate) fn int_sum(x: &Tensor, mask: &[bool], out_shape: &[usize]) -> Result<Tensor> {
    const OP: &str = "sum";
    let (xa, axis) = arrange(x, mask)?;
    let s = contig(OP, &xa)?;
    let out = match x.dtype() {
        DType::I64 => k::sum_int(&s.gpu, Contig::new(s.typed::<i64>(OP)?, 0), axis)?,
        DType::U8 => k::sum_int(&s.gpu, Contig::new(s.typed::<u8>(OP)?, 0), axis)?,
        dtype => return Err(Error::UnsupportedDType { op: OP, dtype }),
    };
    Ok(tensor_of(&s.gpu, wrap(out), out_shape))
}

/// The max / min (`max`) over `dim`, or its first index (i64) with `index`; shaped `out_shape`.
pub(crate) fn best(
    op: &'static str,
    x: &Tensor,
    dim: usize,
    (max, index): (bool, bool),
    out_shape: &[usize],
) -> Result<Tensor> {
    let s = contig(op, x)?;
    let axis = Axis::of(x.shape(), dim);
    let which = if max { Extreme::Max } else { Extreme::Min };
    float_kernel!(op, x.dtype(), T => {
        let xc = Contig::new(s.typed::<T>(op)?, 0);
        let out = if index {
            wrap(k::arg_extreme(&s.gpu, xc, axis, which)?)
        } else {
            wrap(k::extreme(&s.gpu, xc, axis, which)?)
        };
        Ok(tensor_of(&s.gpu, out, out_shape))
    })
}
