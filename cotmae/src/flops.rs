//! FLOPs of one CoT-MAE pretraining step, counted from shapes (not timed, so deterministic).
//!
//! Only the matrix products are counted (they are >95% of a step's arithmetic at any width);
//! a product of an `[m, k]` by a `[k, n]` matrix is `2 m k n` FLOPs. One transformer layer over
//! `R` rows of `L` tokens (`T = R L`, hidden `H`, intermediate `I`) does, forward:
//!
//! ```text
//! Q, K, V projections   3 * 2 T H H
//! attention scores       2 R L L H     (Q K^T, all heads together)
//! scores times V         2 R L L H
//! output projection      2 T H H
//! feed-forward           2 T H I + 2 T I H
//! ```
//!
//! The MLM head runs on the masked tokens only (`lm.cls` gathers them before the vocabulary
//! projection): `M` masked tokens cost `2 M H H` (transform) `+ 2 M H V` (decoder). A step's
//! encoder sees `2B` rows (anchor and context spans) padded to `max_seq_length`; the decoder
//! head (`n_head_layers` layers, only with `use_decoder_head`) sees the same `2B x L` and its MLM
//! head scores the decoder's masked tokens when `enable_head_mlm`. Masked tokens per row are the
//! nominal `mask_ratio * (L - 2)` (every text cropped or padded to `L`, `[CLS]`/`[SEP]` never
//! masked). The backward pass of a product computes two products of the same size (gradients
//! of both operands), so a training step is 3x its forward FLOPs.
//!
//! [`pretrain_step_flops`] is the one place a step is counted; `cotmae ablation` uses it for
//! `match_compute` and the report's FLOPs column. The per-product formulas are the profiler's
//! ([`tensor::profiler::flops`]), so a profile's FLOP column and this count agree.

use tensor::profiler::flops;

/// The shapes one pretraining step's products depend on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepShape {
    /// Encoder rows per step: 2 x batch size x gradient accumulation.
    pub rows: usize,
    /// Tokens per row (`max_seq_length`).
    pub seq_len: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub encoder_layers: usize,
    /// Decoder-head layers; 0 without the decoder head.
    pub head_layers: usize,
    pub encoder_mask_ratio: f64,
    /// The decoder's mask ratio; `None` when its MLM loss is off (no head MLM products).
    pub decoder_mask_ratio: Option<f64>,
}

/// Forward FLOPs of one transformer layer over `rows x seq_len` tokens (module doc).
pub fn layer_forward_flops(s: &StepShape) -> f64 {
    flops::transformer_layer_forward(s.rows, s.seq_len, s.hidden, s.intermediate) as f64
}

/// Forward FLOPs of the MLM head over `masked` tokens.
pub fn mlm_head_forward_flops(s: &StepShape, masked: f64) -> f64 {
    flops::mlm_head_forward(masked as usize, s.hidden, s.vocab) as f64
}

/// FLOPs of one training step (forward and backward; module doc).
pub fn pretrain_step_flops(s: &StepShape) -> f64 {
    let maskable = (s.rows * s.seq_len.saturating_sub(2)) as f64;
    let layer = layer_forward_flops(s);
    let mut forward = s.encoder_layers as f64 * layer
        + mlm_head_forward_flops(s, (s.encoder_mask_ratio * maskable).round());
    if s.head_layers > 0 {
        forward += s.head_layers as f64 * layer;
        if let Some(ratio) = s.decoder_mask_ratio {
            forward += mlm_head_forward_flops(s, (ratio * maskable).round());
        }
    }
    flops::training_step(forward as u64) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> StepShape {
        StepShape {
            rows: 2,
            seq_len: 4,
            hidden: 8,
            intermediate: 32,
            vocab: 100,
            encoder_layers: 2,
            head_layers: 0,
            encoder_mask_ratio: 0.5,
            decoder_mask_ratio: None,
        }
    }

    #[test]
    fn mlm_only_step_by_hand() {
        // T = 8 tokens: QKV 3*2*8*8*8 = 3072, scores + PV 2*2*2*4*4*8 = 1024, out 1024,
        // FFN 2*2*8*8*32 = 8192: 13312 a layer. Masked 0.5 * 2 * 2 = 2 tokens:
        // 2*2*8*8 + 2*2*8*100 = 3456.
        let s = shape();
        assert_eq!(layer_forward_flops(&s), 13312.0);
        assert_eq!(pretrain_step_flops(&s), 3.0 * (2.0 * 13312.0 + 3456.0));
    }

    #[test]
    fn decoder_head_adds_its_layers_and_its_mlm() {
        let mlm = pretrain_step_flops(&shape());
        let with_head = StepShape {
            head_layers: 1,
            decoder_mask_ratio: Some(1.0), // 4 maskable tokens
            ..shape()
        };
        let head = 3.0 * (13312.0 + 2.0 * 4.0 * 8.0 * 8.0 + 2.0 * 4.0 * 8.0 * 100.0);
        assert_eq!(pretrain_step_flops(&with_head), mlm + head);
        // Head layers without the head's MLM loss still cost their layers.
        let no_head_mlm = StepShape {
            decoder_mask_ratio: None,
            ..with_head
        };
        assert_eq!(pretrain_step_flops(&no_head_mlm), mlm + 3.0 * 13312.0);
    }
}
