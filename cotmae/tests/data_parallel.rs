//! `cotmae pretrain` data parallel on CPU ranks (threads of a `ThreadGroup`, calling
//! `pretrain_on`): N = 2 and 3 ranks with `per_device_train_batch_size` B/N take the same three
//! optimizer steps (with gradient accumulation, clipping and dropout) as one rank with B: logged
//! losses and gradient norms, and the final weights, within 1e-6 relative. Only rank 0 writes;
//! the checkpoint records the world size.

use std::path::Path;
use std::time::Duration;

use bert::BertForMaskedLM;
use clap::Parser;
use cotmae::cli::{Cli, Command as Sub};
use cotmae::trainer::{pretrain_on, PretrainArgs};
use nn::{Communicator, Module, ThreadGroup};
use serde_json::Value;

mod common;
use common::*;

fn parse(args: &[String]) -> PretrainArgs {
    let cli = Cli::try_parse_from(
        ["cotmae", "pretrain"]
            .into_iter()
            .map(String::from)
            .chain(args.iter().cloned()),
    )
    .unwrap();
    match cli.command {
        Sub::Pretrain(a) => *a,
        _ => unreachable!(),
    }
}

fn on_ranks(world: usize, args: &PretrainArgs) -> Vec<f64> {
    let comms = ThreadGroup::with_timeout(world, Duration::from_secs(120)).unwrap();
    std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .into_iter()
            .map(|c| s.spawn(move || pretrain_on(args, &c as &dyn Communicator).unwrap()))
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap().train_loss)
            .collect()
    })
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1e-12)
}

/// The logged losses and gradient norm of one step of a `world`-rank run (`got`) against the
/// one-rank run's (`want`), within 1e-6 relative.
fn assert_losses_close(got: &Value, want: &Value, world: usize) {
    for k in ["loss", "encoder_mlm_loss", "head_mlm_loss", "grad_norm"] {
        let (a, b) = (got[k].as_f64().unwrap(), want[k].as_f64().unwrap());
        assert!(
            close(a, b),
            "{world} ranks, step {}: {k} {a} vs {b}",
            got["step"]
        );
    }
}

/// `max |a - b| / max |b|` over a tensor: its error relative to its scale (an element near zero
/// is not held to 1e-6 of itself).
fn max_relative(a: &[f32], b: &[f32]) -> f64 {
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let scale = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
    diff as f64 / (scale as f64).max(1e-12)
}

/// Every parameter of the final model in `out` (encoder and head), by name.
fn weights(out: &Path) -> Vec<(String, Vec<f32>)> {
    let (lm, _) = BertForMaskedLM::from_pretrained(out).unwrap();
    let mut all: Vec<(String, Vec<f32>)> = lm
        .named_params()
        .into_iter()
        .map(|(n, p)| (n, p.tensor().to_vec::<f32>().unwrap()))
        .collect();
    let head = tensor::safetensors::SafeTensors::open(out.join("c_head.safetensors")).unwrap();
    for n in head.names() {
        all.push((n.to_string(), head.get(n).unwrap().to_vec::<f32>().unwrap()));
    }
    all
}

