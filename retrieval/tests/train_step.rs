//! `loss_and_grads` (train_step.rs) against the plain one-process full batch, with dropout on:
//! the gradient cache with any chunk sizes, and cross-device negatives on 2 and 3 CPU ranks
//! (ThreadGroup threads, gradients averaged as data parallelism averages them), alone and
//! together, give the full batch's loss and every parameter gradient within 1e-6 relative. The
//! model runs in f64 so that the only differences left are summation orders. The gradients go
//! through `nn::StepGrads` as the trainer's do: the backward pass (the last chunk's, with the
//! gradient cache) overlapped with the all-reduce, which gives the same bits as the all-reduce
//! after backward.

use std::path::Path;
use std::time::Duration;

use nn::{Communicator, Ctx, Module, SingleProcess, StepGrads, ThreadGroup};
use retrieval::dense::{PadTo, SpecialIds};
use retrieval::{
    loss_and_grads, DenseModel, GradCacheChunks, MicroBatchBackward, StepOptions, TokenBatch,
};
use tensor::{DType, Rng};

mod common;
use common::{tiny_model_dir, Scratch};

/// Queries of the global batch, passages per query, and the padded lengths (even, so that every
/// row of a dropout draw starts on a Philox block: `nn::BatchRows`).
const QUERIES: usize = 6;
const N_PASSAGES: usize = 2;
const Q_LEN: usize = 8;
const P_LEN: usize = 10;
const DROPOUT_AT: Rng = Rng {
    seed: 77,
    offset: 5,
};

/// The global batch: random texts of random lengths (so padding differs between rows).
fn global_batch() -> (TokenBatch, TokenBatch) {
    let mut rng = Rng::new(4);
    let mut texts = |n: usize, max: u64| -> Vec<Vec<u32>> {
        (0..n)
            .map(|_| {
                let len = 1 + rng.below(max) as usize;
                (0..len).map(|_| 5 + rng.below(120) as u32).collect()
            })
            .collect()
    };
    let special = SpecialIds {
        cls: 2,
        sep: 3,
        pad: 0,
    };
    let batch = |t: Vec<Vec<u32>>, len: usize| {
        let refs: Vec<&[u32]> = t.iter().map(|v| v.as_slice()).collect();
        TokenBatch::new(&refs, len, PadTo::MaxLen, special).unwrap()
    };
    (
        batch(texts(QUERIES, 7), Q_LEN),
        batch(texts(QUERIES * N_PASSAGES, 9), P_LEN),
    )
}

/// Rows `start..start + len` of `b`.
fn rows(b: &TokenBatch, start: usize, len: usize) -> TokenBatch {
    TokenBatch {
        input_ids: b.input_ids.narrow(0, start, len).unwrap(),
        attention_mask: b.attention_mask.narrow(0, start, len).unwrap(),
    }
}

/// The tiny model of `dir`, in f64.
fn model_f64(dir: &Path) -> DenseModel {
    let (model, _) = DenseModel::from_pretrained(dir, false).unwrap();
    for (name, p) in model.encoder.named_params() {
        p.set(&name, p.tensor().to_dtype(DType::F64).unwrap())
            .unwrap();
    }
    model
}

/// What one rank computed: the logged loss, every parameter's gradient by name (after the mean
/// over ranks), and where the dropout generator ended.
struct Outcome {
    loss: f64,
    grads: Vec<(String, Vec<f64>)>,
    rng: Rng,
}

/// The loss of `q`/`p` through `loss_and_grads` as the step's one micro-batch, and the gradients
/// averaged over the ranks of `comm` (overlapped with backward, or after it).
fn step(
    model: &DenseModel,
    (q, p): (&TokenBatch, &TokenBatch),
    ctx: &mut Ctx,
    opts: StepOptions,
    comm: &dyn Communicator,
    overlap: bool,
) -> (f64, autograd::Gradients) {
    let mut sums = StepGrads::new(&model.encoder.named_params(), overlap);
    let backward = MicroBatchBackward {
        grads: &mut sums,
        loss_scale: 1.0,
        last: true,
    };
    let loss = loss_and_grads(model, q, p, ctx, &opts, comm, backward).unwrap();
    let (grads, _) = sums.finish(comm).unwrap();
    (loss, grads)
}

