//! Scaled dot-product attention, the one door attention layers call:
//! out = dropout(softmax(q kᵀ · scale + mask)) v for q `[B, H, Sq, D]`, k and v `[B, H, Sk, D]`
//! (any views, e.g. `[B, S, H, D]` projections with heads moved forward) and the additive mask
//! broadcast to `[B, H, Sq, Sk]` (BERT's `[B, 1, 1, Sk]` padding mask).
//!
//! - Operands on one CUDA device within the flash kernels' limits (`Tensor::flash_attention_fits`:
//!   f32/f16/bf16, head dim <= 128, Sk <= 512): one node, `flash_attention`, whose backward
//!   recomputes the probabilities from the saved log-sum-exp. Its dropout draws the keep mask the
//!   composed path would draw for the `[B, H, Sq, Sk]` probs, from the same generator state, and
//!   advances the generator by the same amount. A mask of another float dtype (an f32 mask with
//!   half q/k/v) is cast to q's dtype.
//! - Inference under bf16 autocast on the CPU: `Tensor::attention_bf16`, one fused pass per
//!   (batch, head) with the same bits as the composed ops below.
//! - Otherwise (the CPU, or sizes outside the limits): the composed ops, q kᵀ (`matmul`), the fused
//!   masked softmax (`softmax_last`), `dropout` drawing from `rng`, and `matmul` with v: on the
//!   CPU exactly the ops, order and random draws attention used before this door existed, so
//!   results and generator state are bit for bit unchanged.
//! - `COTMAE_ATTENTION=composed` in the environment turns the flash path off (read once), so a
//!   benchmark can time both paths on a GPU.
//!
//! Under [`autocast`](crate::autocast) with a half dtype, f32 CUDA operands that take the flash
//! path are cast to the half dtype first (the kernels then compute as for half inputs; operands
//! already half, the projections of a half `Linear`, are read directly) and the output stays
//! half, as torch's autocast returns it; the composed path gets the same from its `matmul`s, its
//! softmax computing in f32 internally.

use crate::autocast::gemm_dtype;
use crate::var::Var;
use tensor::ops::attention::AttentionDropout;
use tensor::{DType, Device, Result, Rng, Tensor};

/// False when `COTMAE_ATTENTION=composed` (see the module doc).
fn flash_enabled() -> bool {
    static FLASH: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLASH.get_or_init(|| std::env::var("COTMAE_ATTENTION").map_or(true, |v| v != "composed"))
}

impl Var {
    /// See the module doc. Dropout with probability `dropout_p` is applied iff `rng` is given
    /// and `dropout_p != 0` (as `Var::dropout` in train mode); `None` is evaluation.
    pub fn scaled_dot_product_attention(
        q: &Var,
        k: &Var,
        v: &Var,
        mask: Option<&Tensor>,
        scale: f64,
        dropout_p: f64,
        rng: Option<&mut Rng>,
    ) -> Result<Var> {
        let rng = rng.filter(|_| dropout_p != 0.0);
        let fits = flash_enabled() && Tensor::flash_attention_fits(q.value(), k.value(), v.value());
        if let (Some(half), true) = (gemm_dtype(&[q.value(), k.value(), v.value()]), fits) {
            let cast = |x: &Var| match x.value().dtype() == half {
                true => Ok(x.clone()),
                false => x.to_dtype(half),
            };
            let (qh, kh, vh) = (cast(q)?, cast(k)?, cast(v)?);
            return Var::scaled_dot_product_attention(&qh, &kh, &vh, mask, scale, dropout_p, rng);
        }
        if fits {
            let (mask, dropout) = flash_inputs(q.value(), k.value(), mask, dropout_p, rng)?;
            return Var::flash_attention(q, k, v, mask.as_ref(), scale, dropout);
        }
        if let Some(out) = fused_cpu_bf16(q, k, v, mask, scale, rng.is_some())? {
            return Ok(out);
        }
        let scores = q.matmul(&k.transpose(2, 3)?)?;
        // Half scores (autocast) take the mask in their dtype, as the flash path does.
        let mask = match mask {
            Some(m)
                if m.dtype() != scores.value().dtype()
                    && scores.value().device() != Device::Cpu =>
            {
                Some(m.to_dtype(scores.value().dtype())?)
            }
            m => m.cloned(),
        };
        let probs = scores.softmax_last(mask.as_ref(), scale)?;
        let probs = match rng {
            Some(rng) => probs.dropout(dropout_p, true, rng)?,
            None => probs,
        };
        probs.matmul(v)
    }

