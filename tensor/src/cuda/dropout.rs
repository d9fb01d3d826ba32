//! CUDA dispatch of `dropout` and its backward (`cuda::ops::dropout`): the keep mask is drawn on
//! the device from the same Philox draw (seed, first block) the CPU uses, so both devices drop
//! the same elements; outputs and mask are contiguous. f32/f16/bf16.

use super::rows::contig;
use super::{float_kernel, operands, tensor_of, wrap};
use crate::{DType, Result, Tensor};
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
    if x.dtype() != residual.dtype() {
        // A half branch into an f32 residual (checked by the caller): f32 out.
        return half_kernel(op, x.dtype(), |h| {
            let rc = Contig::new(sr.typed::<f32>(op)?, 0);
            let (out, keep) = match h {
                Half::F16 => k::dropout_add(
                    &sx.gpu,
                    Contig::new(sx.typed::<half::f16>(op)?, 0),
                    rc,
                    n,
                    p,
                    draw,
                )?,
                Half::BF16 => k::dropout_add(
                    &sx.gpu,
                    Contig::new(sx.typed::<half::bf16>(op)?, 0),
                    rc,
                    n,
                    p,
                    draw,
                )?,
            };
            Ok((
                tensor_of(&sx.gpu, wrap(out), x.shape()),
                tensor_of(&sx.gpu, wrap(keep), x.shape()),
            ))
        });
    }
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

/// `dy * keep / (1 - p)` from an f32 `dy` into the half dtype `dtype` (one kernel).
pub(crate) fn dropout_apply_to(
    op: &'static str,
    dy: &Tensor,
    keep: &Tensor,
    p: f64,
    dtype: DType,
) -> Result<Tensor> {
    operands(op, [dy, keep])?;
    let (sx, sk) = (contig(op, dy)?, contig(op, keep)?);
    let (g, kc) = (
        Contig::new(sx.typed::<f32>(op)?, 0),
        Contig::new(sk.typed::<u8>(op)?, 0),
    );
    let n = dy.elem_count();
    half_kernel(op, dtype, |h| {
        let out = match h {
            Half::F16 => wrap(k::dropout_apply_to::<f32, half::f16>(&sx.gpu, g, kc, n, p)?),
            Half::BF16 => wrap(k::dropout_apply_to::<f32, half::bf16>(
                &sx.gpu, g, kc, n, p,
            )?),
        };
        Ok(tensor_of(&sx.gpu, out, dy.shape()))
    })
}

/// The two half dtypes the mixed kernels take.
enum Half {
    F16,
    BF16,
}

/// `f` for f16 or bf16; an error naming `op` for another dtype.
fn half_kernel<R>(op: &'static str, dtype: DType, f: impl FnOnce(Half) -> Result<R>) -> Result<R> {
    match dtype {
        DType::F16 => f(Half::F16),
        DType::BF16 => f(Half::BF16),
        other => crate::bail!(
            op,
            "a mixed-dtype kernel needs an f16/bf16 operand, got {other}"
        ),
    }
}
