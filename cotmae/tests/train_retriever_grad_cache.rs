//! `cotmae train-retriever --grad_cache` end to end on a tiny BERT with dropout on: the logged
//! losses of 3 steps follow the plain run's (the same loss and gradients each step, up to f32
//! summation order; the exact check, in f64, is `retrieval/tests/train_step.rs`), chunk sizes of
//! 0 are refused, and `--help` documents the flags.

mod common;
use common::retriever::{setup, train};
use cotmae::cli::run_args;

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
