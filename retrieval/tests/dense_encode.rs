//! `encode`: rows come back in input order whatever the length-sorted batching did, a text's
//! vector does not depend on its batch or its padding, sentence-transformers directories supply
//! pooling / normalisation / max length, and all-MiniLM-L6-v2 through `encode` reproduces
//! sentence-transformers' embeddings (skipped, with a message, when the model is not installed).

use std::path::Path;

use autograd::no_grad;
use indicatif::ProgressBar;
use nn::Ctx;
use retrieval::dense::{PadTo, Pooling, SpecialIds, TokenBatch};
use retrieval::encode::{encode_texts, sentence_transformers_config, EncodeOptions};
use retrieval::{encode, DenseModel, EmbeddingSet, EncodeConfig, EncodeItem, JsonlWriter};
use tensor::safetensors::SafeTensors;
use tensor::Rng;

mod common;
use common::{tiny_model_dir, tiny_tokenizer, Scratch};

#[path = "../../bert/tests/common/mod.rs"]
mod bert_common;

/// Texts of lengths 0..40 in a shuffled order (some longer than any max_len used).
fn items(n: usize) -> Vec<EncodeItem> {
    let mut rng = Rng::new(5);
    (0..n)
        .map(|i| EncodeItem {
            text_id: format!("doc-{i}"),
            text: (0..rng.below(40))
                .map(|_| 5 + rng.below(120) as u32)
                .collect(),
        })
        .collect()
}

fn write_items(path: &Path, items: &[EncodeItem]) {
    let mut w = JsonlWriter::create(path).unwrap();
    for it in items {
        w.write(it).unwrap();
    }
    w.finish().unwrap();
}

