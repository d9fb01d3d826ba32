//! What one bf16 CoT-MAE training step does on a GPU, counted (`cuda::Counters`, read through
//! `Device::counters`): a tiny `BertForCotMAE` (2 encoder layers, the 2-layer decoder head) takes
//! three steps under bf16 autocast (forward, backward, global-norm clipping, AdamW), as the
//! trainer's non-logging steps do: no loss is read. The counts of the second and third steps are
//! printed and asserted:
//!
//! - device-to-host synchronisations: none (ids and targets are checked on the device, the loss
//!   gradient stays there, the clipping is decided there: `nn::clip_grad_norm_deferred`);
//! - cuBLASLt heuristic queries: none after the first step (plans are cached);
//! - weight casts: none after the first step (autocast reads the half copies the AdamW kernel
//!   writes, `Param::half`, the query/key/value ones in one buffer, `nn::fused_half`); in the
//!   first, at most one per parameter;
//! - casts of activations and gradients (all cast kernels, weights then being none): at most
//!   [`CASTS`] (main before bf16 activations and fused QKV: 222): products stay bf16, so a layer
//!   casts its input once for the fused QKV GEMM and once for the intermediate GEMM, their
//!   gradients once back, and each half weight's gradient once to f32;
//! - kernel launches at most [`LAUNCHES`] (before: 435) and GEMMs at most [`GEMMS`] (before:
//!   84; one QKV GEMM instead of three, forward and backward);
//! - the two steps launch the same kernels (nothing in a step depends on the data seen).
//!
//! Runs on the CUDA simulator in CI (`COTMAE_CUDA_SIM=1`); skipped, saying why, without a GPU.
#![cfg(feature = "cuda")]

use bert::BertConfig;
use cotmae::{BertForCotMAE, CotMaeBatch, CotMaeModelArgs};
use nn::{clip_grad_norm_deferred, step_params, AdamW, AdamWConfig, Ctx, Module, Param, Precision};
use tensor::cuda::Counters;
use tensor::{DType, Device, Rng, Tensor};

/// Casts in a step after the first, all of activations and gradients (see the module doc).
const CASTS: u64 = 102;
/// Kernel launches and GEMMs in a step after the first.
const LAUNCHES: u64 = 299;
const GEMMS: u64 = 60;

fn config() -> BertConfig {
    BertConfig {
        vocab_size: 64,
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 64,
        max_position_embeddings: 32,
        ..BertConfig::default()
    }
}

/// A batch of 4 rows of 16 tokens: ids in 5..64, the last 3 positions of odd rows padding, every
/// fourth position labelled.
fn batch(rng: &mut Rng) -> CotMaeBatch {
    let (rows, len) = (4, 16);
    let ids = |rng: &mut Rng| -> Tensor {
        let v: Vec<i64> = (0..rows * len).map(|_| 5 + rng.below(59) as i64).collect();
        Tensor::from_vec(v, &[rows, len]).unwrap()
    };
    let mask: Vec<i64> = (0..rows * len)
        .map(|i| i64::from(!((i / len) % 2 == 1 && i % len >= len - 3)))
        .collect();
    let labels = |rng: &mut Rng| -> Tensor {
        let v: Vec<i64> = (0..rows * len)
            .map(|i| match i % 4 {
                1 => 5 + rng.below(59) as i64,
                _ => -100,
            })
            .collect();
        Tensor::from_vec(v, &[rows, len]).unwrap()
    };
    let mask = Tensor::from_vec(mask, &[rows, len]).unwrap();
    CotMaeBatch {
        input_ids: ids(rng),
        attention_mask: mask.clone(),
        labels: labels(rng),
        decoder_input_ids: ids(rng),
        decoder_attention_mask: mask,
        decoder_labels: labels(rng),
    }
}

