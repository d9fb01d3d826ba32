//! CUDA dispatch of `topk` and `sort_last` (the ranking with k = n, either direction) along the
//! last dim (`cuda::ops::topk::ranked`, k up to its `MAX_K`), f32/f16/bf16: values and i64
//! indices, both contiguous.

use super::rows::contig;
use super::{float_kernel, tensor_of, wrap};
use crate::{Result, Tensor};
use cuda::Contig;

/// The first `k` of each row of `x` (contiguous) in rank order (largest first when `descending`)
/// and their positions, shaped `out_shape`.
pub(crate) fn ranked(
    op: &'static str,
    x: &Tensor,
    k: usize,
    descending: bool,
    out_shape: &[usize],
) -> Result<(Tensor, Tensor)> {
    let s = contig(op, x)?;
    let n = *x.shape().last().expect("rank >= 1, checked by the op");
    let rows = x.elem_count().checked_div(n).unwrap_or(0);
    float_kernel!(op, x.dtype(), T => {
        let (v, i) = cuda::ops::topk::ranked(&s.gpu, Contig::new(s.typed::<T>(op)?, 0), rows, n, k, descending)?;
        Ok((tensor_of(&s.gpu, wrap(v), out_shape), tensor_of(&s.gpu, wrap(i), out_shape)))
    })
}