#[test]
fn n_ranks_with_a_shard_each_equal_one_rank_with_the_global_batch() {
    // Dropout on (BERT's 0.1): each rank draws its rows of the global batch's masks.
    let fx = fixture("dp", 30);
    let flags = |out: &Path, batch: usize| {
        let batch = batch.to_string();
        parse(&fx.args(
            out,
            &[
                "--max_steps",
                "3",
                "--per_device_train_batch_size",
                &batch,
                "--gradient_accumulation_steps",
                "2",
                "--learning_rate",
                "5e-3",
                "--max_grad_norm",
                "0.5",
                // AdamW divides by sqrt(v) + eps: with the default 1e-8, an element whose
                // gradients nearly cancel over the steps turns a 1e-7 rounding difference of
                // the gradient into a larger one of the update. A larger eps keeps the update
                // proportional to the gradient, so the weights show the gradients' agreement.
                "--adam_epsilon",
                "1e-3",
                "--logging_steps",
                "1",
                "--save_steps",
                "2",
                "--seed",
                "3",
            ],
        ))
    };
    let one = fx.dir.0.join("one");
    let want_loss = on_ranks(1, &flags(&one, 6))[0];
    let want = log_with(&one, "loss");
    assert_eq!(want.len(), 3);
    for world in [2, 3] {
        let out = fx.dir.0.join(format!("ranks-{world}"));
        let losses = on_ranks(world, &flags(&out, 6 / world));
        for l in losses {
            assert!(close(l, want_loss), "train_loss {l} vs {want_loss}");
        }
        let got = log_with(&out, "loss");
        assert_eq!(got.len(), 3, "one log line per step: rank 0 alone logs");
        for (g, w) in got.iter().zip(&want) {
            for k in ["learning_rate", "epoch", "step"] {
                assert_eq!(g[k], w[k], "{k}");
            }
            assert_losses_close(g, w, world);
        }
        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("checkpoint-2/trainer_state.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(state["world_size"], world);
        assert_eq!(checkpoints(&out), vec!["checkpoint-2".to_string()]);
        for ((n, a), (_, b)) in weights(&out).iter().zip(&weights(&one)) {
            if n.ends_with("attention.self.key.bias") {
                // Its exact gradient is zero (softmax ignores a shift shared by a row's keys):
                // what it gets is rounding noise, which AdamW's normalisation turns into steps of
                // +-lr, so it differs between any two summation orders.
                continue;
            }
            let err = max_relative(a, b);
            assert!(err <= 1e-6, "{world} ranks, {n}: relative error {err}");
        }
    }
}

/// Two GPU ranks (simulated in CI), each a thread that joins through the TCP store by
/// `ncclCommInitRank` (`nn::comm::Nccl::join`), take the same two steps as one GPU with the
/// global batch: the NCCL path of `pretrain_on`, dropout on.
#[cfg(feature = "cuda")]
#[test]
fn two_gpu_ranks_joined_by_nccl_init_rank_equal_one_gpu_with_the_global_batch() {
    let test = "two_gpu_ranks_joined_by_nccl_init_rank_equal_one_gpu_with_the_global_batch";
    if tensor::testing::gpus_or_skip(test, 2).is_none() {
        return;
    }
    let fx = fixture("dp-nccl", 30);
    let flags = |out: &Path, batch: usize, device: &str| {
        let batch = batch.to_string();
        parse(&fx.args(
            out,
            &[
                "--max_steps",
                "2",
                "--per_device_train_batch_size",
                &batch,
                "--device",
                device,
                "--learning_rate",
                "5e-3",
                "--max_grad_norm",
                "0.5",
                "--logging_steps",
                "1",
                "--save_steps",
                "1000",
                "--seed",
                "3",
            ],
        ))
    };
    let one = fx.dir.0.join("one-gpu");
    pretrain_on(&flags(&one, 4, "cuda:0"), &nn::SingleProcess).unwrap();
    let out = fx.dir.0.join("nccl");
    let addr = nn::comm::store::serve("127.0.0.1:0").unwrap().to_string();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|r| {
                let (addr, args) = (&addr, flags(&out, 2, &format!("cuda:{r}")));
                s.spawn(move || {
                    let store =
                        nn::comm::TcpGroup::connect(addr, r, 2, Duration::from_secs(120)).unwrap();
                    let comm = nn::comm::Nccl::join(r, store).unwrap();
                    pretrain_on(&args, &comm).unwrap()
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    });
    let (got, want) = (log_with(&out, "loss"), log_with(&one, "loss"));
    assert_eq!((got.len(), want.len()), (2, 2));
    for (g, w) in got.iter().zip(&want) {
        for k in ["loss", "encoder_mlm_loss", "head_mlm_loss", "grad_norm"] {
            let (a, b) = (g[k].as_f64().unwrap(), w[k].as_f64().unwrap());
            assert!(close(a, b), "step {}: {k} {a} vs {b}", g["step"]);
        }
    }
}

/// An epoch whose last global micro-batch has fewer documents than there are ranks: some rank
/// computes nothing in that step (its generator then catches up with the others'), and the run
/// still equals one rank with the global batch, into the next epoch, dropout on.
#[test]
fn a_rank_with_no_documents_in_the_epochs_last_batch_keeps_the_run_equal() {
    use cotmae::collator::SpanSource;
    // An odd number of documents (prepare keeps one record per document here).
    let fx = fixture("dp-idle", 31);
    let n = cotmae::trainer::TrainData::open(&fx.data)
        .unwrap()
        .num_docs();
    // World size and per-rank batch such that the last batch of an epoch has 1..world documents.
    let (world, batch) = [2usize, 3]
        .iter()
        .flat_map(|&w| (1..=6).rev().map(move |b| (w, b)))
        .find(|&(w, b)| (1..w).contains(&(n % (w * b))))
        .expect("a layout with a short last batch");
    let steps = n.div_ceil(world * batch) + 1;
    let flags = |out: &Path, per_rank: usize| {
        let (per_rank, steps) = (per_rank.to_string(), steps.to_string());
        parse(&fx.args(
            out,
            &[
                "--max_steps",
                &steps,
                "--per_device_train_batch_size",
                &per_rank,
                "--learning_rate",
                "5e-3",
                "--adam_epsilon",
                "1e-3",
                "--logging_steps",
                "1",
                "--save_steps",
                "1000",
                "--seed",
                "3",
            ],
        ))
    };
    let one = fx.dir.0.join("one");
    on_ranks(1, &flags(&one, world * batch));
    let out = fx.dir.0.join(format!("ranks-{world}"));
    on_ranks(world, &flags(&out, batch));
    let (got, want) = (log_with(&out, "loss"), log_with(&one, "loss"));
    assert_eq!((got.len(), want.len()), (steps, steps));
    // The run went through the short batch into the next epoch.
    assert!(got[steps - 1]["epoch"].as_f64().unwrap() > 1.0);
    for (g, w) in got.iter().zip(&want) {
        assert_losses_close(g, w, world);
    }
}
