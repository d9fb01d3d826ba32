//! Parity with HF transformers on a tiny random BertForMaskedLM (fixture written by
//! scripts/gen_bert_fixtures.py): every hidden state, the logits at the labelled positions and
//! the loss (1e-5 relative), the gradient of every parameter (1e-4), and three
//! torch.optim.AdamW steps of the full training loop (1e-5). "Relative" is per tensor:
//! max |ours - HF| / max |HF|.

mod common;

use bert::BertForMaskedLM;
use common::{fixtures, rel_err};
use nn::{AdamW, AdamWConfig, AdamWVariant, Ctx, Module, ParamUpdate};
use tensor::safetensors::SafeTensors;
use tensor::Tensor;

struct Batch {
    ids: Tensor,
    mask: Tensor,
    types: Tensor,
    labels: Tensor,
}

fn load() -> (BertForMaskedLM, SafeTensors, Batch) {
    let (model, report) = BertForMaskedLM::from_pretrained(fixtures().join("tiny")).unwrap();
    assert!(report.is_clean(), "{report}");
    let fx = SafeTensors::open(fixtures().join("tiny_mlm.safetensors")).unwrap();
    let batch = Batch {
        ids: fx.get("input_ids").unwrap(),
        mask: fx.get("attention_mask").unwrap(),
        types: fx.get("token_type_ids").unwrap(),
        labels: fx.get("labels").unwrap(),
    };
    (model, fx, batch)
}

/// Asserts the relative error is within `tol` and returns it.
fn check(what: &str, got: &Tensor, want: &Tensor, tol: f64) -> f64 {
    let e = rel_err(got, want);
    assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:.0e}");
    e
}

#[test]
fn forward_and_gradients_match_hf() {
    let (model, fx, b) = load();
    let n_layers = model.config().num_hidden_layers;
    let mut ctx = Ctx::train(0);
    let out = model
        .bert
        .forward_all(&b.ids, Some(&b.mask), Some(&b.types), &mut ctx)
        .unwrap();
    assert_eq!(out.hidden_states.len(), n_layers + 1);
    let mut worst_hidden = 0f64;
    for (i, h) in out.hidden_states.iter().enumerate() {
        let want = fx.get(&format!("hidden.{i}")).unwrap();
        worst_hidden = worst_hidden.max(check(&format!("hidden.{i}"), h.value(), &want, 1e-5));
    }
    let mlm = model
        .cls
        .predictions
        .masked_lm(&out.last_hidden_state, &b.labels)
        .unwrap();
    let labels = b.labels.to_vec::<i64>().unwrap();
    let want_pos: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] != -100).collect();
    assert_eq!(mlm.positions, want_pos);
    let e_logits = check(
        "logits",
        mlm.logits.value(),
        &fx.get("logits").unwrap(),
        1e-5,
    );
    let e_loss = check("loss", mlm.loss.value(), &fx.get("loss").unwrap(), 1e-5);

    let grads = mlm.loss.backward().unwrap();
    let named = model.named_params();
    assert_eq!(named.len(), 42);
    let mut worst_grad = (0f64, String::new());
    for (name, p) in &named {
        let g = grads
            .get(&p.var())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        if name.ends_with("attention.self.key.bias") {
            // Zero in exact arithmetic (softmax is invariant to the per-query shift q.b_k that
            // this bias adds to every score), so both sides hold only rounding noise (~1e-12).
            let m = g
                .to_vec_f64()
                .unwrap()
                .iter()
                .fold(0.0f64, |a, x| a.max(x.abs()));
            assert!(m < 1e-9, "{name}: gradient {m:e} should be ~0");
            continue;
        }
        let e = check(
            &format!("grad.{name}"),
            g,
            &fx.get(&format!("grad.{name}")).unwrap(),
            1e-4,
        );
        if e > worst_grad.0 {
            worst_grad = (e, name.clone());
        }
    }
    eprintln!(
        "worst relative errors: hidden {worst_hidden:.2e}, logits {e_logits:.2e}, loss {e_loss:.2e}, \
         gradient {:.2e} ({})",
        worst_grad.0, worst_grad.1
    );
    // The whole-model forward gives the same loss as the pieces above.
    let whole = model
        .forward(&b.ids, Some(&b.mask), Some(&b.types), &b.labels, &mut ctx)
        .unwrap();
    check(
        "loss (forward)",
        whole.loss.value(),
        &fx.get("loss").unwrap(),
        1e-5,
    );
}

#[test]
fn three_adamw_steps_match_torch() {
    let (model, fx, b) = load();
    let named = model.named_params();
    assert!(
        named.iter().all(|(_, p)| p.tensor().is_mapped()),
        "loaded weights are memory-mapped"
    );
    let mut opt = AdamW::new(AdamWConfig {
        lr: 1e-3,
        weight_decay: 0.01,
        variant: AdamWVariant::Torch,
        ..AdamWConfig::default()
    })
    .unwrap();
    let losses = fx.get("losses").unwrap().to_vec::<f32>().unwrap();
    let mut ctx = Ctx::train(0);
    let mut worst = 0f64;
    for step in 1..=3 {
        let out = model
            .forward(&b.ids, Some(&b.mask), Some(&b.types), &b.labels, &mut ctx)
            .unwrap();
        let loss = out.loss.value().to_vec::<f32>().unwrap()[0];
        let want = losses[step - 1];
        assert!(
            ((loss - want) / want).abs() < 1e-5,
            "loss before step {step}: {loss} vs {want}"
        );
        let mut grads = out.loss.backward().unwrap();
        drop(out);
        // Our gradients must match the ones torch stepped with (1e-4, as for the first
        // backward). The optimizer then steps with torch's gradients, so that the parameters
        // are compared on the optimizer alone: at Adam's first steps an element with a
        // near-zero gradient turns a rounding-level gradient difference into a visible update
        // difference (update = lr * g / (|g| + eps)).
        let torch_grads: Vec<Tensor> = named
            .iter()
            .map(|(n, p)| {
                let key = if step == 1 {
                    format!("grad.{n}")
                } else {
                    format!("stepgrad.{step}.{n}")
                };
                let want = fx.get(&key).unwrap();
                let ours = grads
                    .remove(&p.var())
                    .unwrap_or_else(|| panic!("no grad for {n}"));
                if !n.ends_with("attention.self.key.bias") {
                    check(&format!("step {step} gradient {n}"), &ours, &want, 1e-4);
                }
                want
            })
            .collect();
        for ((name, p), g) in named.iter().zip(&torch_grads) {
            p.update(|value| {
                opt.step(
                    1e-3,
                    &mut [ParamUpdate {
                        name,
                        value,
                        grad: g,
                    }],
                )
            })
            .unwrap();
        }
        for (name, p) in &named {
            let want = fx.get(&format!("step.{step}.{name}")).unwrap();
            worst = worst.max(check(
                &format!("step {step} {name}"),
                &p.tensor(),
                &want,
                1e-5,
            ));
        }
    }
    eprintln!("worst relative error of a parameter after an AdamW step: {worst:.2e}");
    assert!(
        named.iter().all(|(_, p)| !p.tensor().is_mapped()),
        "updated weights are owned"
    );
    let last = model
        .forward(&b.ids, Some(&b.mask), Some(&b.types), &b.labels, &mut ctx)
        .unwrap();
    let loss = last.loss.value().to_vec::<f32>().unwrap()[0];
    assert!(
        ((loss - losses[3]) / losses[3]).abs() < 1e-5,
        "final loss {loss} vs {}",
        losses[3]
    );
}
