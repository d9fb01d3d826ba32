//! `cotmae train-retriever --grad_cache` end to end on a tiny BERT with dropout on: the logged
//! losses of 3 steps follow the plain run's (the same loss and gradients each step, up to f32
//! summation order; the exact check, in f64, is `retrieval/tests/train_step.rs`), chunk sizes of
//! 0 are refused, and `--help` documents the flags. Two ranks (`--nproc_per_node 2`, 2 queries
//! each) with `--negatives_x_device --grad_cache` follow the one-rank plain run too, through the
//! all-reduce overlapped with each step's last chunk's backward, and print the run's
//! data-parallel line.

use std::process::Command;

mod common;
use common::retriever::{args, setup, train};
use common::{free_port, BIN};
use cotmae::cli::run_args;
use retrieval::train::{LogEntry, LOG_FILE};

/// `b`'s losses and gradient norms within 1e-5 of `a`'s, step by step.
fn follows(a: &[LogEntry], b: &[LogEntry]) {
    assert_eq!(a.len(), b.len());
    for (a, b) in a.iter().zip(b) {
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
    follows(&plain, &chunked);
    // The steps change the model: the losses are not all the same number.
    assert!(plain.windows(2).any(|w| w[0].loss != w[1].loss));

    // Two ranks of 2 queries each, every query scoring both ranks' passages: the global batch of
    // 4, as the plain run.
    let port = free_port().to_string();
    let model = dir.join("model").display().to_string();
    let mut two = args(
        dir,
        "two-ranks",
        &["--model_name_or_path", &model],
        &[
            "--nproc_per_node",
            "2",
            "--master_port",
            &port,
            "--negatives_x_device",
            "--grad_cache",
            "--gc_q_chunk_size",
            "1",
            "--gc_p_chunk_size",
            "2",
        ],
    );
    let per_device = two
        .iter()
        .position(|a| a == "--per_device_train_batch_size")
        .unwrap();
    two[per_device + 1] = "2".into();
    let out = Command::new(BIN).args(&two[..]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let ranks: Vec<LogEntry> = retrieval::read_jsonl(dir.join("two-ranks").join(LOG_FILE)).unwrap();
    follows(&plain, &ranks);
    assert!(
        stderr.contains("data parallel: 2 ranks; per step ")
            && stderr.contains("launched while the backward pass was still running"),
        "{stderr}"
    );

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
