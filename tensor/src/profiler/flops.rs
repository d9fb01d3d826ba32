//! FLOP and byte accounting from shapes alone, so a profile (and the ablation harness, issue 19)
//! can state how much work an op did without running it. Conventions (as PyTorch's `with_flops`):
//! a multiply-add is 2 FLOPs; elementwise and row ops are counted in bytes read + written, not
//! FLOPs, because memory bandwidth, not arithmetic, bounds them.

/// `[batch.., m, k] @ [batch.., k, n]`: 2·batch·m·k·n.
pub fn matmul(batch: usize, m: usize, k: usize, n: usize) -> u64 {
    2 * (batch as u64) * (m as u64) * (k as u64) * (n as u64)
}

/// Attention forward on `[B, H, Sq, D]` queries and `[B, H, Sk, D]` keys/values: the two
/// products QKᵀ and PV, 4·B·H·Sq·Sk·D (softmax's exp and sum are not counted, as in FlashAttention's
/// papers).
pub fn attention_forward(b: usize, h: usize, sq: usize, sk: usize, d: usize) -> u64 {
    2 * matmul(b * h, sq, d, sk)
}

/// Attention backward: dV = PᵀdO, dP = dO·Vᵀ, dQ = dS·K, dK = dSᵀQ, and QKᵀ recomputed:
/// 2.5× the forward.
pub fn attention_backward(b: usize, h: usize, sq: usize, sk: usize, d: usize) -> u64 {
    5 * matmul(b * h, sq, d, sk)
}

/// Forward FLOPs of one transformer layer over `rows` sequences of `seq` tokens (`t = rows·seq`,
/// hidden `h`, intermediate `i`): the Q, K, V and output projections 4·2·t·h², attention's two
/// products over all heads 2·2·rows·seq²·h, the feed-forward 2·2·t·h·i. Embeddings, LayerNorm,
/// softmax and GELU are bandwidth ops and not counted.
pub fn transformer_layer_forward(
    rows: usize,
    seq: usize,
    hidden: usize,
    intermediate: usize,
) -> u64 {
    let t = rows * seq;
    4 * matmul(1, t, hidden, hidden)
        + attention_forward(rows, 1, seq, seq, hidden)
        + 2 * matmul(1, t, hidden, intermediate)
}

/// Forward FLOPs of the MLM head over `tokens` positions: the transform `2·t·h²` and the tied
/// decoder `2·t·h·vocab`.
pub fn mlm_head_forward(tokens: usize, hidden: usize, vocab: usize) -> u64 {
    matmul(1, tokens, hidden, hidden) + matmul(1, tokens, hidden, vocab)
}

/// The matrix products of one BERT encoder forward at `batch x seq` (`layers` layers).
pub fn bert_encoder_forward(
    layers: usize,
    hidden: usize,
    intermediate: usize,
    batch: usize,
    seq: usize,
) -> u64 {
    layers as u64 * transformer_layer_forward(batch, seq, hidden, intermediate)
}

/// One training step's matrix products: the forward plus a backward of twice the forward (a
/// gradient for the input and one for the weight per product), the usual 3x rule.
pub fn training_step(forward_flops: u64) -> u64 {
    3 * forward_flops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bert_base_forward_matches_the_closed_form() {
        // BERT-base at 8 x 128: 24·t·h² + 4·b·s²·h per layer with i = 4h, written out separately.
        let (l, h, b, s) = (12u64, 768u64, 8u64, 128u64);
        let t = b * s;
        let closed = l * (24 * t * h * h + 4 * b * s * s * h);
        let counted = bert_encoder_forward(12, 768, 3072, 8, 128);
        let err = (counted as f64 - closed as f64).abs() / closed as f64;
        assert!(err < 0.01, "counted {counted}, closed form {closed}");
        assert_eq!(training_step(counted), 3 * counted);
    }

    #[test]
    fn matmul_counts_a_multiply_add_as_two() {
        assert_eq!(matmul(3, 2, 5, 7), 2 * 3 * 2 * 5 * 7);
        assert_eq!(attention_backward(1, 1, 4, 4, 8), 5 * 2 * 4 * 8 * 4);
    }
}