/// This rank's share of the global batch through `loss_and_grads`, gradients averaged over the
/// ranks of `comm` (overlapped with the backward pass, or after it).
fn run_rank_with(dir: &Path, comm: &dyn Communicator, opts: StepOptions, overlap: bool) -> Outcome {
    let model = model_f64(dir);
    let (q, p) = global_batch();
    let per = QUERIES / comm.world_size();
    let (q, p) = (
        rows(&q, comm.rank() * per, per),
        rows(&p, comm.rank() * per * N_PASSAGES, per * N_PASSAGES),
    );
    let mut ctx = Ctx::training(DROPOUT_AT);
    let (loss, grads) = step(&model, (&q, &p), &mut ctx, opts, comm, overlap);
    let params = model.encoder.named_params();
    // Every parameter but the pooler's (the loss never uses it) has a gradient.
    let grads: Vec<(String, Vec<f64>)> = params
        .iter()
        .filter_map(|(name, p)| {
            let g = grads.get(&p.var())?.to_vec::<f64>().unwrap();
            Some((name.clone(), g))
        })
        .collect();
    assert_eq!(
        grads.len(),
        params.len() - 2,
        "parameters without a gradient"
    );
    Outcome {
        loss,
        grads,
        rng: ctx.rng,
    }
}

fn run_rank(dir: &Path, comm: &dyn Communicator, opts: StepOptions) -> Outcome {
    run_rank_with(dir, comm, opts, true)
}

