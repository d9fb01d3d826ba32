//! Loading and saving HF model directories: save -> load round trips bit for bit, names map
//! between BertModel and BertForMaskedLM checkpoints, legacy and tied aliases, the
//! missing/unexpected report, and errors that name the file and tensor.

mod common;

use autograd::no_grad;
use bert::{BertConfig, BertError, BertForMaskedLM, BertModel, Tokenizer};
use common::{fixtures, same_values, Scratch};
use nn::{Ctx, Module};
use std::collections::BTreeMap;
use std::path::Path;
use tensor::safetensors::{save, SafeTensors};
use tensor::{DType, Device, Rng, Tensor};

fn tiny_config() -> BertConfig {
    BertConfig::from_file(fixtures().join("tiny/config.json")).unwrap()
}

fn batch() -> (Tensor, Tensor) {
    let ids = Tensor::from_vec(vec![2i64, 17, 40, 4, 99, 3, 2, 8, 3, 0, 0, 0], &[2, 6]).unwrap();
    let mask = Tensor::from_vec(vec![1i64, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], &[2, 6]).unwrap();
    (ids, mask)
}

fn mlm_logits(m: &BertForMaskedLM) -> Tensor {
    let (ids, mask) = batch();
    no_grad(|| m.logits(&ids, Some(&mask), None, &mut Ctx::eval()))
        .unwrap()
        .value()
        .clone()
}

/// Writes a checkpoint directory with the tiny config and the given tensors.
fn write_ckpt(dir: &Path, tensors: &[(String, Tensor)]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(fixtures().join("tiny/config.json"), dir.join("config.json")).unwrap();
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save(dir.join("model.safetensors"), &refs, None).unwrap();
}

fn tensors_of(m: &dyn Module) -> Vec<(String, Tensor)> {
    m.named_params()
        .into_iter()
        .map(|(n, p)| (n, p.tensor()))
        .collect()
}

#[test]
fn save_then_load_is_identical_and_hf_shaped() {
    let scratch = Scratch::new("roundtrip");
    let model = BertForMaskedLM::new(&tiny_config(), &mut Rng::new(7)).unwrap();
    let tok = Tokenizer::from_dir(fixtures().join("tiny")).unwrap();
    let dir = scratch.0.join("out");
    model.save_pretrained(&dir, Some(&tok)).unwrap();

    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "config.json",
            "model.safetensors",
            "special_tokens_map.json",
            "tokenizer_config.json",
            "vocab.txt"
        ]
    );
    // HF names, the tied decoder stored once (under the word embeddings), format metadata.
    let st = SafeTensors::open(dir.join("model.safetensors")).unwrap();
    let mut names: Vec<&str> = st.names();
    names.sort();
    let mut want: Vec<String> = model.named_params().into_iter().map(|(n, _)| n).collect();
    want.sort();
    assert_eq!(names, want);
    assert!(names.contains(&"cls.predictions.bias"));
    assert!(!names
        .iter()
        .any(|n| n.starts_with("cls.predictions.decoder")));
    assert_eq!(st.metadata()["format"], "pt");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"], serde_json::json!(["BertForMaskedLM"]));
    assert_eq!(cfg["model_type"], "bert");
    assert_eq!(cfg["hidden_size"], 64);
    let tok2 = Tokenizer::from_dir(&dir).unwrap();
    assert_eq!(tok2.vocab_size(), tok.vocab_size());
    assert_eq!(
        tok2.encode("w1 w17 w3", true, None),
        tok.encode("w1 w17 w3", true, None)
    );

    let (loaded, report) = BertForMaskedLM::from_pretrained(&dir).unwrap();
    assert!(report.is_clean() && report.ignored.is_empty(), "{report:?}");
    for ((n, a), (_, b)) in model
        .named_params()
        .iter()
        .zip(loaded.named_params().iter())
    {
        assert!(same_values(&a.tensor(), &b.tensor()), "{n}");
        assert!(b.tensor().is_mapped(), "{n} is not memory-mapped");
    }
    // Still tied after loading.
    assert!(loaded
        .cls
        .predictions
        .decoder_weight
        .same(&loaded.bert.embeddings.word_embeddings.weight));
    assert!(same_values(&mlm_logits(&model), &mlm_logits(&loaded)));

    // Saving again over the existing directory (from the mapped weights) leaves no temp files.
    loaded.save_pretrained(&dir, Some(&tok)).unwrap();
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 5);
    let (again, report) = BertForMaskedLM::from_pretrained(&dir).unwrap();
    assert!(report.is_clean());
    assert!(same_values(&mlm_logits(&model), &mlm_logits(&again)));
    assert_eq!(
        std::fs::read_dir(&scratch.0).unwrap().count(),
        1,
        "temp dir left behind"
    );
}

