//! `train-retriever` data parallel on CPU ranks (threads of a `ThreadGroup`): N ranks with
//! `per_device_train_batch_size` b take the same three optimizer steps as
//! - one rank with batch b and N accumulation steps (in-batch negatives are per rank, as
//!   Tevatron's without `--negatives_x_device`);
//! - one rank with batch N x b, with `--negatives_x_device` (every query scores every rank's
//!   passages), dropout on;
//!
//! logged losses, gradient norms and final weights within 1e-6.

use std::path::Path;
use std::time::Duration;

use nn::{Communicator, Module, ThreadGroup};
use retrieval::train::{train_on, LogEntry, TrainReport};
use retrieval::{train, DenseModel, GradCacheChunks, TrainConfig};

mod common;
use common::{setup, tiny_model_dir_init, Scratch};

fn config(model: &Path, data: &Path, out: &Path) -> TrainConfig {
    TrainConfig {
        model_name_or_path: model.to_path_buf(),
        output_dir: out.to_path_buf(),
        train_dir: data.to_path_buf(),
        per_device_train_batch_size: 2,
        train_n_passages: 3,
        q_max_len: 8,
        p_max_len: 12,
        learning_rate: 3e-3,
        // Small enough that clipping acts: the norm must be the global one.
        max_grad_norm: 0.5,
        // AdamW divides by sqrt(v) + eps: with the default 1e-8, an element whose gradients
        // nearly cancel over the steps turns a 1e-7 rounding difference of the gradient into a
        // larger one of the update; a larger eps keeps updates proportional to the gradients.
        adam_epsilon: 1e-3,
        max_steps: Some(3),
        logging_steps: 1,
        save_steps: 2,
        ..TrainConfig::default()
    }
}

fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let (m, _) = DenseModel::from_pretrained(dir, false).unwrap();
    m.encoder
        .named_params()
        .into_iter()
        .map(|(n, p)| (n, p.tensor().to_vec::<f32>().unwrap()))
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1e-12)
}

fn same_log(a: &[LogEntry], b: &[LogEntry]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!((x.step, x.learning_rate), (y.step, y.learning_rate));
        assert!(close(x.loss, y.loss), "loss {x:?} vs {y:?}");
        assert!(close(x.grad_norm, y.grad_norm), "grad_norm {x:?} vs {y:?}");
        assert!(close(x.epoch, y.epoch), "epoch {x:?} vs {y:?}");
    }
}

