//! CUDA dispatch of the row ops of `ops/activation.rs` and `ops/softmax.rs`: GELU and its
//! backward (elementwise over contiguous copies), bias + GELU and its backward (with the bias's
//! column-sum gradient), softmax / log-softmax over the last dim with
//! the fused scale and additive mask, and their backward passes. f32, f16 and bf16 (computed in
//! f32 by the kernels, as the CPU widens halves).

use super::{float_kernel, operands, tensor_of, wrap, CudaStorage};
use crate::{Result, Tensor};
use cuda::ops::{activation, softmax};
use cuda::Contig;

/// `t`'s elements contiguous on its GPU (shared when they already are).
pub(crate) fn contig(op: &'static str, t: &Tensor) -> Result<CudaStorage> {
    let [s] = operands(op, [t])?;
    s.contiguous(t.layout())
}

/// GELU (erf form) elementwise.
pub(crate) fn gelu(x: &Tensor) -> Result<Tensor> {
    const OP: &str = "gelu";
    let s = contig(OP, x)?;
    float_kernel!(OP, x.dtype(), T => {
        let out = activation::gelu(&s.gpu, Contig::new(s.typed::<T>(OP)?, 0), x.elem_count())?;
        Ok(tensor_of(&s.gpu, wrap(out), x.shape()))
    })
}

/// dy * gelu'(x).
pub(crate) fn gelu_backward(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    const OP: &str = "gelu_backward";
    operands(OP, [x, dy])?;
    let (sx, sg) = (contig(OP, x)?, contig(OP, dy)?);
    float_kernel!(OP, x.dtype(), T => {
        let (xc, gc) = (Contig::new(sx.typed::<T>(OP)?, 0), Contig::new(sg.typed::<T>(OP)?, 0));
        let out = activation::gelu_backward(&sx.gpu, xc, gc, x.elem_count())?;
        Ok(tensor_of(&sx.gpu, wrap(out), x.shape()))
    })
}

/// Runs `$body` with `$T` the element type of `$x` and `$W` that of `$b` (both f32, f16 or bf16;
/// the kernels accept the same type, or f32 with a half `$T`).
macro_rules! bias_kernel {
    ($op:expr, $x:expr, $b:expr, $T:ident, $W:ident => $body:expr) => {
        float_kernel!($op, $x.dtype(), $T => float_kernel!($op, $b.dtype(), $W => $body))
    };
}

/// gelu(x + b), b broadcast over the rows of x's last dim.
pub(crate) fn bias_gelu(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    const OP: &str = "bias_gelu";
    operands(OP, [x, b])?;
    let (sx, sb) = (contig(OP, x)?, contig(OP, b)?);
    let h = b.elem_count();
    bias_kernel!(OP, x, b, T, W => {
        let (xc, bc) = (Contig::new(sx.typed::<T>(OP)?, 0), Contig::new(sb.typed::<W>(OP)?, 0));
        let out = activation::bias_gelu(&sx.gpu, xc, bc, x.elem_count() / h.max(1), h)?;
        Ok(tensor_of(&sx.gpu, wrap(out), x.shape()))
    })
}

/// (dy * gelu'(x + b), its column sums in b's dtype).
pub(crate) fn bias_gelu_backward(x: &Tensor, b: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    const OP: &str = "bias_gelu_backward";
    operands(OP, [x, b, dy])?;
    let (sx, sb, sg) = (contig(OP, x)?, contig(OP, b)?, contig(OP, dy)?);
    let h = b.elem_count();
    bias_kernel!(OP, x, b, T, W => {
        let (xc, bc) = (Contig::new(sx.typed::<T>(OP)?, 0), Contig::new(sb.typed::<W>(OP)?, 0));
        let gc = Contig::new(sg.typed::<T>(OP)?, 0);
        let rows = x.elem_count() / h.max(1);
        let (dx, db) = activation::bias_gelu_backward(&sx.gpu, xc, bc, gc, rows, h)?;
        Ok((tensor_of(&sx.gpu, wrap(dx), x.shape()), tensor_of(&sx.gpu, wrap(db), b.shape())))
    })
}

/// softmax(x * scale + mask) over the last dim (its log with `log`); `mask` broadcasts to `x`.
pub(crate) fn softmax_last(
    op: &'static str,
    x: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
    log: bool,
) -> Result<Tensor> {
    let shape = x.shape();
    let mask = match mask {
        None => None,
        Some(m) => {
            operands(op, [x, m])?;
            let n = shape[shape.len() - 1];
            let l = m.layout().broadcast_to(op, shape)?;
            // The kernel reads the mask along a row with stride 0 or 1 only.
            let m = if n > 1 && l.strides()[l.rank() - 1] > 1 {
                m.copy()?
            } else {
                m.clone()
            };
            let l = m.layout().broadcast_to(op, shape)?;
            Some((m, l))
        }
    };
    let s = contig(op, x)?;
    float_kernel!(op, x.dtype(), T => {
        let m = match &mask {
            Some((m, l)) => Some(super::strided(operands(op, [m])?[0].typed::<T>(op)?, l)),
            None => None,
        };
        let xc = Contig::new(s.typed::<T>(op)?, 0);
        let out = softmax::softmax(&s.gpu, xc, shape, m, scale as f32, log)?;
        Ok(tensor_of(&s.gpu, wrap(out), shape))
    })
}

/// The gradient of `softmax_last` (of its log with `log`) from its output `y` and `dy`.
pub(crate) fn softmax_backward(
    op: &'static str,
    y: &Tensor,
    dy: &Tensor,
    scale: f64,
    log: bool,
) -> Result<Tensor> {
    operands(op, [y, dy])?;
    let (sy, sg) = (contig(op, y)?, contig(op, dy)?);
    float_kernel!(op, y.dtype(), T => {
        let (yc, gc) = (Contig::new(sy.typed::<T>(op)?, 0), Contig::new(sg.typed::<T>(op)?, 0));
        let out = softmax::softmax_backward(&sy.gpu, yc, gc, y.shape(), scale as f32, log)?;
        Ok(tensor_of(&sy.gpu, wrap(out), y.shape()))
    })
}
