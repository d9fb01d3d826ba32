//! CUDA dispatch of flash attention (`cuda::ops::flash_attention`): q, k, v, dO and the mask are
//! handed over as their layouts (offset and strides, the mask broadcast to `[B, H, Sq, Sk]`), so
//! no operand is copied; outputs are contiguous, lse f32. f32, f16 and bf16.

use super::{float_kernel, operands, tensor_of, wrap, CudaElem, CudaStorage};
use crate::ops::attention::{AttentionDropout, AttentionShape};
use crate::{DType, Device, Layout, Result, Tensor};
use cuda::ops::attention::{AttentionDims, Heads};
use cuda::ops::dropout::Draw;
use cuda::ops::flash_attention::{self as k, FlashDropout, FlashInputs};
use cuda::ops::FloatElem;
use cuda::Contig;

fn dims(s: AttentionShape) -> AttentionDims {
    AttentionDims {
        batch: s.batch,
        heads: s.heads,
        q_len: s.q_len,
        k_len: s.k_len,
        head_dim: s.head_dim,
    }
}

/// See `Tensor::flash_attention_fits`.
pub(crate) fn fits(q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
    let on_one_gpu = matches!(q.device(), Device::Cuda(_))
        && k.device() == q.device()
        && v.device() == q.device();
    let float = matches!(q.dtype(), DType::F32 | DType::F16 | DType::BF16);
    let (&[b, h, sq, d], &[_, _, sk, _]) = (q.shape(), k.shape()) else {
        return false;
    };
    on_one_gpu
        && float
        && k::fits(&dims(AttentionShape {
            batch: b,
            heads: h,
            q_len: sq,
            k_len: sk,
            head_dim: d,
        }))
}

/// A `[B, H, S, D]` tensor as the kernels' strided operand.
fn heads<'a, T: CudaElem + FloatElem>(
    op: &'static str,
    s: &'a CudaStorage,
    l: &Layout,
) -> Result<Heads<'a, T>> {
    let strides: [usize; 4] = l
        .strides()
        .try_into()
        .map_err(|_| crate::Error::op(op, "internal: attention operand of rank != 4"))?;
    Ok(Heads {
        buf: s.typed::<T>(op)?,
        offset: l.offset(),
        strides,
    })
}

/// The mask's storage and its layout broadcast to the scores' shape.
fn mask_operand<'a>(
    op: &'static str,
    q: &Tensor,
    mask: Option<&'a Tensor>,
    s: &AttentionShape,
) -> Result<Option<(&'a CudaStorage, Layout)>> {
    let Some(m) = mask else { return Ok(None) };
    super::same_device(op, &[q, m])?;
    let [ms] = operands(op, [m])?;
    Ok(Some((ms, m.layout().broadcast_to(op, &s.scores())?)))
}

/// The kernels' inputs for element type `T`.
fn inputs<'a, T: CudaElem + FloatElem>(
    op: &'static str,
    s: AttentionShape,
    qkv: [(&'a CudaStorage, &'a Tensor); 3],
    mask: &'a Option<(&'a CudaStorage, Layout)>,
    scale: f64,
    dropout: Option<AttentionDropout>,
) -> Result<FlashInputs<'a, T>> {
    let [q, k, v] = qkv.map(|(st, t)| heads::<T>(op, st, t.layout()));
    let mask = match mask {
        Some((ms, l)) => Some(super::strided(ms.typed::<T>(op)?, l)),
        None => None,
    };
    Ok(FlashInputs {
        dims: dims(s),
        q: q?,
        k: k?,
        v: v?,
        mask,
        scale: scale as f32,
        dropout: dropout.map(|d| FlashDropout {
            p: d.p,
            draw: Draw {
                seed: d.seed,
                offset: d.offset,
            },
        }),
    })
}

/// (out, lse) of `Tensor::flash_attention`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn flash_attention(
    op: &'static str,
    s: AttentionShape,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
    dropout: Option<AttentionDropout>,
) -> Result<(Tensor, Tensor)> {
    let [sq, sk, sv] = operands(op, [q, k, v])?;
    let mask = mask_operand(op, q, mask, &s)?;
    float_kernel!(op, q.dtype(), T => {
        let inp = inputs::<T>(op, s, [(sq, q), (sk, k), (sv, v)], &mask, scale, dropout)?;
        let r = k::flash_attention(&sq.gpu, &inp)?;
        Ok((
            tensor_of(&sq.gpu, wrap(r.out), &s.out()),
            tensor_of(&sq.gpu, wrap(r.lse), &s.out()[..3]),
        ))
    })
}

/// (dq, dk, dv) of `Tensor::flash_attention_backward`; `saved` is (out, lse, d_out).
#[allow(clippy::too_many_arguments)]
pub(crate) fn flash_attention_backward(
    op: &'static str,
    s: AttentionShape,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    [out, lse, d_out]: [&Tensor; 3],
    scale: f64,
    dropout: Option<AttentionDropout>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let [sq, sk, sv, so, sl, sg] = operands(op, [q, k, v, out, lse, d_out])?;
    let mask = mask_operand(op, q, mask, &s)?;
    // The kernels read out and lse contiguous (as the forward wrote them).
    let (so, sl) = (so.contiguous(out.layout())?, sl.contiguous(lse.layout())?);
    let kv_shape = [s.batch, s.heads, s.k_len, s.head_dim];
    float_kernel!(op, q.dtype(), T => {
        let inp = inputs::<T>(op, s, [(sq, q), (sk, k), (sv, v)], &mask, scale, dropout)?;
        let g = heads::<T>(op, sg, d_out.layout())?;
        let (oc, lc) = (Contig::new(so.typed::<T>(op)?, 0), Contig::new(sl.typed::<f32>(op)?, 0));
        let r = k::flash_attention_backward(&sq.gpu, &inp, oc, lc, g)?;
        Ok((
            tensor_of(&sq.gpu, wrap(r.dq), &s.out()),
            tensor_of(&sq.gpu, wrap(r.dk), &kv_shape),
            tensor_of(&sq.gpu, wrap(r.dv), &kv_shape),
        ))
    })
}
