//! `cotmae pipeline` on the demo's generated MS MARCO-shaped files, at a toy size: every stage
//! runs, the metrics are written, and a second invocation skips every finished stage.

use bert::{BertConfig, BertForMaskedLM, Tokenizer};
use clap::Parser;
use cotmae::cli::{run, Cli};
use tensor::Rng;

#[test]
fn two_stage_pipeline_runs_and_resumes() {
    let dir = std::env::temp_dir().join(format!("cotmae-pipeline-test-{}", std::process::id()));
    let data = cotmae::demo::data::generate(30, 0.7, 3);
    let vocab = cotmae::demo::write_task(&data, &dir, 3).unwrap();
    let tok = Tokenizer::from_dir(&vocab).unwrap();
    let config = BertConfig {
        vocab_size: tok.vocab_size(),
        hidden_size: 32,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        intermediate_size: 64,
        max_position_embeddings: 64,
        ..BertConfig::default()
    };
    let model = dir.join("pretrained");
    BertForMaskedLM::new(&config, &mut Rng::new(1))
        .unwrap()
        .save_pretrained(&model, Some(&tok))
        .unwrap();
    let p = |name: &str| dir.join(name).display().to_string();
    let out = dir.join("out");
    let args: Vec<String> = [
        "cotmae",
        "pipeline",
        "--model_name_or_path",
        &p("pretrained"),
        "--corpus",
        &p("corpus.tsv"),
        "--train_queries",
        &p("queries.train.tsv"),
        "--train_qrels",
        &p("qrels.train.tsv"),
        "--bm25_negatives",
        &p("triples.train.tsv"),
        "--dev_queries",
        &p("queries.dev.tsv"),
        "--dev_qrels",
        &p("qrels.dev.tsv"),
        "--output_dir",
        &out.display().to_string(),
        "--per_device_train_batch_size",
        "8",
        "--train_n_passages",
        "3",
        "--q_max_len",
        "16",
        "--p_max_len",
        "48",
        "--learning_rate",
        "1e-3",
        "--stage1_epochs",
        "1",
        "--stage2_epochs",
        "1",
        "--save_steps",
        "4",
        "--n_splits",
        "2",
        "--depth",
        "50",
        "--hn_depth",
        "20",
        "--hn_sample",
        "3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    run(Cli::try_parse_from(&args).unwrap()).expect("pipeline");
    let metrics = std::fs::read_to_string(out.join("metrics.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&metrics).unwrap();
    let mrr = json["MRR@10"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&mrr));
    assert_eq!(
        json["QueriesRanked"].as_u64().unwrap() as usize,
        data.dev_queries.len()
    );
    // Stage 2 trained on both sets of negatives, from the pretrained model.
    let s2: Vec<String> = std::fs::read_dir(out.join("train-s2"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(s2.iter().any(|f| f.starts_with("bm25-")) && s2.iter().any(|f| f.starts_with("hn-")));
    // Run again: every stage is skipped, nothing is rewritten.
    let before = std::fs::metadata(out.join("metrics.json"))
        .unwrap()
        .modified()
        .unwrap();
    run(Cli::try_parse_from(&args).unwrap()).expect("pipeline again");
    let after = std::fs::metadata(out.join("metrics.json"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);
    std::fs::remove_dir_all(&dir).unwrap();
}
