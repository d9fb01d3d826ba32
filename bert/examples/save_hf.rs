//! Writes an HF model directory for `scripts/gen_bert_fixtures.py --check DIR`: the tiny fixture
//! model with its weights perturbed (so they are our values, not the loaded file's), saved by
//! `BertForMaskedLM::save_pretrained`, plus `rust_outputs.safetensors` with a batch, our logits
//! [B, L, V] and last hidden state, and the ids our tokenizer gives for a text.
//!
//! cargo run -p bert --example save_hf -- /tmp/bert_hf && python3 scripts/gen_bert_fixtures.py --check /tmp/bert_hf

use autograd::no_grad;
use bert::{BertForMaskedLM, Tokenizer};
use nn::{Ctx, Module};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tensor::safetensors::{save, SafeTensors};
use tensor::{DType, Device, Rng, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::args().nth(1).ok_or("usage: save_hf OUT_DIR")?);
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/bert");
    let (model, report) = BertForMaskedLM::from_pretrained(fixtures.join("tiny"))?;
    if !report.is_clean() {
        eprintln!("warning: {report}");
    }
    let mut rng = Rng::new(99);
    for (name, p) in model.named_params() {
        let noise = Tensor::randn(&p.shape(), 0.0, 0.01, DType::F32, Device::Cpu, &mut rng)?;
        p.set(&name, p.tensor().add(&noise)?)?;
    }
    let tok = Tokenizer::from_dir(fixtures.join("tiny"))?;
    model.save_pretrained(&out, Some(&tok))?;

    let fx = SafeTensors::open(fixtures.join("tiny_mlm.safetensors"))?;
    let (ids, mask, types) = (
        fx.get("input_ids")?,
        fx.get("attention_mask")?,
        fx.get("token_type_ids")?,
    );
    let (logits, hidden) = no_grad(|| -> tensor::Result<(Tensor, Tensor)> {
        let mut ctx = Ctx::eval();
        let h = model
            .bert
            .forward(&ids, Some(&mask), Some(&types), &mut ctx)?
            .last_hidden_state;
        let logits = model.cls.predictions.forward(&h)?;
        Ok((logits.value().clone(), h.value().clone()))
    })?;
    let text = "W1 w17, w3 [MASK] unknownword w120";
    let text_ids: Vec<i64> = tok
        .encode(text, true, None)
        .iter()
        .map(|&i| i as i64)
        .collect();
    let n = text_ids.len();
    let text_ids = Tensor::from_vec(text_ids, &[n])?;
    let meta = BTreeMap::from([("text".to_string(), text.to_string())]);
    save(
        out.join("rust_outputs.safetensors"),
        &[
            ("input_ids", &ids),
            ("attention_mask", &mask),
            ("token_type_ids", &types),
            ("logits", &logits),
            ("hidden", &hidden),
            ("text_ids", &text_ids),
        ],
        Some(&meta),
    )?;
    println!("wrote {}", out.display());
    Ok(())
}