fn on_ranks(world: usize, cfg: &TrainConfig) -> Vec<TrainReport> {
    let comms = ThreadGroup::with_timeout(world, Duration::from_secs(60)).unwrap();
    std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .into_iter()
            .map(|c| s.spawn(move || train_on(cfg, &c as &dyn Communicator).unwrap()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// The whole model's relative error (L2) between the final weights in `a` and `b`. Per element,
/// a gradient that is a small difference of large terms differs by more than 1e-6 of itself
/// between any two summation orders (one rank accumulating vs an all-reduce), and AdamW passes
/// that on.
fn weights_error(a: &Path, b: &Path) -> f64 {
    let (a, b) = (weights(a), weights(b));
    let (mut diff, mut norm) = (0f64, 0f64);
    for ((_, x), (_, y)) in a.iter().zip(&b) {
        for (u, v) in x.iter().zip(y) {
            diff += (*u as f64 - *v as f64).powi(2);
            norm += (*v as f64).powi(2);
        }
    }
    (diff / norm).sqrt()
}

#[test]
fn n_ranks_with_negatives_x_device_equal_one_rank_with_the_global_batch() {
    let s = Scratch::new("retrieval-dp-xdev");
    let (_, data) = setup(&s.0, 12, 0.0);
    // Dropout on: every rank draws its rows of the global batch's masks.
    let model = tiny_model_dir_init(&s.0.join("init-wide"), 0.1, 0.2);
    for world in [2, 3] {
        let one_dir = s.0.join(format!("one-{world}"));
        let one = train(&TrainConfig {
            per_device_train_batch_size: 2 * world,
            ..config(&model, &data, &one_dir)
        })
        .unwrap();
        let out = s.0.join(format!("ranks-{world}"));
        let reports = on_ranks(
            world,
            &TrainConfig {
                negatives_x_device: true,
                ..config(&model, &data, &out)
            },
        );
        assert_eq!(reports[0].log.len(), 3);
        same_log(&reports[0].log, &one.log);
        let err = weights_error(&out, &one_dir);
        assert!(err <= 1e-6, "weights: relative error {err} ({world} ranks)");
        // Without cross-device negatives the loss is another one (fewer negatives per query).
        let own = on_ranks(
            world,
            &config(&model, &data, &s.0.join(format!("own-{world}"))),
        );
        assert!(!close(own[0].log[0].loss, one.log[0].loss));
    }
}

#[test]
fn n_ranks_equal_one_rank_accumulating_n_micro_batches() {
    let s = Scratch::new("retrieval-dp");
    let (_, data) = setup(&s.0, 12, 0.0);
    // Weights 10x BERT's usual scale: the [CLS] vectors of a random tiny BERT are then far
    // apart, so the contrastive gradient is not a small difference of nearly equal vectors
    // (which turns each rounding into a large relative error, whatever the world size).
    let model = tiny_model_dir_init(&s.0.join("init-wide"), 0.0, 0.2);
    for world in [2, 3] {
        let one = train(&TrainConfig {
            gradient_accumulation_steps: world,
            ..config(&model, &data, &s.0.join(format!("one-{world}")))
        })
        .unwrap();
        let out = s.0.join(format!("ranks-{world}"));
        let reports = on_ranks(world, &config(&model, &data, &out));
        assert_eq!(reports[0].log.len(), 3);
        same_log(&reports[0].log, &one.log);
        for r in &reports[1..] {
            assert!(
                r.log.is_empty() && r.checkpoints.is_empty(),
                "rank 0 alone logs"
            );
            assert_eq!(r.global_step, 3);
        }
        assert_eq!(reports[0].checkpoints, vec![out.join("checkpoint-2")]);
        let err = weights_error(&out, &s.0.join(format!("one-{world}")));
        assert!(err <= 1e-6, "weights: relative error {err} ({world} ranks)");
        // Not trivially equal: the weights moved.
        assert!(weights_error(&out, &model) > 1e-3);
    }
}

/// The all-reduce overlapped with each step's last backward pass (the default; with the gradient
/// cache, the last chunk's re-encode) trains bit-identically to the all-reduce after it
/// (`overlap_all_reduce: false`): 2 ranks, 2 accumulation steps, dropout on, with and without
/// cross-device negatives and the gradient cache. The run's data-parallel line says which ran.
#[test]
fn overlapped_and_after_backward_all_reduce_train_bit_identically() {
    let s = Scratch::new("retrieval-dp-overlap");
    let (_, data) = setup(&s.0, 12, 0.0);
    let model = tiny_model_dir_init(&s.0.join("init-wide"), 0.1, 0.2);
    let chunks = Some(GradCacheChunks {
        gc_q_chunk_size: 1,
        gc_p_chunk_size: 2,
    });
    for (i, (negatives_x_device, grad_cache)) in
        [(false, None), (true, None), (true, chunks), (false, chunks)]
            .into_iter()
            .enumerate()
    {
        let run = |overlap_all_reduce: bool| {
            let out = s.0.join(format!("run-{i}-{overlap_all_reduce}"));
            let cfg = TrainConfig {
                negatives_x_device,
                grad_cache,
                gradient_accumulation_steps: 2,
                overlap_all_reduce,
                ..config(&model, &data, &out)
            };
            (on_ranks(2, &cfg), weights(&out))
        };
        let what = format!("x_device {negatives_x_device}, grad cache {grad_cache:?}");
        let (overlapped, w_overlapped) = run(true);
        let (after, w_after) = run(false);
        assert_eq!(overlapped[0].log.len(), 3);
        assert_eq!(overlapped[0].log, after[0].log, "{what}");
        assert!(w_overlapped == w_after, "{what}: the weights differ");
        for (r, a) in overlapped.iter().zip(&after) {
            // The overlapped buckets also carry the zeros of the parameters no rank has a
            // gradient for (the pooler), which the path after backward leaves out.
            assert_eq!((r.comm.steps, a.comm.steps), (3, 3));
            assert!(r.comm.bytes >= a.comm.bytes && a.comm.bytes > 0, "{what}");
            assert!(r.comm.not_overlapped.is_none(), "{what}");
            assert_eq!(a.comm.not_overlapped, Some(nn::NotOverlapped::Off));
        }
        let line = overlapped[0].data_parallel.as_deref().unwrap();
        assert!(
            line.starts_with("data parallel: 2 ranks; per step ")
                && line.contains("launched while the backward pass was still running"),
            "{line}"
        );
        let line = after[0].data_parallel.as_deref().unwrap();
        assert!(
            line.ends_with("not overlapped with the backward pass (turned off)"),
            "{line}"
        );
    }
}
