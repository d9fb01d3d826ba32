//! CUDA dispatch of `cross_entropy` and `cross_entropy_backward` (`cuda::ops::cross_entropy`):
//! `[N, C]` logits (f32/f16/bf16) against i64 targets on the same GPU, the per-row log-sum-exp
//! (f32) saved for the backward. Targets stay on the device: the kernels check them and report a
//! bad one through the status word (`Device::check_status`).

use super::rows::contig;
use super::{float_kernel, operands, tensor_of, wrap};
use crate::{Result, Tensor};
use cuda::ops::cross_entropy as k;
use cuda::Contig;

/// (mean loss as a rank-0 tensor, lse `[N]`).
pub(crate) fn cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    ignore_index: i64,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "cross_entropy";
    operands(OP, [logits, targets])?;
    let (sx, st) = (contig(OP, logits)?, contig(OP, targets)?);
    let (rows, c) = (logits.shape()[0], logits.shape()[1]);
    let gpu = &sx.gpu;
    float_kernel!(OP, logits.dtype(), T => {
        let (xc, tc) = (Contig::new(sx.typed::<T>(OP)?, 0), Contig::new(st.typed::<i64>(OP)?, 0));
        let out = k::cross_entropy(gpu, xc, rows, c, tc, ignore_index)?;
        Ok((tensor_of(gpu, wrap(out.loss), &[]), tensor_of(gpu, wrap(out.lse), &[rows])))
    })
}

/// grad_loss * (softmax(row) - onehot(target)) / n_valid, zero rows where ignored; times the
/// rank-0 f32 contiguous device tensor `grad_device` when given.
pub(crate) fn cross_entropy_backward(
    logits: &Tensor,
    targets: &Tensor,
    lse: &Tensor,
    ignore_index: i64,
    grad_loss: f64,
    grad_device: Option<&Tensor>,
) -> Result<Tensor> {
    const OP: &str = "cross_entropy_backward";
    operands(OP, [logits, targets, lse])?;
    let grad = grad_device.map(|g| contig(OP, g)).transpose()?;
    let grad = grad.as_ref().map(|g| g.typed::<f32>(OP)).transpose()?;
    let [sx, st, sl] = [logits, targets, lse].map(|t| contig(OP, t));
    let (sx, st, sl) = (sx?, st?, sl?);
    let (rows, c) = (logits.shape()[0], logits.shape()[1]);
    let gpu = &sx.gpu;
    float_kernel!(OP, logits.dtype(), T => {
        let (xc, tc) = (Contig::new(sx.typed::<T>(OP)?, 0), Contig::new(st.typed::<i64>(OP)?, 0));
        let lc = Contig::new(sl.typed::<f32>(OP)?, 0);
        let g = k::cross_entropy_backward(gpu, xc, rows, c, tc, lc, ignore_index, grad_loss, grad)?;
        Ok(tensor_of(gpu, wrap(g), logits.shape()))
    })
}