#[test]
fn base_model_and_mlm_checkpoints_load_into_each_other() {
    let scratch = Scratch::new("crossload");
    let tiny = fixtures().join("tiny");

    // BertForMaskedLM checkpoint -> BertModel: `bert.` stripped, head unexpected, pooler missing.
    let (base, report) = BertModel::from_pretrained(&tiny, true).unwrap();
    assert_eq!(report.missing, ["pooler.dense.weight", "pooler.dense.bias"]);
    let mut unexpected = report.unexpected.clone();
    unexpected.sort();
    assert_eq!(
        unexpected,
        [
            "cls.predictions.bias",
            "cls.predictions.transform.LayerNorm.bias",
            "cls.predictions.transform.LayerNorm.weight",
            "cls.predictions.transform.dense.bias",
            "cls.predictions.transform.dense.weight",
        ]
    );
    let text = report.to_string();
    assert!(
        text.contains("not used (5)") && text.contains("newly initialized (2)"),
        "{text}"
    );
    let (mlm, _) = BertForMaskedLM::from_pretrained(&tiny).unwrap();
    let w = |m: &dyn Module, n: &str| {
        m.named_params()
            .into_iter()
            .find(|(k, _)| k == n)
            .unwrap()
            .1
            .tensor()
    };
    assert!(same_values(
        &w(&base, "encoder.layer.1.output.dense.weight"),
        &w(&mlm, "bert.encoder.layer.1.output.dense.weight")
    ));

    // BertModel checkpoint -> BertForMaskedLM: `bert.` added, head missing, pooler unexpected.
    let dir = scratch.0.join("base");
    base.save_pretrained(&dir, None).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"], serde_json::json!(["BertModel"]));
    let (mlm2, report) = BertForMaskedLM::from_pretrained(&dir).unwrap();
    assert_eq!(
        report.unexpected,
        ["pooler.dense.bias", "pooler.dense.weight"]
    );
    assert_eq!(
        report.missing,
        [
            "cls.predictions.bias",
            "cls.predictions.transform.dense.weight",
            "cls.predictions.transform.dense.bias",
            "cls.predictions.transform.LayerNorm.weight",
            "cls.predictions.transform.LayerNorm.bias",
        ]
    );
    assert!(same_values(
        &w(&mlm2, "bert.embeddings.word_embeddings.weight"),
        &w(&mlm, "bert.embeddings.word_embeddings.weight")
    ));
    // Missing parameters get HF's initialisation: normal(0, 0.02) weights, zero MLM bias,
    // LayerNorm 1/0.
    let pw = w(&base, "pooler.dense.weight").to_vec::<f32>().unwrap();
    let std = (pw.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / pw.len() as f64).sqrt();
    assert!((0.017..0.023).contains(&std), "pooler std {std}");
    let tw = w(&mlm2, "cls.predictions.transform.dense.weight")
        .to_vec::<f32>()
        .unwrap();
    assert!(tw.iter().any(|&x| x != 0.0));
    assert!(w(&mlm2, "cls.predictions.bias")
        .to_vec::<f32>()
        .unwrap()
        .iter()
        .all(|&x| x == 0.0));
    assert!(w(&mlm2, "cls.predictions.transform.LayerNorm.weight")
        .to_vec::<f32>()
        .unwrap()
        .iter()
        .all(|&x| x == 1.0));
}

