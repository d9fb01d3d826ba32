//! CUDA dispatch of the index ops of `ops/index.rs` (`cuda::ops::embedding`, `cuda::ops::index`):
//! `embedding` (row gather) and `embedding_backward` (row scatter-add, f32/f16/bf16),
//! `index_select` and `gather` (any dtype) and `index_add` and `scatter_add` (every dtype, f16/bf16
//! accumulated in f32), each reading its operands through their layouts. Ids stay on the device:
//! the kernels check their range and report a bad one, naming the op, through the status word
//! (`Device::check_status`); ids are made contiguous here.

use super::rows::contig;
use super::{float_kernel, map_cuda_buf, operands, strided, tensor_of, wrap};
use crate::{Result, Tensor};
use cuda::ops::embedding as emb;
use cuda::ops::index as k;
use cuda::Contig;

/// Rows `ids` of `weight` `[V, H]`, shaped `ids.shape + [H]`.
pub(crate) fn embedding(weight: &Tensor, ids: &Tensor) -> Result<Tensor> {
    const OP: &str = "embedding";
    operands(OP, [weight, ids])?;
    let (sw, si) = (contig(OP, weight)?, contig(OP, ids)?);
    let (v, h, n) = (weight.shape()[0], weight.shape()[1], ids.elem_count());
    let ic = Contig::new(si.typed::<i64>(OP)?, 0);
    let out = map_cuda_buf!(&*sw.buf, b => wrap(emb::embedding(&sw.gpu, Contig::new(b, 0), v, h, ic, n)?));
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
        let out = emb::embedding_backward(&si.gpu, ic, gc, n, h, num_embeddings)?;
        Ok(tensor_of(&si.gpu, wrap(out), &[num_embeddings, h]))
    })
}

/// Slices of `x` along `dim` at `ids` (1-D), shaped `out_shape`.
pub(crate) fn index_select(
    x: &Tensor,
    dim: usize,
    ids: &Tensor,
    out_shape: &[usize],
) -> Result<Tensor> {
    const OP: &str = "index_select";
    let [sx, _] = operands(OP, [x, ids])?;
    let si = contig(OP, ids)?;
    let (gpu, ic) = (&sx.gpu, Contig::new(si.typed::<i64>(OP)?, 0));
    let n = ids.elem_count();
    let out = map_cuda_buf!(&*sx.buf, b => wrap(k::index_select(
        gpu,
        strided(b, x.layout()),
        x.shape(),
        dim,
        ic,
        n,
    )?));
    Ok(tensor_of(gpu, out, out_shape))
}

/// torch.gather of `x` along `dim` at `index` (same rank); shaped like `index`.
pub(crate) fn gather(x: &Tensor, dim: usize, index: &Tensor) -> Result<Tensor> {
    const OP: &str = "gather";
    let [sx, _] = operands(OP, [x, index])?;
    let si = contig(OP, index)?;
    let (gpu, ic) = (&sx.gpu, Contig::new(si.typed::<i64>(OP)?, 0));
    let out = map_cuda_buf!(&*sx.buf, b => wrap(k::gather(
        gpu,
        strided(b, x.layout()),
        x.shape(),
        dim,
        ic,
        index.shape(),
    )?));
    Ok(tensor_of(gpu, out, index.shape()))
}

/// `base` with slice j of `src` along `dim` added at slice `ids[j]`.
pub(crate) fn index_add(base: &Tensor, dim: usize, ids: &Tensor, src: &Tensor) -> Result<Tensor> {
    const OP: &str = "index_add";
    let [sb, _, ss] = operands(OP, [base, ids, src])?;
    let si = contig(OP, ids)?;
    let (gpu, ic) = (&sb.gpu, Contig::new(si.typed::<i64>(OP)?, 0));
    let n = ids.elem_count();
    let out = map_cuda_buf!(&*sb.buf, b => wrap(k::index_add(
        gpu,
        strided(b, base.layout()),
        base.shape(),
        dim,
        ic,
        n,
        strided(ss.typed(OP)?, src.layout()),
    )?));
    Ok(tensor_of(gpu, out, base.shape()))
}

/// torch.scatter_add: `base` with `src[p]` added at p with `dim` replaced by `index[p]`.
pub(crate) fn scatter_add(
    base: &Tensor,
    dim: usize,
    index: &Tensor,
    src: &Tensor,
) -> Result<Tensor> {
    const OP: &str = "scatter_add";
    let [sb, _, ss] = operands(OP, [base, index, src])?;
    let si = contig(OP, index)?;
    let (gpu, ic) = (&sb.gpu, Contig::new(si.typed::<i64>(OP)?, 0));
    let out = map_cuda_buf!(&*sb.buf, b => wrap(k::scatter_add(
        gpu,
        strided(b, base.layout()),
        base.shape(),
        dim,
        ic,
        index.shape(),
        strided(ss.typed(OP)?, src.layout()),
    )?));
    Ok(tensor_of(gpu, out, base.shape()))
}
