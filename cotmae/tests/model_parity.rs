//! Parity of `BertForCotMAE` with the original's wiring in PyTorch (a transformers
//! `BertForMaskedLM` plus two `BertLayer`s; fixture tests/fixtures/cotmae_parity.safetensors,
//! written by scripts/gen_cotmae_fixtures.py): on a tiny model and a padded batch of 3 documents
//! (6 rows), the encoder loss, the decoder loss and the total loss with `head_mlm_coef` 0.7
//! (1e-5 relative), and the gradient of every parameter (1e-4, max |ours - torch| / max |torch|
//! per tensor). Without the decoder head, or with its loss disabled, the loss is the encoder's.

use std::path::PathBuf;

use bert::{BertConfig, BertForMaskedLM, Init};
use cotmae::model::loss_values;
use cotmae::{BertForCotMAE, CotMaeBatch, CotMaeModelArgs};
use nn::{Ctx, Module};
use tensor::safetensors::SafeTensors;
use tensor::testing::max_rel_err;
use tensor::{Rng, Tensor};

const TOL_LOSS: f64 = 1e-5;
const TOL_GRAD: f64 = 1e-4;
const BATCH_KEYS: [&str; 6] = [
    "input_ids",
    "attention_mask",
    "labels",
    "decoder_input_ids",
    "decoder_attention_mask",
    "decoder_labels",
];

fn fixture_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/cotmae_parity.safetensors")
}

fn meta(fx: &SafeTensors, key: &str) -> String {
    fx.metadata()
        .get(key)
        .unwrap_or_else(|| panic!("fixture metadata lacks {key:?}"))
        .clone()
}

/// The tiny config the script used (its `config` metadata, HF `config.json` keys).
fn config(fx: &SafeTensors) -> BertConfig {
    BertConfig::from_json_str(&meta(fx, "config"), &fixture_path()).unwrap()
}

fn batch(fx: &SafeTensors) -> CotMaeBatch {
    let get = |k: &str| fx.get(k).unwrap();
    CotMaeBatch {
        input_ids: get("input_ids"),
        attention_mask: get("attention_mask"),
        labels: get("labels"),
        decoder_input_ids: get("decoder_input_ids"),
        decoder_attention_mask: get("decoder_attention_mask"),
        decoder_labels: get("decoder_labels"),
    }
}

/// The model with `args` (encoder zero-initialised, head drawn), then every weight loaded from
/// the fixture by name. Returns the fixture keys that are not weights of this model.
fn load(fx: &SafeTensors, args: CotMaeModelArgs) -> (BertForCotMAE, Vec<String>) {
    let lm = BertForMaskedLM::with_init(&config(fx), &mut Init::Zeros).unwrap();
    let model = BertForCotMAE::new(lm, args, &mut Rng::new(0)).unwrap();
    let report = bert::load_weights(&model, &[fixture_path()]).unwrap();
    assert!(report.missing.is_empty(), "missing: {:?}", report.missing);
    (model, report.unexpected)
}

fn scalar(fx: &SafeTensors, key: &str) -> f64 {
    fx.get(key).unwrap().to_vec_f64().unwrap()[0]
}

fn max_abs(t: &Tensor) -> f64 {
    t.to_vec_f64()
        .unwrap()
        .iter()
        .fold(0f64, |a, x| a.max(x.abs()))
}

fn assert_close(what: &str, got: f64, want: f64) {
    let e = ((got - want) / want).abs();
    assert!(
        e <= TOL_LOSS,
        "{what}: {got} vs torch {want} (relative error {e:.2e})"
    );
}

fn args(head_mlm_coef: f64) -> CotMaeModelArgs {
    CotMaeModelArgs {
        use_decoder_head: true,
        enable_head_mlm: true,
        n_head_layers: 2,
        head_mlm_coef,
    }
}

