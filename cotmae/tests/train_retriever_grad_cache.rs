//! `cotmae train-retriever --grad_cache` end to end on a tiny BERT with dropout on: the logged
//! losses of 3 steps follow the plain run's (the same loss and gradients each step, up to f32
//! summation order; the exact check, in f64, is `retrieval/tests/train_step.rs`), chunk sizes of
//! 0 are refused, and `--help` documents the flags.

use std::path::Path;

use bert::{BertConfig, BertModel, Tokenizer};
use cotmae::cli::run_args;
use retrieval::train::{LogEntry, LOG_FILE};
use retrieval::{read_jsonl, JsonlWriter, TrainExample};
use tensor::Rng;

/// A tiny BERT with dropout 0.1 (2 heads, hidden 32) and 8 training examples in `dir`.
fn setup(dir: &Path) {
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

/// Trains 3 steps into `dir/<name>` with `extra` flags; returns the logged entries.
fn train(dir: &Path, name: &str, extra: &[&str]) -> Vec<LogEntry> {
    let p = |s: &str| dir.join(s).display().to_string();
    let mut args: Vec<String> = [
        "train-retriever",
        "--model_name_or_path",
        &p("model"),
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
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    run_args(&args).unwrap();
    read_jsonl(dir.join(name).join(LOG_FILE)).unwrap()
}

#[test]
fn grad_cache_trains_as_the_whole_batch_does() {
    let scratch = tensor::testing::TempDir::new("cotmae-grad-cache-cli");
    let dir = scratch.0.as_path();
    setup(dir);
    let plain = train(dir, "plain", &[]);
    let chunked = train(
        dir,
        "chunked",
        &[
            "--grad_cache",
            "--gc_q_chunk_size",
            "1",
            "--gc_p_chunk_size",
            "5",
        ],
    );
    assert_eq!(plain.len(), 3);
    assert_eq!(chunked.len(), 3);
    for (a, b) in plain.iter().zip(&chunked) {
        assert_eq!(a.step, b.step);
        let rel = |x: f64, y: f64| (x - y).abs() / y.abs();
        assert!(
            rel(b.loss, a.loss) < 1e-5,
            "step {}: {} vs {}",
            a.step,
            b.loss,
            a.loss
        );
        assert!(rel(b.grad_norm, a.grad_norm) < 1e-5, "step {}", a.step);
    }
    // The steps change the model: the losses are not all the same number.
    assert!(plain.windows(2).any(|w| w[0].loss != w[1].loss));

    let p = |s: &str| dir.join(s).display().to_string();
    let err = run_args(&[
        "train-retriever".into(),
        "--model_name_or_path".into(),
        p("model"),
        "--train_dir".into(),
        p("train.jsonl"),
        "--output_dir".into(),
        p("zero"),
        "--grad_cache".into(),
        "--gc_p_chunk_size".into(),
        "0".into(),
    ])
    .unwrap_err()
    .to_string();
    assert!(err.contains("must be at least 1"), "{err}");
}

#[test]
fn help_documents_the_flags() {
    let help = run_args(&["train-retriever".into(), "--help".into()])
        .unwrap_err()
        .to_string();
    for flag in [
        "--grad_cache",
        "--gc_q_chunk_size",
        "--gc_p_chunk_size",
        "--negatives_x_device",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}
