//! Data-parallel training on CPU threads (`ThreadGroup`): replicas trained on equal shards of each
//! batch with their gradients averaged match one replica trained on the whole batch, and stay
//! bitwise identical to each other; a rank that leaves is reported by name, not waited for; a
//! parameter without a gradient on some ranks is averaged with zeros there.

use autograd::{Gradients, Var};
use nn::{
    all_reduce_grads, shard_range, step_params, AdamW, AdamWConfig, AdamWVariant, Communicator,
    LayerNorm, Linear, Module, Param, ThreadGroup,
};
use std::time::{Duration, Instant};
use tensor::{DType, Rng, Tensor};

/// A tiny classifier: Linear(6 -> 16), gelu, LayerNorm, Linear(16 -> 4), mean cross-entropy.
struct Model {
    l1: Linear,
    ln: LayerNorm,
    l2: Linear,
}

impl Module for Model {
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        self.l1.visit_params(&nn::join(prefix, "l1"), f);
        self.ln.visit_params(&nn::join(prefix, "ln"), f);
        self.l2.visit_params(&nn::join(prefix, "l2"), f);
    }
}

impl Model {
    fn new() -> Model {
        let mut rng = Rng::new(7);
        Model {
            l1: Linear::new(6, 16, true, 0.5, &mut rng).unwrap(),
            ln: LayerNorm::new(16, 1e-12).unwrap(),
            l2: Linear::new(16, 4, true, 0.5, &mut rng).unwrap(),
        }
    }

    fn loss(&self, x: &Tensor, y: &Tensor) -> Var {
        let h = self.l1.forward(&Var::constant(x.clone())).unwrap();
        let h = self.ln.forward(&h.gelu().unwrap()).unwrap();
        self.l2.forward(&h).unwrap().cross_entropy(y, -100).unwrap()
    }
}

const BATCH: usize = 12;
const STEPS: usize = 5;
const LR: f64 = 1e-2;

/// The global batch of `step`: inputs [12, 6] and targets in 0..4.
fn batch(step: usize) -> (Tensor, Tensor) {
    let x = tensor::testing::randn(&[BATCH, 6], 1.0, DType::F32, 100 + step as u64);
    let y: Vec<i64> = (0..BATCH)
        .map(|i| ((i * 5 + step * 3) % 4) as i64)
        .collect();
    (x, Tensor::from_vec(y, &[BATCH]).unwrap())
}

/// Trains replica `rank` of `world` for `STEPS` steps on its shard of each batch, averaging
/// gradients (and the logged loss) through `comm` when there is one. Returns the final parameters
/// and the global loss of every step.
fn train(comm: Option<&dyn Communicator>, rank: usize, world: usize) -> (Vec<Vec<f32>>, Vec<f32>) {
    let model = Model::new();
    let params = model.named_params();
    let mut opt = AdamW::new(AdamWConfig {
        lr: LR,
        weight_decay: 0.01,
        variant: AdamWVariant::Torch,
        ..Default::default()
    })
    .unwrap();
    let mut losses = Vec::new();
    for step in 0..STEPS {
        let (x, y) = batch(step);
        let rows = shard_range(BATCH, rank, world).unwrap();
        let (xs, ys) = (
            x.narrow(0, rows.start, rows.len()).unwrap(),
            y.narrow(0, rows.start, rows.len()).unwrap(),
        );
        let loss = model.loss(&xs, &ys);
        let mut grads = loss.backward().unwrap();
        let mut value = loss.value().clone();
        drop(loss);
        if let Some(comm) = comm {
            all_reduce_grads(comm, &params, &mut grads).unwrap();
            comm.all_reduce_mean(&mut [&mut value]).unwrap();
        }
        losses.push(value.to_scalar::<f32>().unwrap());
        step_params(&mut opt, LR, &params, &grads).unwrap();
    }
    let values = params
        .iter()
        .map(|(_, p)| p.tensor().to_vec::<f32>().unwrap())
        .collect();
    (values, losses)
}