    /// `Tensor::flash_attention` as one node (the fused kernels on CUDA, the f64 reference on the
    /// CPU); the backward calls `Tensor::flash_attention_backward` with the saved output and
    /// log-sum-exp. `dropout` is an already reserved draw.
    pub fn flash_attention(
        q: &Var,
        k: &Var,
        v: &Var,
        mask: Option<&Tensor>,
        scale: f64,
        dropout: Option<AttentionDropout>,
    ) -> Result<Var> {
        let inputs = vec![q.clone(), k.clone(), v.clone()];
        let qkv = [q, k, v].map(|x| x.value().clone());
        flash_node(
            "flash_attention",
            inputs,
            qkv,
            mask,
            scale,
            dropout,
            |[dq, dk, dv]| Ok(vec![Some(dq), Some(dk), Some(dv)]),
        )
    }
}

/// Inference under bf16 autocast on the CPU (no gradient, no dropout, q, k, v all f32 or all
/// bf16 on the CPU, an f32 mask): `Tensor::attention_bf16`, the composed path's bits without its
/// [B, H, Sq, Sk] intermediates. None when that does not apply.
fn fused_cpu_bf16(
    q: &Var,
    k: &Var,
    v: &Var,
    mask: Option<&Tensor>,
    scale: f64,
    dropout: bool,
) -> Result<Option<Var>> {
    let (qt, kt, vt) = (q.value(), k.value(), v.value());
    // bf16 q, k, v: the fused BERT projection hands them over rounded (what the packing does).
    let operand = |t: &Tensor| {
        matches!(t.dtype(), DType::F32 | DType::BF16)
            && t.dtype() == qt.dtype()
            && t.device() == Device::Cpu
    };
    let applies = !dropout
        && !crate::is_grad_enabled()
        && crate::autocast::autocast_dtype() == Some(DType::BF16)
        && [qt, kt, vt].into_iter().all(operand)
        && mask.is_none_or(|m| crate::autocast::cpu_bf16_products(&[m]))
        && [qt, kt, vt].iter().all(|t| t.rank() == 4);
    if !applies {
        return Ok(None);
    }
    let out = Tensor::attention_bf16(qt, kt, vt, mask, scale)?;
    Ok(Some(Var::constant(out)))
}

/// q, k and v of a fused projection `qkv [B, S, 3 * heads * D]` (q, then k, then v along the
/// last dim, heads inside each, as `Linear`s' outputs side by side) as `[B, heads, S, D]`
/// strided views of it: no copies.
fn qkv_views(qkv: &Tensor, heads: usize) -> Result<[Tensor; 3]> {
    const OP: &str = "fused_qkv_attention";
    let &[b, s, w] = qkv.shape() else {
        tensor::bail!(
            OP,
            "expected qkv [batch, seq, 3 * hidden], got {:?}",
            qkv.shape()
        );
    };
    if heads == 0 || w % (3 * heads) != 0 {
        tensor::bail!(OP, "last dim {w} is not 3 x {heads} heads x a head dim");
    }
    let (h, d) = (w / 3, w / 3 / heads);
    let view = |i: usize| {
        qkv.narrow(2, i * h, h)?
            .reshape(&[b, s, heads, d])?
            .transpose(1, 2)
    };
    Ok([view(0)?, view(1)?, view(2)?])
}