#[test]
fn legacy_names_tied_aliases_and_buffers() {
    let scratch = Scratch::new("aliases");
    let (mlm, _) = BertForMaskedLM::from_pretrained(fixtures().join("tiny")).unwrap();
    let mut tensors = Vec::new();
    for (n, t) in tensors_of(&mlm) {
        let n = n
            .replace("LayerNorm.weight", "LayerNorm.gamma")
            .replace("LayerNorm.bias", "LayerNorm.beta")
            .replace("cls.predictions.bias", "cls.predictions.decoder.bias");
        tensors.push((n, t));
    }
    let word = tensors[0].1.clone();
    tensors.push(("cls.predictions.decoder.weight".into(), word));
    tensors.push((
        "cls.seq_relationship.weight".into(),
        Tensor::zeros(&[2, 32], DType::F32, Device::Cpu).unwrap(),
    ));
    tensors.push((
        "bert.embeddings.position_ids".into(),
        Tensor::arange(0.0, 64.0, 1.0, DType::I64, Device::Cpu)
            .unwrap()
            .reshape(&[1, 64])
            .unwrap(),
    ));
    // f16 tensors are converted.
    let f16_name = "bert.encoder.layer.0.intermediate.dense.weight";
    for (n, t) in tensors.iter_mut() {
        if n == f16_name {
            *t = t.to_dtype(DType::F16).unwrap();
        }
    }
    let dir = scratch.0.join("legacy");
    write_ckpt(&dir, &tensors);
    let (loaded, report) = BertForMaskedLM::from_pretrained(&dir).unwrap();
    assert!(report.is_clean(), "{report}");
    let mut ignored = report.ignored.clone();
    ignored.sort();
    assert_eq!(
        ignored,
        [
            "bert.embeddings.position_ids",
            "cls.predictions.decoder.weight",
            "cls.seq_relationship.weight"
        ]
    );
    for ((n, a), (_, b)) in mlm.named_params().iter().zip(loaded.named_params().iter()) {
        if n == f16_name {
            let back = a
                .tensor()
                .to_dtype(DType::F16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            assert!(same_values(&back, &b.tensor()), "{n}");
            assert_eq!(b.tensor().dtype(), DType::F32);
        } else {
            assert!(same_values(&a.tensor(), &b.tensor()), "{n}");
        }
    }

    // Both the canonical MLM bias and its decoder alias: the canonical one is used.
    let mut both = tensors_of(&mlm);
    both.push((
        "cls.predictions.decoder.bias".into(),
        Tensor::full(5.0, &[128], DType::F32, Device::Cpu).unwrap(),
    ));
    let dir = scratch.0.join("both");
    write_ckpt(&dir, &both);
    let (loaded, report) = BertForMaskedLM::from_pretrained(&dir).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.ignored, ["cls.predictions.decoder.bias"]);
    assert!(same_values(
        &loaded.cls.predictions.bias.tensor(),
        &mlm.cls.predictions.bias.tensor()
    ));
}

fn err_of<T>(r: bert::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn loader_errors_name_file_and_tensor() {
    let scratch = Scratch::new("errors");
    let (mlm, _) = BertForMaskedLM::from_pretrained(fixtures().join("tiny")).unwrap();

    // Shape mismatch: an error naming the tensor and both shapes; the model is left unchanged.
    let mut tensors = tensors_of(&mlm);
    let bad = "bert.encoder.layer.1.attention.self.key.weight";
    for (n, t) in tensors.iter_mut() {
        if n == bad {
            *t = Tensor::zeros(&[32, 16], DType::F32, Device::Cpu).unwrap();
        }
    }
    let dir = scratch.0.join("shape");
    write_ckpt(&dir, &tensors);
    let target = BertForMaskedLM::new(&tiny_config(), &mut Rng::new(3)).unwrap();
    let before = tensors_of(&target);
    let e = err_of(target.load_weights(&dir));
    assert!(
        e.contains(bad) && e.contains("[32, 16]") && e.contains("[64, 64]"),
        "{e}"
    );
    assert!(e.contains("model.safetensors"), "{e}");
    for ((n, a), (_, b)) in before.iter().zip(tensors_of(&target).iter()) {
        assert!(same_values(a, b), "{n} changed by a failed load");
    }

    // Integer tensor where a parameter is expected.
    let mut tensors = tensors_of(&mlm);
    tensors[1].1 = Tensor::zeros(&[64, 64], DType::I64, Device::Cpu).unwrap();
    let dir = scratch.0.join("dtype");
    write_ckpt(&dir, &tensors);
    let e = err_of(BertForMaskedLM::from_pretrained(&dir));
    assert!(
        e.contains("bert.embeddings.position_embeddings.weight") && e.contains("i64"),
        "{e}"
    );

    // No weights file; a pytorch_model.bin gets a hint.
    let dir = scratch.0.join("noweights");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixtures().join("tiny/config.json"), dir.join("config.json")).unwrap();
    let e = err_of(BertForMaskedLM::from_pretrained(&dir));
    assert!(
        e.contains("model.safetensors") && !e.contains("pytorch_model.bin"),
        "{e}"
    );
    std::fs::write(dir.join("pytorch_model.bin"), b"").unwrap();
    let e = err_of(BertForMaskedLM::from_pretrained(&dir));
    assert!(e.contains("pytorch_model.bin"), "{e}");

    // No config / a bad config field.
    let e = err_of(BertModel::from_pretrained(scratch.0.join("nothing"), true));
    assert!(e.contains("config.json"), "{e}");
    let dir = scratch.0.join("badcfg");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"num_attention_heads": "four"}"#,
    )
    .unwrap();
    let r = BertModel::from_pretrained(&dir, true);
    assert!(matches!(r, Err(BertError::Config { .. })));
    let e = err_of(r);
    assert!(
        e.contains("config.json") && e.contains("num_attention_heads"),
        "{e}"
    );

    // A corrupt weights file names the file.
    let dir = scratch.0.join("corrupt");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixtures().join("tiny/config.json"), dir.join("config.json")).unwrap();
    std::fs::write(dir.join("model.safetensors"), [1u8, 2, 3]).unwrap();
    let e = err_of(BertForMaskedLM::from_pretrained(&dir));
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn sharded_checkpoints_load() {
    let scratch = Scratch::new("sharded");
    let (mlm, _) = BertForMaskedLM::from_pretrained(fixtures().join("tiny")).unwrap();
    let dir = scratch.0.join("sharded");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixtures().join("tiny/config.json"), dir.join("config.json")).unwrap();
    let all = tensors_of(&mlm);
    let (a, b) = all.split_at(20);
    let mut map = BTreeMap::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        let refs: Vec<(&str, &Tensor)> = part.iter().map(|(n, t)| (n.as_str(), t)).collect();
        save(dir.join(file), &refs, None).unwrap();
        for (n, _) in part {
            map.insert(n.clone(), file.to_string());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let (loaded, report) = BertForMaskedLM::from_pretrained(&dir).unwrap();
    assert!(report.is_clean(), "{report}");
    assert!(same_values(&mlm_logits(&mlm), &mlm_logits(&loaded)));
}

