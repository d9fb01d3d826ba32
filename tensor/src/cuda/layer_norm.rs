//! CUDA dispatch of `layer_norm` and `layer_norm_backward` (`cuda::ops::layer_norm`): rows of the
//! last dim H, contiguous copies of every operand, f32/f16/bf16 activations with weights of the
//! same dtype or f32 (mixed precision). The saved statistics are f32.

use super::rows::contig;
use super::{float_kernel, operands, tensor_of, wrap};
use crate::{Result, Tensor};
use cuda::ops::layer_norm as k;
use cuda::Contig;

/// (rows, H, the statistics' shape) of `x`.
fn rows_of(x: &Tensor) -> (usize, usize, &[usize]) {
    let (h, stat) = x
        .shape()
        .split_last()
        .expect("rank >= 1, checked by the op");
    (stat.iter().product(), *h, stat)
}

/// (y, mean, rstd).
pub(crate) fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "layer_norm";
    operands(OP, [x, weight, bias])?;
    let [sx, sw, sb] = [x, weight, bias].map(|t| contig(OP, t));
    let (sx, sw, sb) = (sx?, sw?, sb?);
    let (rows, h, stat) = rows_of(x);
    let gpu = &sx.gpu;
    float_kernel!(OP, x.dtype(), T => float_kernel!(OP, weight.dtype(), W => {
        let xc = Contig::new(sx.typed::<T>(OP)?, 0);
        let (wc, bc) = (Contig::new(sw.typed::<W>(OP)?, 0), Contig::new(sb.typed::<W>(OP)?, 0));
        let out = k::layer_norm(gpu, xc, rows, h, wc, bc, eps)?;
        Ok((
            tensor_of(gpu, wrap(out.y), x.shape()),
            tensor_of(gpu, wrap(out.mean), stat),
            tensor_of(gpu, wrap(out.rstd), stat),
        ))
    }))
}

/// (dx, dweight, dbias).
pub(crate) fn layer_norm_backward(
    x: &Tensor,
    weight: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "layer_norm_backward";
    operands(OP, [x, weight, mean, rstd, dy])?;
    let s = [x, weight, mean, rstd, dy].map(|t| contig(OP, t));
    let [sx, sw, sm, sr, sg] = s;
    let (sx, sw, sm, sr, sg) = (sx?, sw?, sm?, sr?, sg?);
    let (rows, h, _) = rows_of(x);
    let gpu = &sx.gpu;
    float_kernel!(OP, x.dtype(), T => float_kernel!(OP, weight.dtype(), W => {
        let (xc, gc) = (Contig::new(sx.typed::<T>(OP)?, 0), Contig::new(sg.typed::<T>(OP)?, 0));
        let wc = Contig::new(sw.typed::<W>(OP)?, 0);
        let (mc, rc) = (Contig::new(sm.typed::<f32>(OP)?, 0), Contig::new(sr.typed::<f32>(OP)?, 0));
        let g = k::layer_norm_backward(gpu, xc, wc, mc, rc, gc, rows, h)?;
        Ok((
            tensor_of(gpu, wrap(g.dx), x.shape()),
            tensor_of(gpu, wrap(g.dweight), weight.shape()),
            tensor_of(gpu, wrap(g.dbias), weight.shape()),
        ))
    }))
}
