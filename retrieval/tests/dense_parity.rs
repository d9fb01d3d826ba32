//! Tevatron's DenseModel loss and gradients against PyTorch + transformers on a tiny BERT and a
//! fixed batch (`tests/fixtures/dense_parity.safetensors`, written by
//! `scripts/gen_dense_fixtures.py`; the reference is computed in f64). Our f32 forward and
//! backward must give the loss within 1e-5 relative and every gradient within 1e-4 (max abs
//! difference over the tensor's max abs value; the attention key biases, whose exact gradient is
//! zero, within 1e-6 of zero while the other gradients are O(1)); the unused pooler must get no
//! gradient.

use std::path::Path;

use autograd::Var;
use bert::{BertConfig, BertModel, Init};
use nn::{Ctx, Module};
use retrieval::{contrastive_loss, DenseModel, PadTo, SpecialIds, TokenBatch};
use tensor::safetensors::SafeTensors;
use tensor::Tensor;

fn fixture() -> SafeTensors {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/dense_parity.safetensors"
    );
    SafeTensors::open(path).unwrap()
}

fn meta<T: std::str::FromStr>(f: &SafeTensors, key: &str) -> T {
    let v = &f.metadata()[key];
    v.parse()
        .unwrap_or_else(|_| panic!("metadata {key} = {v:?}"))
}

fn texts(f: &SafeTensors, key: &str) -> Vec<Vec<u32>> {
    serde_json::from_str(&f.metadata()[key]).unwrap()
}

/// max |a - b| / max |b|.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    let scale = b.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-30);
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f64, f64::max)
        / scale
}

fn special(f: &SafeTensors) -> SpecialIds {
    SpecialIds {
        cls: meta(f, "cls_id"),
        sep: meta(f, "sep_id"),
        pad: meta(f, "pad_id"),
    }
}

fn model(f: &SafeTensors) -> DenseModel {
    let config =
        BertConfig::from_json_str(&f.metadata()["config"], Path::new("fixture config")).unwrap();
    let encoder = BertModel::with_init(&config, true, &mut Init::Zeros).unwrap();
    for (name, p) in encoder.named_params() {
        p.set(&name, f.get(&format!("param.{name}")).unwrap())
            .unwrap();
    }
    DenseModel::new(encoder)
}

/// Our batches of the raw texts are the fixture's (Tevatron's encode_plus + pad).
fn batches(f: &SafeTensors) -> (TokenBatch, TokenBatch) {
    let build = |key: &str, len: &str| {
        let t = texts(f, key);
        let refs: Vec<&[u32]> = t.iter().map(Vec::as_slice).collect();
        TokenBatch::new(&refs, meta(f, len), PadTo::MaxLen, special(f)).unwrap()
    };
    (
        build("queries", "q_max_len"),
        build("passages", "p_max_len"),
    )
}

#[test]
fn batches_match_tevatron_collation() {
    let f = fixture();
    let (q, p) = batches(&f);
    for (ours, prefix) in [(&q, "q"), (&p, "p")] {
        for (t, name) in [
            (&ours.input_ids, "input_ids"),
            (&ours.attention_mask, "attention_mask"),
        ] {
            let want = f.get(&format!("{prefix}_{name}")).unwrap();
            assert_eq!(t.shape(), want.shape(), "{prefix}_{name}");
            assert_eq!(
                t.to_vec::<i64>().unwrap(),
                want.to_vec::<i64>().unwrap(),
                "{prefix}_{name}"
            );
        }
    }
}

#[test]
fn loss_and_gradients_match_torch() {
    let f = fixture();
    let m = model(&f);
    let (q, p) = batches(&f);
    let out = m.forward(&q, &p, &mut Ctx::train(0)).unwrap();
    for (name, v, tol) in [
        ("q_reps", &out.q_reps, 1e-5),
        ("p_reps", &out.p_reps, 1e-5),
        ("scores", &out.scores, 1e-5),
    ] {
        let err = rel_err(v.value(), &f.get(name).unwrap());
        assert!(err < tol, "{name}: relative error {err:e}");
    }
    let loss = out.loss.value().to_vec_f64().unwrap()[0];
    let want = f.get("loss").unwrap().to_vec_f64().unwrap()[0];
    assert!(
        ((loss - want) / want).abs() < 1e-5,
        "loss {loss} vs torch {want}"
    );

    let grads = out.loss.backward().unwrap();
    let (mut checked, mut worst) = (0, (0f64, String::new()));
    for (name, p) in m.encoder.named_params() {
        let key = format!("grad.{name}");
        match (grads.get(&p.var()), f.contains(&key)) {
            (Some(g), true) if name.ends_with("attention.self.key.bias") => {
                // Zero in exact arithmetic (softmax is invariant to the shift q.b_k this bias
                // adds to every score of a query): both sides are rounding noise.
                let m = g
                    .to_vec_f64()
                    .unwrap()
                    .iter()
                    .fold(0f64, |a, x| a.max(x.abs()));
                assert!(m < 1e-6, "{name}: gradient {m:e} should be ~0");
                checked += 1;
            }
            (Some(g), true) => {
                let err = rel_err(g, &f.get(&key).unwrap());
                assert!(err < 1e-4, "{name}: gradient relative error {err:e}");
                if err > worst.0 {
                    worst = (err, name.clone());
                }
                checked += 1;
            }
            (None, false) => assert!(name.starts_with("pooler."), "{name}"),
            (g, t) => panic!("{name}: ours has a gradient: {}, torch: {t}", g.is_some()),
        }
    }
    assert_eq!(checked, m.encoder.named_params().len() - 2);
    eprintln!(
        "loss {loss} (torch {want}, relative error {:e}); worst gradient {} ({:e})",
        ((loss - want) / want).abs(),
        worst.1,
        worst.0
    );
}

/// The fixture tells the right target apart from a plausible mistake: the positive of query i at
/// column i (instead of i * n) gives a loss far from torch's.
#[test]
fn fixture_rejects_the_wrong_target() {
    let f = fixture();
    let scores = f.get("scores").unwrap();
    let q = scores.shape()[0];
    let target = Tensor::from_vec((0..q as i64).collect::<Vec<_>>(), &[q]).unwrap();
    let wrong = Var::constant(scores.clone())
        .cross_entropy(&target, -100)
        .unwrap();
    let wrong = wrong.value().to_vec_f64().unwrap()[0];
    let want = f.get("loss").unwrap().to_vec_f64().unwrap()[0];
    assert!(((wrong - want) / want).abs() > 1e-2, "{wrong} vs {want}");
    // And the right one, from torch's own scores, is torch's loss.
    let reps = |k: &str| Var::constant(f.get(k).unwrap());
    let (_, loss) = contrastive_loss(&reps("q_reps"), &reps("p_reps")).unwrap();
    let loss = loss.value().to_vec_f64().unwrap()[0];
    assert!(((loss - want) / want).abs() < 1e-5, "{loss} vs {want}");
}
