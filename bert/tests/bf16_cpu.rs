//! BERT encoding under bf16 autocast on the CPU against f32: a small random BERT (3 layers,
//! hidden 128) encodes a padded batch with its matrix products in the CPU's bf16 GEMM (LayerNorm,
//! softmax and the rest in f32), once as inference (`no_grad`: the packed weights with the bias
//! and GELU fused into the GEMM) and once with gradients on (the `matmul_bias_bf16` nodes).
//!
//! Each sequence's embedding (the [CLS] vector, as `DenseModel` pools it) and every real token's
//! last hidden state must have cosine > 0.999 with f32's. bf16 keeps 8 bits of mantissa, so a
//! product is off by ~2^-9 relative; a wrong kernel (a dropped k block, swapped pair halves, a
//! misplaced tile) puts a cosine near 0.9 or below. The bf16 results must also differ from f32's,
//! or the products did not run in bf16 at all.

use autograd::{autocast, no_grad};
use bert::{BertConfig, BertModel};
use nn::Ctx;
use tensor::{DType, Rng, Tensor};

fn config() -> BertConfig {
    BertConfig {
        vocab_size: 1000,
        hidden_size: 128,
        num_hidden_layers: 3,
        num_attention_heads: 4,
        intermediate_size: 512,
        max_position_embeddings: 64,
        ..BertConfig::default()
    }
}

const BATCH: usize = 3;
const SEQ: usize = 40;
/// Real tokens per sequence (the rest is padding).
const LENS: [usize; BATCH] = [40, 23, 7];

/// Token ids and the attention mask of the padded batch.
fn batch() -> (Tensor, Tensor) {
    let mut rng = Rng::new(17);
    let mut ids = vec![0i64; BATCH * SEQ];
    let mut mask = vec![0i64; BATCH * SEQ];
    for (b, &len) in LENS.iter().enumerate() {
        for s in 0..len {
            ids[b * SEQ + s] = 5 + rng.below(995) as i64;
            mask[b * SEQ + s] = 1;
        }
    }
    (
        Tensor::from_vec(ids, &[BATCH, SEQ]).unwrap(),
        Tensor::from_vec(mask, &[BATCH, SEQ]).unwrap(),
    )
}

/// The last hidden state [BATCH, SEQ, hidden] under `cast`, gradients on or off.
fn encode(model: &BertModel, cast: Option<DType>, grad: bool) -> Vec<f32> {
    let (ids, mask) = batch();
    let run = || {
        autocast(cast, || {
            model
                .forward(&ids, Some(&mask), None, &mut Ctx::eval())
                .unwrap()
                .last_hidden_state
                .value()
                .to_vec::<f32>()
                .unwrap()
        })
    };
    if grad {
        run()
    } else {
        no_grad(run)
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn bf16_encode_has_cosine_above_0_999_with_f32() {
    let c = config();
    let model = BertModel::new(&c, false, &mut Rng::new(3)).unwrap();
    let h = c.hidden_size;
    let f32_out = encode(&model, None, false);
    for grad in [false, true] {
        let bf16_out = encode(&model, Some(DType::BF16), grad);
        assert_ne!(
            bf16_out, f32_out,
            "grad={grad}: bf16 autocast changed nothing"
        );
        let mut worst_cls = 1f64;
        let mut worst_token = 1f64;
        for (b, &len) in LENS.iter().enumerate() {
            for s in 0..len {
                let at = (b * SEQ + s) * h;
                let cos = cosine(&bf16_out[at..at + h], &f32_out[at..at + h]);
                assert!(
                    cos > 0.999,
                    "grad={grad}: sequence {b} token {s}: cosine {cos:.6} with f32"
                );
                worst_token = worst_token.min(cos);
                if s == 0 {
                    worst_cls = worst_cls.min(cos);
                }
            }
        }
        eprintln!(
            "bf16 encode (grad={grad}): worst [CLS] cosine {worst_cls:.6}, worst token \
             {worst_token:.6}"
        );
    }
}

/// Inference's fused paths (packed weights with the bias, GELU and residual in the GEMM's
/// epilogue, the intermediate activations handed on already rounded to bf16, the fused
/// attention) compute the same values in the same order as the graph's separate ops: the
/// two encodings agree bit for bit.
#[test]
fn bf16_inference_fusions_equal_the_graph_ops_bit_for_bit() {
    let model = BertModel::new(&config(), false, &mut Rng::new(5)).unwrap();
    let inference = encode(&model, Some(DType::BF16), false);
    let graph = encode(&model, Some(DType::BF16), true);
    let differ = inference
        .iter()
        .zip(&graph)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert_eq!(differ, 0, "{differ} of {} values differ", graph.len());
}