fn config(model: &Path, input: &Path, output: &Path) -> EncodeConfig {
    EncodeConfig {
        model: model.to_path_buf(),
        input: input.to_path_buf(),
        is_query: false,
        max_len: Some(16),
        pooling: None,
        normalize: None,
        output: output.to_path_buf(),
        batch_size: 4,
        verbose: false,
        device: tensor::Device::Cpu,
        precision: nn::Precision::F32,
        allow_random_init: false,
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn rows_in_input_order_and_independent_of_batching_and_padding() {
    let s = Scratch::new("encode-order");
    let model_dir = tiny_model_dir(&s.0.join("model"), 0.1);
    let all = items(23);
    let input = s.0.join("corpus");
    write_items(&input.join("split0.json"), &all[..10]);
    write_items(&input.join("split1.json"), &all[10..]);
    let out = s.0.join("emb");
    let report = encode(&config(&model_dir, &input, &out)).unwrap();
    assert_eq!((report.count, report.dim, report.max_len), (23, 32, 16));
    assert_eq!((report.pooling, report.normalize), (Pooling::Cls, false));
    assert!(!report.sentence_transformers);
    assert_eq!(
        report.truncated,
        all.iter().filter(|it| it.text.len() > 14).count()
    );
    let set = EmbeddingSet::read(&out).unwrap();
    let want_ids: Vec<String> = all.iter().map(|it| it.text_id.clone()).collect();
    assert_eq!(set.ids, want_ids);
    let rows = set.embeddings.to_vec::<f32>().unwrap();

    // Each text alone, padded to max_len (Tevatron's collation), in eval mode.
    let (model, _) = DenseModel::from_pretrained(&model_dir, false).unwrap();
    let special = SpecialIds::from_tokenizer(&tiny_tokenizer());
    let mut worst = 0f32;
    for (i, it) in all.iter().enumerate() {
        let b = TokenBatch::new(&[&it.text], 16, PadTo::MaxLen, special).unwrap();
        let v = no_grad(|| model.encode(&b, &mut Ctx::eval())).unwrap();
        let v = v.value().to_vec::<f32>().unwrap();
        let d = max_abs_diff(&rows[i * 32..(i + 1) * 32], &v);
        let scale = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        worst = worst.max(d / scale);
    }
    assert!(
        worst < 1e-5,
        "batched vs alone: relative difference {worst:e}"
    );

    // Another batch size gives the same rows; mean pooling + normalisation gives unit rows.
    let texts: Vec<&[u32]> = all.iter().map(|it| it.text.as_slice()).collect();
    let opts = EncodeOptions {
        max_len: 16,
        pooling: Pooling::Cls,
        normalize: false,
        batch_size: 7,
        special,
        precision: nn::Precision::F32,
    };
    let other = encode_texts(&model, &texts, &opts, &ProgressBar::hidden()).unwrap();
    let other = other.to_vec::<f32>().unwrap();
    assert!(max_abs_diff(&other, &rows) < 1e-5 * rows.iter().fold(0f32, |m, x| m.max(x.abs())));
    let opts = EncodeOptions {
        pooling: Pooling::Mean,
        normalize: true,
        ..opts
    };
    let unit = encode_texts(&model, &texts, &opts, &ProgressBar::hidden()).unwrap();
    let unit = unit.to_vec::<f32>().unwrap();
    for r in unit.chunks(32) {
        let n: f32 = r.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-5, "{n}");
    }
    assert!(
        max_abs_diff(&unit[..32], &rows[..32]) > 1e-2,
        "mean differs from cls"
    );
}

#[test]
fn bad_token_ids_name_the_file_and_line() {
    let s = Scratch::new("encode-vocab");
    let model_dir = tiny_model_dir(&s.0.join("model"), 0.0);
    let input = s.0.join("q.jsonl");
    std::fs::write(
        &input,
        "{\"text_id\": \"a\", \"text\": [5]}\n\n{\"text_id\": \"b\", \"text\": [5, 128]}\n",
    )
    .unwrap();
    let err = encode(&config(&model_dir, &input, &s.0.join("out")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("q.jsonl:3:") && err.contains("128"), "{err}");
    let err = encode(&EncodeConfig {
        max_len: Some(33),
        ..config(&model_dir, &input, &s.0.join("out"))
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("max_position_embeddings"), "{err}");
}

/// A sentence-transformers layout around the tiny model: the Transformer in `0_Transformer/`.
fn st_dir(root: &Path, pooling_key: &str, normalize: bool) -> std::path::PathBuf {
    let dir = root.join("st");
    tiny_model_dir(&dir.join("0_Transformer"), 0.0);
    let mut modules = vec![
        r#"{"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"}"#.to_string(),
        r#"{"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}"#.to_string(),
    ];
    if normalize {
        modules.push(
            r#"{"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}"#.to_string(),
        );
    }
    std::fs::write(dir.join("modules.json"), format!("[{}]", modules.join(","))).unwrap();
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    std::fs::write(
        dir.join("1_Pooling/config.json"),
        format!(r#"{{"word_embedding_dimension": 32, "pooling_mode_cls_token": false, "{pooling_key}": true}}"#),
    )
    .unwrap();
    std::fs::write(
        dir.join("0_Transformer/sentence_bert_config.json"),
        r#"{"max_seq_length": 20, "do_lower_case": false}"#,
    )
    .unwrap();
    dir
}

#[test]
fn sentence_transformers_directories_set_the_defaults() {
    let s = Scratch::new("encode-st");
    assert_eq!(sentence_transformers_config(&s.0).unwrap(), None);
    let dir = st_dir(&s.0, "pooling_mode_mean_tokens", true);
    let st = sentence_transformers_config(&dir).unwrap().unwrap();
    assert_eq!(st.pooling, Ok(Pooling::Mean));
    assert!(st.normalize);
    assert_eq!(st.max_seq_length, Some(20));
    assert_eq!(st.transformer_dir, dir.join("0_Transformer"));

    let input = s.0.join("q.jsonl");
    write_items(&input, &items(6));
    let out = s.0.join("out");
    let cfg = EncodeConfig {
        max_len: None,
        is_query: true,
        ..config(&dir, &input, &out)
    };
    let report = encode(&cfg).unwrap();
    assert!(report.sentence_transformers);
    assert_eq!(
        (report.pooling, report.normalize, report.max_len),
        (Pooling::Mean, true, 20)
    );
    // Explicit options win.
    let report = encode(&EncodeConfig {
        pooling: Some(Pooling::Cls),
        normalize: Some(false),
        max_len: Some(10),
        ..cfg.clone()
    })
    .unwrap();
    assert_eq!(
        (report.pooling, report.normalize, report.max_len),
        (Pooling::Cls, false, 10)
    );

    // A pooling we do not compute is an error unless overridden.
    std::fs::remove_dir_all(&dir).unwrap();
    let dir = st_dir(&s.0, "pooling_mode_max_tokens", false);
    let err = encode(&EncodeConfig {
        model: dir.clone(),
        ..cfg.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("pooling_mode_max_tokens"), "{err}");
    let report = encode(&EncodeConfig {
        model: dir,
        pooling: Some(Pooling::Mean),
        ..cfg
    })
    .unwrap();
    assert!(!report.normalize);
}

#[test]
fn minilm_through_encode_matches_sentence_transformers() {
    let Some(dir) = bert_common::minilm_dir() else {
        eprintln!(
            "SKIP: {} not installed and MINILM_DIR not set",
            bert_common::MINILM_PACKAGE
        );
        return;
    };
    let fx = SafeTensors::open(bert_common::fixtures().join("minilm.safetensors")).unwrap();
    let ids = fx.get("input_ids").unwrap();
    let mask = fx.get("attention_mask").unwrap().to_vec::<i64>().unwrap();
    let want = fx.get("embeddings").unwrap().to_vec::<f32>().unwrap();
    let (n, l) = (ids.shape()[0], ids.shape()[1]);
    let ids = ids.to_vec::<i64>().unwrap();
    // The fixture's rows are [CLS] text [SEP] padding: encode's inputs are the text.
    let items: Vec<EncodeItem> = (0..n)
        .map(|i| {
            let len = mask[i * l..(i + 1) * l].iter().sum::<i64>() as usize;
            EncodeItem {
                text_id: format!("s{i}"),
                text: ids[i * l + 1..i * l + len - 1]
                    .iter()
                    .map(|&t| t as u32)
                    .collect(),
            }
        })
        .collect();
    let s = Scratch::new("encode-minilm");
    let input = s.0.join("sentences.jsonl");
    write_items(&input, &items);
    let out = s.0.join("out");
    let report = encode(&EncodeConfig {
        max_len: None,
        batch_size: 8,
        ..config(&dir, &input, &out)
    })
    .unwrap();
    assert_eq!(
        (report.pooling, report.normalize, report.max_len, report.dim),
        (Pooling::Mean, true, 256, 384)
    );
    let got = EmbeddingSet::read(&out)
        .unwrap()
        .embeddings
        .to_vec::<f32>()
        .unwrap();
    let mut worst = 1f64;
    for i in 0..n {
        let (a, b) = (&got[i * 384..(i + 1) * 384], &want[i * 384..(i + 1) * 384]);
        let cos: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
        worst = worst.min(cos);
    }
    assert!(worst > 0.99999, "lowest cosine {worst}");
    eprintln!("{n} sentences, lowest cosine {worst:.9}");
}

/// With a GPU (feature `cuda`; skipped without one): the same vectors as on the CPU, within 1e-4
/// in f32 and 2e-2 with bf16 autocast (relative to the largest element), still f32 on disk.
#[cfg(feature = "cuda")]
#[test]
fn cuda_encodes_as_the_cpu() {
    let Some(dev) = tensor::testing::cuda_or_skip("cuda_encodes_as_the_cpu") else {
        return;
    };
    let s = Scratch::new("encode-cuda");
    let model_dir = tiny_model_dir(&s.0.join("model"), 0.1);
    let input = s.0.join("corpus.json");
    write_items(&input, &items(30));
    let run = |name: &str, device, precision| {
        let out = s.0.join(name);
        encode(&EncodeConfig {
            device,
            precision,
            ..config(&model_dir, &input, &out)
        })
        .unwrap();
        EmbeddingSet::read(&out).unwrap().embeddings
    };
    let cpu = run("cpu", tensor::Device::Cpu, nn::Precision::F32);
    for (name, precision, tol) in [
        ("f32", nn::Precision::F32, 1e-4),
        ("bf16", nn::Precision::Bf16, 2e-2),
    ] {
        let gpu = run(name, dev, precision);
        assert_eq!(gpu.dtype(), tensor::DType::F32);
        let err = tensor::testing::max_rel_err(&gpu, &cpu);
        assert!(err <= tol, "{name}: relative error {err}");
    }
}
