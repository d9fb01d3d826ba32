//! CUDA dispatch of `embedding` (row gather, any dtype) and `embedding_backward` (row
//! scatter-add with f32 atomics, f32/f16/bf16) from `cuda::ops::embedding`. The ops check the ids'
//! range on the host before this. The other index ops have no CUDA kernel yet.

use super::rows::contig;
use super::{float_kernel, map_cuda_buf, operands, tensor_of, wrap};
use crate::{Result, Tensor};
use cuda::ops::embedding as k;
use cuda::Contig;

/// Rows `ids` of `weight` `[V, H]`, shaped `ids.shape + [H]`.
pub(crate) fn embedding(weight: &Tensor, ids: &Tensor) -> Result<Tensor> {
    const OP: &str = "embedding";
    operands(OP, [weight, ids])?;
    let (sw, si) = (contig(OP, weight)?, contig(OP, ids)?);
    let (v, h, n) = (weight.shape()[0], weight.shape()[1], ids.elem_count());
    let ic = Contig::new(si.typed::<i64>(OP)?, 0);
    let out =
        map_cuda_buf!(&*sw.buf, b => wrap(k::embedding(&sw.gpu, Contig::new(b, 0), v, h, ic, n)?));
    Ok(tensor_of(&sw.gpu, out, &[ids.shape(), &[h]].concat()))
}

/// `[num_embeddings, H]`: row v the sum of the rows of `dy` whose id is v.
pub(crate) fn embedding_backward(
    ids: &Tensor,
    dy: &Tensor,
    num_embeddings: usize,
) -> Result<Tensor> {
    const OP: &str = "embedding_backward";
    operands(OP, [ids, dy])?;
    let (si, sg) = (contig(OP, ids)?, contig(OP, dy)?);
    let (n, h) = (ids.elem_count(), dy.shape()[dy.rank() - 1]);
    float_kernel!(OP, dy.dtype(), T => {
        let (ic, gc) = (Contig::new(si.typed::<i64>(OP)?, 0), Contig::new(sg.typed::<T>(OP)?, 0));
        let out = k::embedding_backward(&si.gpu, ic, gc, n, h, num_embeddings)?;
        Ok(tensor_of(&si.gpu, wrap(out), &[num_embeddings, h]))
    })
}