#[test]
fn losses_and_every_gradient_match_torch() {
    let fx = SafeTensors::open(fixture_path()).unwrap();
    let coef: f64 = meta(&fx, "head_mlm_coef").parse().unwrap();
    assert_ne!(coef, 1.0, "the fixture must check the head loss weighting");
    let (model, unexpected) = load(&fx, args(coef));
    // Every tensor that is not a weight is a batch tensor, a loss or a gradient.
    for k in &unexpected {
        assert!(
            k.starts_with("grad.") || k.ends_with("loss") || BATCH_KEYS.contains(&k.as_str()),
            "fixture tensor {k} has no place in the model"
        );
    }
    let named = model.named_params();
    let want_names: Vec<String> = serde_json::from_str(&meta(&fx, "params")).unwrap();
    let names: Vec<&String> = named.iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        want_names.iter().collect::<Vec<_>>(),
        "parameter names and order"
    );

    let b = batch(&fx);
    let out = model.forward(&b, &mut Ctx::train(0)).unwrap();
    let (loss, enc, head) = loss_values(&out).unwrap();
    assert_close("encoder_mlm_loss", enc, scalar(&fx, "encoder_mlm_loss"));
    assert_close("head_mlm_loss", head.unwrap(), scalar(&fx, "head_mlm_loss"));
    assert_close("loss", loss, scalar(&fx, "loss"));

    let grads = out.loss.backward().unwrap();
    let mut worst = (0f64, String::new());
    for (name, p) in &named {
        let g = grads
            .get(&p.var())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let want: Tensor = fx.get(&format!("grad.{name}")).unwrap();
        if let Some(layer) = name.strip_suffix("key.bias") {
            // Zero in exact arithmetic (softmax is invariant to the per-query shift q.b_k this
            // bias adds to every score): both sides hold rounding noise only, far below the
            // scale of the same layer's key weight gradient.
            let scale = max_abs(&fx.get(&format!("grad.{layer}key.weight")).unwrap());
            for (side, t) in [("ours", g), ("torch", &want)] {
                let m = max_abs(t);
                assert!(
                    m < 1e-6 * scale,
                    "{name}: {side} gradient {m:e} should be ~0 (key weight gradient {scale:e})"
                );
            }
            continue;
        }
        let e = max_rel_err(g, &want);
        assert!(
            e <= TOL_GRAD,
            "grad.{name}: relative error {e:.3e} > {TOL_GRAD:.0e}"
        );
        if e > worst.0 {
            worst = (e, name.clone());
        }
    }
    eprintln!(
        "losses within {TOL_LOSS:.0e}; worst gradient relative error {:.2e} ({})",
        worst.0, worst.1
    );
}

#[test]
fn without_the_decoder_loss_the_loss_is_the_encoders() {
    let fx = SafeTensors::open(fixture_path()).unwrap();
    let want = scalar(&fx, "encoder_mlm_loss");
    let b = batch(&fx);
    let no_head = CotMaeModelArgs {
        use_decoder_head: false,
        ..args(0.7)
    };
    let no_head_loss = CotMaeModelArgs {
        enable_head_mlm: false,
        ..args(0.7)
    };
    for a in [no_head, no_head_loss] {
        let (model, unexpected) = load(&fx, a.clone());
        let head_weights = unexpected
            .iter()
            .filter(|k| k.starts_with("c_head."))
            .count();
        assert_eq!(
            head_weights > 0,
            !a.use_decoder_head,
            "c_head weights load exactly when the head exists ({a:?})"
        );
        let out = model.forward(&b, &mut Ctx::train(0)).unwrap();
        let (loss, enc, head) = loss_values(&out).unwrap();
        assert!(head.is_none(), "{a:?}: no head loss");
        assert_close(&format!("loss ({a:?})"), loss, want);
        assert_eq!(loss, enc);
        let grads = out.loss.backward().unwrap();
        for (name, p) in model.named_params() {
            let has = grads.get(&p.var()).is_some();
            assert_eq!(
                has,
                !name.starts_with("c_head."),
                "{a:?}: {name} gradient present = {has}"
            );
        }
    }
}
