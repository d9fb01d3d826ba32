//! The BERT forward and backward on a GPU against the CPU: the tiny HF fixture model
//! (tests/fixtures/bert/tiny) and its masked batch, in train mode (dropout on: both devices draw
//! the same Philox masks from the same seed, in the attention kernels too), one copy of the model
//! on the CPU and one moved to `cuda:0`.
//!
//! - f32 (TF32 off): every hidden state, the logits and the loss within 1e-5 relative, every
//!   parameter's gradient within 1e-4 (the tolerances of the HF parity test, `hf_parity.rs`).
//! - bf16 autocast (the products in bf16, everything else in f32): the loss within 2e-2 and every
//!   gradient within 5e-2, the looser bound of a whole network's rounding in bf16.
//!
//! "Relative" is per tensor: max |gpu - cpu| / max |cpu|. Skipped, with the reason printed, when
//! the build has no CUDA backend or no GPU is present.

mod common;

use autograd::{autocast, Gradients, Var};
use bert::BertForMaskedLM;
use common::{check, fixtures, zero_gradient};
use nn::{Ctx, Module};
use tensor::safetensors::SafeTensors;
use tensor::testing::cuda_or_skip;
use tensor::{DType, Device, Tensor};

/// The fixture model and its batch (ids, mask, token types, labels) on `device`.
fn load(device: Device) -> (BertForMaskedLM, [Tensor; 4]) {
    let (model, report) = BertForMaskedLM::from_pretrained(fixtures().join("tiny")).unwrap();
    assert!(report.is_clean(), "{report}");
    nn::to_device(&model, device).unwrap();
    let fx = SafeTensors::open(fixtures().join("tiny_mlm.safetensors")).unwrap();
    let batch = ["input_ids", "attention_mask", "token_type_ids", "labels"]
        .map(|k| fx.get(k).unwrap().to_device(device).unwrap());
    (model, batch)
}

/// One train-mode forward and backward: the hidden states, the logits, the loss and the
/// gradients by parameter name (all on the host).
struct Pass {
    hidden: Vec<Tensor>,
    logits: Tensor,
    loss: Tensor,
    grads: Vec<(String, Tensor)>,
}

fn pass(device: Device, precision: Option<DType>) -> Pass {
    let (model, [ids, mask, types, labels]) = load(device);
    let host = |v: &Var| v.value().to_device(Device::Cpu).unwrap();
    autocast(precision, || {
        let mut ctx = Ctx::train(0);
        let out = model
            .bert
            .forward_all(&ids, Some(&mask), Some(&types), &mut ctx)
            .unwrap();
        let mlm = model
            .cls
            .predictions
            .masked_lm(&out.last_hidden_state, &labels)
            .unwrap();
        let grads: Gradients = mlm.loss.backward().unwrap();
        Pass {
            hidden: out.hidden_states.iter().map(host).collect(),
            logits: host(&mlm.logits),
            loss: host(&mlm.loss),
            grads: model
                .named_params()
                .into_iter()
                .map(|(name, p)| {
                    let g = grads
                        .get(&p.var())
                        .unwrap_or_else(|| panic!("no gradient for {name} on {device}"));
                    (name, g.to_device(Device::Cpu).unwrap())
                })
                .collect(),
        }
    })
}

/// The worst gradient error over all parameters (`common::check_grads`).
fn check_grads(got: &Pass, want: &Pass, tol: f64) -> (f64, String) {
    common::check_grads(&got.grads, &want.grads, tol)
}

#[test]
fn f32_forward_and_backward_match_the_cpu() {
    let Some(gpu) = cuda_or_skip("f32_forward_and_backward_match_the_cpu") else {
        return;
    };
    let cpu = pass(Device::Cpu, None);
    let got = pass(gpu, None);
    assert_eq!(got.hidden.len(), cpu.hidden.len());
    for (i, (g, w)) in got.hidden.iter().zip(&cpu.hidden).enumerate() {
        check(&format!("hidden state {i}"), g, w, 1e-5);
    }
    check("logits", &got.logits, &cpu.logits, 1e-5);
    let e_loss = check("loss", &got.loss, &cpu.loss, 1e-5);
    let (e, name) = check_grads(&got, &cpu, 1e-4);
    eprintln!("f32 on {gpu}: loss {e_loss:.2e}, worst gradient {e:.2e} ({name})");
}

#[test]
fn bf16_autocast_stays_close_to_the_cpu() {
    let Some(gpu) = cuda_or_skip("bf16_autocast_stays_close_to_the_cpu") else {
        return;
    };
    let cpu = pass(Device::Cpu, None);
    let got = pass(gpu, Some(DType::BF16));
    assert_eq!(
        got.loss.dtype(),
        DType::F32,
        "the loss stays f32 under autocast"
    );
    let e_loss = check("loss", &got.loss, &cpu.loss, 2e-2);
    let (e, name) = check_grads(&got, &cpu, 5e-2);
    eprintln!("bf16 on {gpu}: loss {e_loss:.2e}, worst gradient {e:.2e} ({name})");
}

#[test]
fn cpu_autocast_f16_changes_nothing_and_bf16_stays_close() {
    // f16 autocast is a no-op on the CPU: bit for bit the f32 pass.
    let plain = pass(Device::Cpu, None);
    let f16 = pass(Device::Cpu, Some(DType::F16));
    assert_eq!(
        plain.loss.to_vec::<f32>().unwrap(),
        f16.loss.to_vec::<f32>().unwrap()
    );
    for ((name, a), (_, b)) in plain.grads.iter().zip(&f16.grads) {
        assert_eq!(
            a.to_vec::<f32>().unwrap(),
            b.to_vec::<f32>().unwrap(),
            "gradient of {name}"
        );
    }
    // bf16 autocast runs the products in the CPU bf16 GEMM: a different result, within the half
    // tolerances the GPU is held to.
    let bf16 = pass(Device::Cpu, Some(DType::BF16));
    assert_eq!(bf16.loss.dtype(), DType::F32, "the loss stays f32");
    assert_ne!(
        plain.loss.to_vec::<f32>().unwrap(),
        bf16.loss.to_vec::<f32>().unwrap(),
        "bf16 autocast on the CPU must run the bf16 products"
    );
    let e_loss = check("loss", &bf16.loss, &plain.loss, 2e-2);
    let mut worst = 0f64;
    for ((name, g), (_, w)) in bf16.grads.iter().zip(&plain.grads) {
        if zero_gradient(name) {
            continue;
        }
        worst = worst.max(check(&format!("gradient of {name}"), g, w, 5e-2));
    }
    eprintln!("bf16 on the CPU: loss {e_loss:.2e}, worst gradient {worst:.2e}");
}