impl Var {
    /// Attention over a fused QKV projection `qkv [B, S, 3 * heads * D]` (see [`qkv_views`]):
    /// `[B, heads, S, D]` like [`Var::scaled_dot_product_attention`] of the three views, with
    /// the same dropout draws. Where the flash kernels take the views (one GPU, their limits),
    /// one node reads q, k and v in place and its backward writes dq, dk and dv into one
    /// `[B, S, 3 * heads * D]` gradient (one concatenation, no zero-padded pieces); otherwise
    /// the views as `Var`s through `scaled_dot_product_attention`.
    pub fn fused_qkv_attention(
        qkv: &Var,
        heads: usize,
        mask: Option<&Tensor>,
        scale: f64,
        dropout_p: f64,
        rng: Option<&mut Rng>,
    ) -> Result<Var> {
        let [q, k, v] = qkv_views(qkv.value(), heads)?;
        let rng = rng.filter(|_| dropout_p != 0.0);
        if !(flash_enabled() && Tensor::flash_attention_fits(&q, &k, &v)) {
            let (b, s, w) = (qkv.shape()[0], qkv.shape()[1], qkv.shape()[2]);
            let view = |i: usize| {
                qkv.narrow(2, i * w / 3, w / 3)?
                    .reshape(&[b, s, heads, w / 3 / heads])?
                    .transpose(1, 2)
            };
            let (q, k, v) = (view(0)?, view(1)?, view(2)?);
            return Var::scaled_dot_product_attention(&q, &k, &v, mask, scale, dropout_p, rng);
        }
        let (mask, dropout) = flash_inputs(&q, &k, mask, dropout_p, rng)?;
        let shape = qkv.shape().to_vec();
        flash_node(
            "fused_qkv_attention",
            vec![qkv.clone()],
            [q, k, v],
            mask.as_ref(),
            scale,
            dropout,
            move |[dq, dk, dv]| {
                // [B, heads, S, D] each -> [B, S, heads, D] views, side by side on the heads dim.
                let parts = [
                    dq.transpose(1, 2)?,
                    dk.transpose(1, 2)?,
                    dv.transpose(1, 2)?,
                ];
                let dqkv = Tensor::cat(&[&parts[0], &parts[1], &parts[2]], 2)?;
                Ok(vec![Some(dqkv.reshape(&shape)?)])
            },
        )
    }
}

/// The flash path's inputs: the mask in q's dtype, and the dropout drawn from `rng` as the
/// composed path would draw it for the `[B, H, Sq, Sk]` probabilities (None in evaluation).
fn flash_inputs(
    q: &Tensor,
    k: &Tensor,
    mask: Option<&Tensor>,
    dropout_p: f64,
    rng: Option<&mut Rng>,
) -> Result<(Option<Tensor>, Option<AttentionDropout>)> {
    let mask = match mask {
        Some(m) if m.dtype() != q.dtype() => Some(m.to_dtype(q.dtype())?),
        m => m.cloned(),
    };
    let dropout = match rng {
        Some(rng) => {
            let probs = q.shape()[..3].iter().product::<usize>() * k.shape()[2];
            Some(AttentionDropout::draw(dropout_p, probs, rng)?)
        }
        None => None,
    };
    Ok((mask, dropout))
}

/// `Tensor::flash_attention` over `[q, k, v]` as one node over `inputs`; its backward runs
/// `Tensor::flash_attention_backward` with the saved output and log-sum-exp and `grads` turns
/// (dq, dk, dv) into the inputs' gradients.
fn flash_node(
    name: &'static str,
    inputs: Vec<Var>,
    [q, k, v]: [Tensor; 3],
    mask: Option<&Tensor>,
    scale: f64,
    dropout: Option<AttentionDropout>,
    grads: impl Fn([Tensor; 3]) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
) -> Result<Var> {
    let (out, lse) = Tensor::flash_attention(&q, &k, &v, mask, scale, dropout)?;
    let (saved_out, mask) = (out.clone(), mask.cloned());
    Ok(Var::from_op(
        name,
        out,
        inputs,
        Box::new(move |g| {
            let (dq, dk, dv) = Tensor::flash_attention_backward(
                &q,
                &k,
                &v,
                mask.as_ref(),
                &saved_out,
                &lse,
                g,
                scale,
                dropout,
            )?;
            grads([dq, dk, dv])
        }),
    ))
}
