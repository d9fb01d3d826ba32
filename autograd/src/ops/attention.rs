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
//! - Otherwise (the CPU, or sizes outside the limits): the composed ops, q kᵀ (`matmul`), the fused
//!   masked softmax (`softmax_last`), `dropout` drawing from `rng`, and `matmul` with v: on the
//!   CPU exactly the ops, order and random draws attention used before this door existed, so
//!   results and generator state are bit for bit unchanged.
//! - `COTMAE_ATTENTION=composed` in the environment turns the flash path off (read once), so a
//!   benchmark can time both paths on a GPU.
//!
//! Under [`autocast`](crate::autocast) with a half dtype, f32 CUDA operands that take the flash
//! path are cast to the half dtype first (the kernels then compute as for half inputs) and the
//! output back to f32; the composed path gets the same from its `matmul`s.

use crate::autocast::gemm_dtype;
use crate::var::Var;
use tensor::ops::attention::AttentionDropout;
use tensor::{DType, Result, Rng, Tensor};

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
            let (qh, kh, vh) = (q.to_dtype(half)?, k.to_dtype(half)?, v.to_dtype(half)?);
            let out =
                Var::scaled_dot_product_attention(&qh, &kh, &vh, mask, scale, dropout_p, rng)?;
            return out.to_dtype(DType::F32);
        }
        if fits {
            let mask = match mask {
                Some(m) if m.dtype() != q.value().dtype() => Some(m.to_dtype(q.value().dtype())?),
                m => m.cloned(),
            };
            let dropout = match rng {
                Some(rng) => {
                    let probs = q.shape()[..3].iter().product::<usize>() * k.shape()[2];
                    Some(AttentionDropout::draw(dropout_p, probs, rng)?)
                }
                None => None,
            };
            return Var::flash_attention(q, k, v, mask.as_ref(), scale, dropout);
        }
        let scores = q.matmul(&k.transpose(2, 3)?)?;
        let probs = scores.softmax_last(mask, scale)?;
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
        let (qt, kt, vt) = (q.value().clone(), k.value().clone(), v.value().clone());
        let (out, lse) = Tensor::flash_attention(&qt, &kt, &vt, mask, scale, dropout)?;
        let (saved_out, mask) = (out.clone(), mask.cloned());
        Ok(Var::from_op(
            "flash_attention",
            out,
            vec![q.clone(), k.clone(), v.clone()],
            Box::new(move |g| {
                let (dq, dk, dv) = Tensor::flash_attention_backward(
                    &qt,
                    &kt,
                    &vt,
                    mask.as_ref(),
                    &saved_out,
                    &lse,
                    g,
                    scale,
                    dropout,
                )?;
                Ok(vec![Some(dq), Some(dk), Some(dv)])
            }),
        ))
    }
}