/// Runs `f(comm)` on one thread per rank of a new ThreadGroup of `world`.
fn on_ranks<R: Send>(
    world: usize,
    timeout: Duration,
    f: impl Fn(ThreadGroup) -> R + Sync,
) -> Vec<R> {
    let comms = ThreadGroup::with_timeout(world, timeout).unwrap();
    std::thread::scope(|s| {
        let hs: Vec<_> = comms.into_iter().map(|c| s.spawn(|| f(c))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn sharded_replicas_match_one_replica_on_the_full_batch() {
    let (want, want_losses) = train(None, 0, 1);
    let initial: Vec<Vec<f32>> = Model::new()
        .named_params()
        .iter()
        .map(|(_, p)| p.tensor().to_vec::<f32>().unwrap())
        .collect();
    assert!(
        max_abs_diff(&want, &initial) > 1e-2,
        "training did not move"
    );
    for world in [2, 3] {
        let runs = on_ranks(world, Duration::from_secs(60), |comm| {
            let rank = comm.rank();
            train(Some(&comm), rank, world)
        });
        let (params0, losses0) = &runs[0];
        for (rank, (params, losses)) in runs.iter().enumerate() {
            assert_eq!(
                params, params0,
                "world {world}: rank {rank} drifted from rank 0"
            );
            assert_eq!(
                losses, losses0,
                "world {world}: rank {rank} logged another loss"
            );
        }
        let diff = max_abs_diff(params0, &want);
        assert!(diff <= 1e-6, "world {world}: parameters differ by {diff}");
        for (got, want) in losses0.iter().zip(&want_losses) {
            assert!(
                (got - want).abs() <= 1e-6,
                "world {world}: loss {got} vs {want}"
            );
        }
        // Without the all-reduce, a replica trained on its shard alone ends elsewhere: the
        // tolerance above is meaningful.
        let (alone, _) = train(None, 0, world);
        assert!(max_abs_diff(&alone, &want) > 1e-4, "world {world}");
    }
}

#[test]
fn a_rank_that_leaves_is_named_without_waiting_for_the_timeout() {
    let t0 = Instant::now();
    let errs = on_ranks(3, Duration::from_secs(120), |comm| {
        if comm.rank() == 1 {
            // This replica fails before its all-reduce: its communicator is dropped.
            return String::new();
        }
        let model = Model::new();
        let (x, y) = batch(0);
        let mut grads = model.loss(&x, &y).backward().unwrap();
        all_reduce_grads(&comm, &model.named_params(), &mut grads)
            .unwrap_err()
            .to_string()
    });
    assert!(t0.elapsed() < Duration::from_secs(60));
    for e in [&errs[0], &errs[2]] {
        assert!(e.contains("rank 1 left the group"), "{e}");
    }
}

#[test]
fn a_gradient_missing_on_one_rank_is_averaged_with_zeros() {
    let out = on_ranks(2, Duration::from_secs(60), |comm| {
        let model = Model::new();
        let params = model.named_params();
        let (x, y) = batch(comm.rank());
        let mut grads: Gradients = if comm.rank() == 0 {
            model.loss(&x, &y).backward().unwrap()
        } else {
            // Rank 1 uses only l1: l2 and ln get no gradient here.
            let h = model.l1.forward(&Var::constant(x)).unwrap();
            h.sqr().unwrap().mean_all().unwrap().backward().unwrap()
        };
        let local: Vec<Option<Vec<f32>>> = params
            .iter()
            .map(|(_, p)| grads.get(&p.var()).map(|g| g.to_vec::<f32>().unwrap()))
            .collect();
        all_reduce_grads(&comm, &params, &mut grads).unwrap();
        let reduced: Vec<Vec<f32>> = params
            .iter()
            .map(|(_, p)| grads.get(&p.var()).unwrap().to_vec::<f32>().unwrap())
            .collect();
        (local, reduced)
    });
    let ((local0, reduced0), (local1, reduced1)) = (&out[0], &out[1]);
    assert_eq!(reduced0, reduced1);
    let names: Vec<String> = Model::new()
        .named_params()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for (i, name) in names.iter().enumerate() {
        let g0 = local0[i].as_ref().unwrap();
        let want: Vec<f32> = match &local1[i] {
            Some(g1) => g0
                .iter()
                .zip(g1)
                .map(|(a, b)| ((*a as f64 + *b as f64) as f32) / 2.0)
                .collect(),
            None => {
                assert!(!name.starts_with("l1"), "{name}");
                g0.iter().map(|a| a / 2.0).collect()
            }
        };
        assert_eq!(reduced0[i], want, "{name}");
    }
}
