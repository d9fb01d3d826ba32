//! CUDA dispatch of `topk` (and a descending `sort_last`, which is `topk` with k = n) along the
//! last dim (`cuda::ops::topk`, k up to its `MAX_K`), f32/f16/bf16: values and i64 indices, both
//! contiguous. An ascending sort has no kernel yet.

use super::rows::contig;
use super::{float_kernel, tensor_of, wrap};
use crate::{Result, Tensor};
use cuda::Contig;

/// The `k` largest of each row of `x` (contiguous) and their positions, shaped `out_shape`.
pub(crate) fn topk(
    op: &'static str,
    x: &Tensor,
    k: usize,
    out_shape: &[usize],
) -> Result<(Tensor, Tensor)> {
    let s = contig(op, x)?;
    let n = *x.shape().last().expect("rank >= 1, checked by the op");
    let rows = x.elem_count().checked_div(n).unwrap_or(0);
    float_kernel!(op, x.dtype(), T => {
        let (v, i) = cuda::ops::topk::topk(&s.gpu, Contig::new(s.typed::<T>(op)?, 0), rows, n, k)?;
        Ok((tensor_of(&s.gpu, wrap(v), out_shape), tensor_of(&s.gpu, wrap(i), out_shape)))
    })
}
