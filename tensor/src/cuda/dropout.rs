//! CUDA dispatch of `dropout` and its backward (`cuda::ops::dropout`): the keep mask is drawn on
//! the device from the same Philox draw (seed, first block) the CPU uses, so both devices drop
//! the same elements; outputs and mask are contiguous. f32/f16/bf16.

use super::rows::contig;
use super::{float_kernel, operands, tensor_of, wrap};
use crate::{Result, Tensor};
use cuda::ops::dropout::{self as k, Draw};
use cuda::Contig;

/// (out, keep mask u8) for drop probability `p` and the draw at (`seed`, `offset`).
pub(crate) fn dropout(x: &Tensor, p: f64, (seed, offset): (u64, u64)) -> Result<(Tensor, Tensor)> {
    const OP: &str = "dropout";
    let s = contig(OP, x)?;
    let (n, draw) = (x.elem_count(), Draw { seed, offset });
    float_kernel!(OP, x.dtype(), T => {
        let (out, keep) = k::dropout(&s.gpu, Contig::new(s.typed::<T>(OP)?, 0), n, p, draw)?;
        Ok((tensor_of(&s.gpu, wrap(out), x.shape()), tensor_of(&s.gpu, wrap(keep), x.shape())))
    })
}

/// (dropout(x) + residual, keep mask u8) in one kernel, the draw at (`seed`, `offset`).
pub(crate) fn dropout_add(
    op: &'static str,
    x: &Tensor,
    residual: &Tensor,
    p: f64,
    (seed, offset): (u64, u64),
) -> Result<(Tensor, Tensor)> {
    operands(op, [x, residual])?;
    let (sx, sr) = (contig(op, x)?, contig(op, residual)?);
    let (n, draw) = (x.elem_count(), Draw { seed, offset });
    float_kernel!(op, x.dtype(), T => {
        let (xc, rc) = (Contig::new(sx.typed::<T>(op)?, 0), Contig::new(sr.typed::<T>(op)?, 0));
        let (out, keep) = k::dropout_add(&sx.gpu, xc, rc, n, p, draw)?;
        Ok((tensor_of(&sx.gpu, wrap(out), x.shape()), tensor_of(&sx.gpu, wrap(keep), x.shape())))
    })
}

/// `x * keep / (1 - p)`.
pub(crate) fn dropout_apply(op: &'static str, x: &Tensor, keep: &Tensor, p: f64) -> Result<Tensor> {
    operands(op, [x, keep])?;
    let (sx, sk) = (contig(op, x)?, contig(op, keep)?);
    float_kernel!(op, x.dtype(), T => {
        let (xc, kc) = (Contig::new(sx.typed::<T>(op)?, 0), Contig::new(sk.typed::<u8>(op)?, 0));
        let out = k::dropout_apply(&sx.gpu, xc, kc, x.elem_count(), p)?;
        Ok(tensor_of(&sx.gpu, wrap(out), x.shape()))
    })
}