/// `run_rank_with` on every rank of a ThreadGroup of `world`.
fn on_ranks_with(dir: &Path, world: usize, opts: StepOptions, overlap: bool) -> Vec<Outcome> {
    let comms = ThreadGroup::with_timeout(world, Duration::from_secs(120)).unwrap();
    std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .into_iter()
            .map(|c| s.spawn(move || run_rank_with(dir, &c, opts, overlap)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn on_ranks(dir: &Path, world: usize, opts: StepOptions) -> Vec<Outcome> {
    on_ranks_with(dir, world, opts, true)
}

/// Asserts `got` equals `want` (the plain one-process full batch): the loss and each gradient
/// within 1e-6 relative (to the gradient's largest element, see `floor`), and the same generator
/// position.
fn assert_matches(got: &Outcome, want: &Outcome, what: &str) {
    let rel = (got.loss - want.loss).abs() / want.loss.abs();
    assert!(rel <= 1e-6, "{what}: loss {} vs {}", got.loss, want.loss);
    assert_eq!(got.rng, want.rng, "{what}: dropout generator");
    assert_eq!(got.grads.len(), want.grads.len());
    let largest = |v: &[f64]| v.iter().fold(0f64, |m, x| m.max(x.abs()));
    // Gradients that are zero in exact arithmetic (the attention key bias: softmax ignores a
    // constant added to every score of a row) hold rounding noise only; they are compared to
    // 1e-12 of the largest gradient element of the model instead of to themselves.
    let floor = 1e-12 * want.grads.iter().fold(0f64, |m, (_, w)| m.max(largest(w)));
    for ((name, g), (want_name, w)) in got.grads.iter().zip(&want.grads) {
        assert_eq!(name, want_name);
        let scale = largest(w).max(floor);
        let err = g.iter().zip(w).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err <= 1e-6 * scale,
            "{what}: {name} differs by {err:e} (largest element {scale:e})"
        );
    }
}

fn grad_cache(q: usize, p: usize) -> Option<GradCacheChunks> {
    Some(GradCacheChunks {
        gc_q_chunk_size: q,
        gc_p_chunk_size: p,
    })
}

#[test]
fn gradient_cache_chunks_equal_the_full_batch_with_dropout() {
    let scratch = Scratch::new("train-step-gc");
    let dir = tiny_model_dir(&scratch.0, 0.1);
    let plain = run_rank(&dir, &SingleProcess, StepOptions::default());
    // Dropout is on: a different generator state changes the loss.
    let mut ctx = Ctx::training(Rng {
        seed: 78,
        ..DROPOUT_AT
    });
    let (q, p) = global_batch();
    let model = model_f64(&dir);
    let (other, _) = step(
        &model,
        (&q, &p),
        &mut ctx,
        StepOptions::default(),
        &SingleProcess,
        true,
    );
    assert!((other - plain.loss).abs() > 1e-6 * plain.loss);
    for (qc, pc) in [
        (1, 1),
        (3, 3),
        (QUERIES, QUERIES * N_PASSAGES),
        (4, 5),
        (100, 100),
    ] {
        let opts = StepOptions {
            grad_cache: grad_cache(qc, pc),
            ..StepOptions::default()
        };
        let got = run_rank(&dir, &SingleProcess, opts);
        assert_matches(&got, &plain, &format!("chunks {qc}/{pc}"));
    }
}

#[test]
fn cross_device_negatives_on_2_and_3_ranks_equal_one_process() {
    let scratch = Scratch::new("train-step-xdev");
    let dir = tiny_model_dir(&scratch.0, 0.1);
    let plain = run_rank(&dir, &SingleProcess, StepOptions::default());
    let x_device = StepOptions {
        negatives_x_device: true,
        ..StepOptions::default()
    };
    for world in [2, 3] {
        for (rank, got) in on_ranks(&dir, world, x_device).iter().enumerate() {
            assert_matches(got, &plain, &format!("world {world} rank {rank}"));
        }
    }
    // Without cross-device negatives each rank's loss covers its own queries only.
    let local = on_ranks(&dir, 2, StepOptions::default());
    assert!((local[0].loss - plain.loss).abs() > 1e-6 * plain.loss);
    // With the gradient cache too (chunks of 1 and 3 per rank).
    let both = StepOptions {
        grad_cache: grad_cache(1, 3),
        ..x_device
    };
    for (rank, got) in on_ranks(&dir, 3, both).iter().enumerate() {
        assert_matches(got, &plain, &format!("grad cache + x-device, rank {rank}"));
    }
}

/// The all-reduce overlapped with the backward pass (the last chunk's re-encode, with the
/// gradient cache) gives the same bits as the all-reduce after it, on every rank: with and
/// without cross-device negatives, with and without the gradient cache.
#[test]
fn overlapped_all_reduce_equals_the_all_reduce_after_backward_bit_for_bit() {
    let scratch = Scratch::new("train-step-overlap");
    let dir = tiny_model_dir(&scratch.0, 0.1);
    let bits = |o: &Outcome| -> Vec<u64> {
        let mut b = vec![o.loss.to_bits()];
        b.extend(
            o.grads
                .iter()
                .flat_map(|(_, g)| g.iter().map(|x| x.to_bits())),
        );
        b
    };
    for x_device in [false, true] {
        for chunks in [None, grad_cache(1, 3)] {
            let opts = StepOptions {
                negatives_x_device: x_device,
                grad_cache: chunks,
                ..StepOptions::default()
            };
            let what = format!("x_device {x_device}, grad cache {chunks:?}");
            let overlapped = on_ranks_with(&dir, 2, opts, true);
            let after = on_ranks_with(&dir, 2, opts, false);
            for (rank, (a, b)) in overlapped.iter().zip(&after).enumerate() {
                assert_eq!(bits(a), bits(b), "{what}, rank {rank}");
                assert_eq!(a.rng, b.rng);
            }
            assert_eq!(bits(&overlapped[0]).len(), bits(&overlapped[1]).len());
            assert_eq!(
                overlapped[0].grads, overlapped[1].grads,
                "{what}: ranks differ"
            );
        }
    }
}

#[test]
fn bad_chunk_sizes_and_misaligned_dropout_rows_are_clear_errors() {
    let scratch = Scratch::new("train-step-errors");
    let dir = tiny_model_dir(&scratch.0, 0.1);
    let model = model_f64(&dir);
    let (q, p) = global_batch();
    let step = |q: &TokenBatch, p: &TokenBatch, chunks| {
        let opts = StepOptions {
            grad_cache: chunks,
            ..StepOptions::default()
        };
        let mut ctx = Ctx::training(DROPOUT_AT);
        let mut sums = StepGrads::new(&model.encoder.named_params(), true);
        let backward = MicroBatchBackward {
            grads: &mut sums,
            loss_scale: 1.0,
            last: true,
        };
        loss_and_grads(&model, q, p, &mut ctx, &opts, &SingleProcess, backward)
            .err()
            .map(|e| e.to_string())
    };
    let e = step(&q, &p, grad_cache(0, 2)).unwrap();
    assert!(
        e.contains("gc_q_chunk_size and gc_p_chunk_size must be at least 1"),
        "{e}"
    );
    let e = step(&q, &rows(&p, 0, 5), None).unwrap();
    assert!(e.contains("5 passages for 6 queries"), "{e}");
    // An odd query length with 2 heads: a chunk starting at row 1 starts inside a Philox block
    // of the attention dropout's draw (2 * 7 * 7 elements a row).
    let odd = TokenBatch {
        input_ids: q.input_ids.narrow(1, 0, 7).unwrap(),
        attention_mask: q.attention_mask.narrow(1, 0, 7).unwrap(),
    };
    let e = step(&odd, &p, grad_cache(1, 1)).unwrap();
    assert!(e.contains("not on a Philox block"), "{e}");
}
