//! Shared by the `cotmae train-retriever` tests: a tiny BERT and 8 training examples, and the
//! flags that train on them.

use std::path::Path;

use bert::{BertConfig, BertModel, Tokenizer};
use cotmae::cli::run_args;
use retrieval::train::{LogEntry, LOG_FILE};
use retrieval::{read_jsonl, JsonlWriter, TrainExample};
use tensor::Rng;

/// A tiny BERT with dropout 0.1 (2 heads, hidden 32) and 8 training examples in `dir`.
pub fn setup(dir: &Path) {
    let tok = Tokenizer::from_dir(tensor::testing::fixtures_dir().join("bert/tiny")).unwrap();
    let mut config = BertConfig {
        vocab_size: tok.vocab_size(),
        ..BertConfig::default()
    };
    (config.hidden_size, config.intermediate_size) = (32, 64);
    (config.num_hidden_layers, config.num_attention_heads) = (1, 2);
    config.max_position_embeddings = 32;
    let model = BertModel::new(&config, false, &mut Rng::new(11)).unwrap();
    model
        .save_pretrained(dir.join("model"), Some(&tok))
        .unwrap();
    let mut rng = Rng::new(12);
    let mut text = |n: usize| {
        (0..n)
            .map(|_| 5 + rng.below(100) as u32)
            .collect::<Vec<_>>()
    };
    let mut w = JsonlWriter::create(dir.join("train.jsonl")).unwrap();
    for _ in 0..8 {
        w.write(&TrainExample {
            query: text(3),
            positives: vec![text(6)],
            negatives: vec![text(5), text(7)],
        })
        .unwrap();
    }
    w.finish().unwrap();
}

/// The flags that train 3 steps from `model` (`--model_name_or_path <dir>/model`, or
/// `--config_name ...`) into `dir/<name>`, then `extra`.
pub fn args(dir: &Path, name: &str, model: &[&str], extra: &[&str]) -> Vec<String> {
    let p = |s: &str| dir.join(s).display().to_string();
    let mut args: Vec<String> = ["train-retriever".to_string()]
        .into_iter()
        .chain(model.iter().map(|s| s.to_string()))
        .collect();
    args.extend(
        [
            "--train_dir",
            &p("train.jsonl"),
            "--output_dir",
            &p(name),
            "--per_device_train_batch_size",
            "4",
            "--train_n_passages",
            "3",
            "--q_max_len",
            "8",
            "--p_max_len",
            "10",
            "--learning_rate",
            "1e-3",
            "--max_steps",
            "3",
            "--logging_steps",
            "1",
            "--save_steps",
            "0",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Trains 3 steps from `dir/model` into `dir/<name>` with `extra` flags; returns the logged
/// entries.
pub fn train(dir: &Path, name: &str, extra: &[&str]) -> Vec<LogEntry> {
    let model = dir.join("model").display().to_string();
    run_args(&args(dir, name, &["--model_name_or_path", &model], extra)).unwrap();
    read_jsonl(dir.join(name).join(LOG_FILE)).unwrap()
}