/// Three training steps of the tiny model on `device` under `precision`: each step's counters
/// (None on the CPU) and loss (read after the three steps, so the counts exclude it).
fn three_steps(device: Device, precision: Precision) -> (Vec<Option<Counters>>, Vec<f64>) {
    let rng = &mut Rng::new(3);
    let model = BertForCotMAE::from_config(&config(), CotMaeModelArgs::default(), rng).unwrap();
    nn::to_device(&model, device).unwrap();
    let params: Vec<(String, Param)> = model.named_params();
    let batch = batch(rng).to_device(device).unwrap();
    let mut opt = AdamW::new(AdamWConfig {
        lr: 1e-3,
        weight_decay: 0.01,
        ..AdamWConfig::default()
    })
    .unwrap();
    let mut ctx = Ctx::train(5);
    let mut step = || {
        device.reset_counters().unwrap();
        let out = precision.autocast(|| model.forward(&batch, &mut ctx).unwrap());
        let mut grads = out.loss.backward().unwrap();
        let loss = out.loss.value().clone();
        drop(out);
        let mut taken: Vec<_> = params
            .iter()
            .filter_map(|(_, p)| grads.remove(&p.var()).map(|g| (p.var(), g)))
            .collect();
        let mut refs: Vec<&mut Tensor> = taken.iter_mut().map(|(_, g)| g).collect();
        clip_grad_norm_deferred(&mut refs, 1.0).unwrap();
        for (v, g) in taken {
            grads.insert(&v, g);
        }
        step_params(&mut opt, 1e-3, &params, &grads).unwrap();
        (device.counters().unwrap(), loss)
    };
    let steps = [step(), step(), step()];
    let losses = steps
        .iter()
        .map(|(_, l)| l.to_dtype(DType::F64).unwrap().to_vec::<f64>().unwrap()[0])
        .collect();
    (steps.iter().map(|(c, _)| *c).collect(), losses)
}

#[test]
fn a_bf16_step_has_no_syncs_no_heuristic_queries_and_no_weight_casts() {
    let Some(dev) = tensor::testing::cuda_or_skip(
        "a_bf16_step_has_no_syncs_no_heuristic_queries_and_no_weight_casts",
    ) else {
        return;
    };
    let (counts, losses) = three_steps(dev, Precision::Bf16);
    let [first, second, third] = [0, 1, 2].map(|i| counts[i].expect("a GPU counts"));
    for (i, c) in [first, second, third].iter().enumerate() {
        println!("step {}: {c}", i + 1);
    }
    let params = BertForCotMAE::from_config(&config(), CotMaeModelArgs::default(), &mut Rng::new(3))
        .unwrap()
        .named_params()
        .len() as u64;
    for c in [second, third] {
        assert_eq!(c.syncs, 0, "{c}");
        assert_eq!(c.heuristic_queries, 0, "{c}");
        assert_eq!(c.weight_casts, 0, "{c}");
        assert!(c.casts > 0 && c.casts <= CASTS, "{c}");
        assert!(c.launches > 0 && c.launches <= LAUNCHES, "{c}");
        assert!(c.gemms > 0 && c.gemms <= GEMMS, "{c}");
    }
    assert!(first.heuristic_queries > 0, "{first}");
    assert!(
        first.weight_casts > 0 && first.weight_casts <= params,
        "{first}"
    );
    assert_eq!(second.launches, third.launches);
    assert_eq!(second.gemms, third.gemms);
    // Whatever bad input a kernel saw would surface here, once for the three steps.
    dev.check_status().unwrap();
    // The steps compute what the CPU's f32 steps compute, within bf16's tolerance: the second
    // and third forwards read the half copies the AdamW kernel wrote.
    let (_, want) = three_steps(Device::Cpu, Precision::F32);
    for (i, (g, w)) in losses.iter().zip(&want).enumerate() {
        let rel = (g - w).abs() / w.abs();
        println!(
            "step {}: loss {g:.6} (cpu f32 {w:.6}), relative difference {rel:.2e}",
            i + 1
        );
        assert!(rel <= 2e-2, "step {}: loss {g} vs {w}", i + 1);
    }
}