#[test]
fn init_is_hf_like() {
    let m = BertForMaskedLM::new(&tiny_config(), &mut Rng::new(1)).unwrap();
    let names: Vec<String> = m.named_params().into_iter().map(|(n, _)| n).collect();
    // HF state_dict order (tied decoder not repeated).
    assert_eq!(names[0], "bert.embeddings.word_embeddings.weight");
    assert_eq!(names[5], "bert.encoder.layer.0.attention.self.query.weight");
    assert_eq!(names[15], "bert.encoder.layer.0.intermediate.dense.weight");
    assert_eq!(names[17], "bert.encoder.layer.0.output.dense.weight");
    assert_eq!(names[37], "cls.predictions.bias");
    assert_eq!(names[41], "cls.predictions.transform.LayerNorm.bias");
    assert_eq!(names.len(), 42);
    // vocab 128, positions 64, 2 token types, hidden H = 64, intermediate I = 128, 2 layers.
    let (h, i) = (64, 128);
    let layer = 4 * h * h + 4 * h + 2 * h + 2 * h * i + i + h + 2 * h; // QKVO, LN, FFN, LN
    let embeddings = 128 * h + 64 * h + 2 * h + 2 * h;
    let head = h * h + h + 2 * h + 128; // transform dense, LN, decoder bias
    assert_eq!(m.num_params(), embeddings + 2 * layer + head);
    for (n, p) in m.named_params() {
        let v = p.tensor().to_vec::<f32>().unwrap();
        if n.ends_with("LayerNorm.weight") {
            assert!(v.iter().all(|&x| x == 1.0), "{n}");
        } else if n.ends_with("bias") {
            assert!(v.iter().all(|&x| x == 0.0), "{n}");
        } else {
            let std = (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
            assert!((0.015..0.025).contains(&std), "{n}: std {std}");
        }
    }
    // The padding row of the word embeddings starts at zero.
    let w = m
        .bert
        .embeddings
        .word_embeddings
        .weight
        .tensor()
        .to_vec::<f32>()
        .unwrap();
    assert!(w[..64].iter().all(|&x| x == 0.0));
    assert!(w[64..128].iter().any(|&x| x != 0.0));
}

/// Issue 14, class 2: a checkpoint that lacks weights the model needs, or holds a NaN or an
/// infinity, is an error naming the file and the tensor(s); random init only when asked for.
#[test]
fn missing_or_non_finite_weights_are_errors() {
    let scratch = Scratch::new("badweights");
    let (mlm, _) = BertForMaskedLM::from_pretrained(fixtures().join("tiny")).unwrap();
    let all_used = |_: &str| true;
    let not_heads = |n: &str| !bert::is_head_param(n);

    // Every tensor unknown (another architecture's names): an error naming the file, the
    // missing weights and the unused names; with --allow_random_init a random model.
    let renamed: Vec<(String, Tensor)> = tensors_of(&mlm)
        .into_iter()
        .map(|(n, t)| (format!("roberta.{n}"), t))
        .collect();
    let dir = scratch.0.join("unknown");
    write_ckpt(&dir, &renamed);
    let (_, report) = BertModel::from_pretrained(&dir, true).unwrap();
    let e = report.require(&not_heads, false).unwrap_err().to_string();
    assert!(
        e.contains("model.safetensors")
            && e.contains("embeddings.word_embeddings.weight")
            && e.contains("roberta.")
            && e.contains("--allow_random_init"),
        "{e}"
    );
    report.require(&not_heads, true).unwrap();

    // One core tensor missing (a layer's value projection): an error naming it.
    let gone = "bert.encoder.layer.1.attention.self.value.weight";
    let partial: Vec<(String, Tensor)> = tensors_of(&mlm)
        .into_iter()
        .filter(|(n, _)| n != gone)
        .collect();
    let dir = scratch.0.join("partial");
    write_ckpt(&dir, &partial);
    let (_, report) = BertForMaskedLM::from_pretrained(&dir).unwrap();
    let e = report.require(&all_used, false).unwrap_err().to_string();
    assert!(e.contains(gone) && e.contains("lacks 1 weight"), "{e}");
    // The same missing tensor matters to a BertModel too (without the prefix).
    let (_, report) = BertModel::from_pretrained(&dir, true).unwrap();
    let e = report.require(&not_heads, false).unwrap_err().to_string();
    assert!(
        e.contains("encoder.layer.1.attention.self.value.weight"),
        "{e}"
    );

    // Only heads missing: a BertModel checkpoint into BertForMaskedLM is an error for a task
    // that uses the MLM head, a warning for one that does not.
    let base = scratch.0.join("base");
    let (bm, _) = BertModel::from_pretrained(fixtures().join("tiny"), false).unwrap();
    bm.save_pretrained(&base, None).unwrap();
    let (_, report) = BertForMaskedLM::from_pretrained(&base).unwrap();
    let e = report.require(&all_used, false).unwrap_err().to_string();
    assert!(e.contains("cls.predictions.bias"), "{e}");
    report.require(&not_heads, false).unwrap();
    // The pooler a retriever never uses: a warning only.
    let (_, report) = BertModel::from_pretrained(&base, true).unwrap();
    assert_eq!(report.missing, ["pooler.dense.weight", "pooler.dense.bias"]);
    report.require(&not_heads, false).unwrap();

    // NaN, +inf, -inf, also in half precision: an error naming the tensor and the file, and
    // nothing modified.
    for (k, (bad, dtype)) in [
        (f32::NAN, DType::F32),
        (f32::INFINITY, DType::F32),
        (f32::NEG_INFINITY, DType::F16),
        (f32::NAN, DType::BF16),
    ]
    .into_iter()
    .enumerate()
    {
        let mut tensors = tensors_of(&mlm);
        let target = "bert.encoder.layer.0.output.dense.bias";
        for (n, t) in tensors.iter_mut() {
            let mut v = t.to_vec::<f32>().unwrap();
            if n == target {
                v[5] = bad;
            }
            *t = Tensor::from_vec(v, t.shape())
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
        }
        let dir = scratch.0.join(format!("nonfinite{k}"));
        write_ckpt(&dir, &tensors);
        let model = BertForMaskedLM::new(&tiny_config(), &mut Rng::new(3)).unwrap();
        let before = tensors_of(&model);
        let e = err_of(model.load_weights(&dir));
        assert!(
            e.contains(target) && e.contains("non-finite") && e.contains("element 5"),
            "{e}"
        );
        assert!(e.contains("model.safetensors"), "{e}");
        for ((n, a), (_, b)) in before.iter().zip(tensors_of(&model).iter()) {
            assert!(same_values(a, b), "{n} changed by a failed load");
        }
    }
}
