//! The gradient all-reduce overlapped with the backward pass (torch DDP's bucketed reducer).
//!
//! [`backward_and_all_reduce`] runs one backward pass and averages the resulting gradients over
//! the ranks, launching each bucket's collective as soon as every gradient in it is final, while
//! the rest of the backward pass goes on (the trainers reach it through
//! [`StepGrads`](crate::StepGrads), which sums a step's earlier backward passes):
//!
//! 1. agree: every rank's parameter dtypes and shapes are exchanged up front (as in
//!    [`all_reduce_grads`](crate::all_reduce_grads));
//! 2. plan: the buckets are formed from the parameters in *reverse* order (the last layers'
//!    gradients are final first), at most [`BUCKET_CAP_BYTES`] each, grouped by dtype; the plan
//!    depends on the parameter list only, so it is the same on every rank;
//! 3. autograd's hook ([`Var::backward_with_hook`]) hands each parameter's final gradient to the
//!    thread that owns the communicator, which launches bucket 0, 1, 2, ... in plan order, each
//!    once it is complete (a bucket never overtakes an earlier one, so every rank issues the same
//!    collectives in the same sequence whatever the timing). How the two run side by side
//!    ([`Walk`]):
//!    - CPU ranks: backward runs on a helper thread and sends each gradient over a channel to the
//!      calling thread, which runs the collectives (they take the host's time);
//!    - GPU ranks: backward runs on the calling thread, whose hook launches a complete bucket at
//!      once: the walk only queues kernels, and the bucket's sum runs on the GPU's communication
//!      stream beside the backward kernels queued after it (`cuda/src/comm_stream.rs`);
//! 4. when backward has ended, the parameters it gave no gradient take the earlier micro-batches'
//!    sum or zeros, the remaining buckets are launched, one host exchange drops the gradients
//!    that no rank has (as `all_reduce_grads` does), and each bucket's sum is finished (on a GPU
//!    the compute stream waits for it) and divided by the world size.
//!
//! Each element is the same sum over ranks in the same order as in `all_reduce_grads`, so the
//! result is bit-identical to backward followed by `all_reduce_grads`; only the time differs.
//!
//! Gradient accumulation: only the last micro-batch's backward goes through here (DDP's
//! `no_sync` on the others); `summed` brings the earlier micro-batches' gradient sums, which each
//! final gradient is added to (`sum + g`, as the trainers add them) before its bucket launches.
//!
//! CPU ranks with the profiler on (it records per thread: phase and step) keep backward on the
//! calling thread and launch the buckets after it (the same collectives, no overlap;
//! [`OverlapStats::not_overlapped`] says so). GPU ranks overlap with the profiler on too: their
//! backward stays on the calling thread.

use crate::comm::{Communicator, PendingSum};
use crate::data_parallel::{agree_on_shapes, plan_buckets, views_of_mean, BUCKET_CAP_BYTES};
use crate::Param;
use autograd::{Gradients, Var};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;
use tensor::{bail, Device, Result, Tensor};

const OP: &str = "backward_and_all_reduce";

/// One bucket's collective, in launch order.
#[derive(Clone, Debug, PartialEq)]
pub struct BucketRecord {
    /// Its gradients.
    pub tensors: usize,
    pub bytes: u64,
    /// Seconds the host spent on the collective: launching it (on CPU ranks: computing it;
    /// waiting for the other ranks included), then finishing it (divide).
    pub secs: f64,
    /// Whether the backward pass was still running when it was launched.
    pub during_backward: bool,
}

/// What one [`backward_and_all_reduce`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OverlapStats {
    pub buckets: Vec<BucketRecord>,
    /// Why the backward pass did not overlap the all-reduce, when it did not (with more than one
    /// rank): [`NotOverlapped`].
    pub not_overlapped: Option<NotOverlapped>,
}

/// Why a data-parallel backward pass ran before its all-reduce instead of beside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotOverlapped {
    /// CPU ranks with the profiler on: it records per thread (phase, step), so backward stays
    /// on the thread it profiles.
    Profiler,
    /// The caller asked for the all-reduce after backward ([`StepGrads::new`](crate::StepGrads)).
    Off,
}

impl std::fmt::Display for NotOverlapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NotOverlapped::Profiler => "the profiler is on",
            NotOverlapped::Off => "turned off",
        })
    }
}

impl OverlapStats {
    pub fn bytes(&self) -> u64 {
        self.buckets.iter().map(|b| b.bytes).sum()
    }

    /// Seconds in all the buckets' collectives.
    pub fn comm_secs(&self) -> f64 {
        self.buckets.iter().map(|b| b.secs).sum()
    }

    /// Seconds in the collectives launched while backward was still running.
    pub fn overlapped_secs(&self) -> f64 {
        self.buckets
            .iter()
            .filter(|b| b.during_backward)
            .map(|b| b.secs)
            .sum()
    }
}

/// Backward of `last` (a root and its seed gradient; `None`: this rank has nothing to compute in
/// the micro-batch), plus the running sums `summed` (one per entry of `params`, from earlier
/// backward passes), then the mean over the ranks of `comm`, overlapped (see the module docs).
/// The result holds a gradient for each parameter that has one on some rank. Every rank calls it
/// with the same parameter list.
pub fn backward_and_all_reduce<C: Communicator + ?Sized>(
    comm: &C,
    params: &[(String, Param)],
    last: Option<(&Var, Tensor)>,
    summed: &[Option<Tensor>],
) -> Result<(Gradients, OverlapStats)> {
    let on_cpu = params
        .iter()
        .all(|(_, p)| p.tensor().device() == Device::Cpu);
    let (walk, not_overlapped) = match (on_cpu, tensor::profiler::enabled()) {
        (false, _) => (Walk::Inline, None),
        (true, false) => (Walk::Helper, None),
        (true, true) => (Walk::Sequential, Some(NotOverlapped::Profiler)),
    };
    let (grads, mut stats) = run(comm, params, last, summed, BUCKET_CAP_BYTES, walk)?;
    if comm.world_size() > 1 {
        stats.not_overlapped = not_overlapped;
    }
    Ok((grads, stats))
}

/// How backward and the buckets' collectives run side by side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Walk {
    /// Backward on a helper thread, the collectives on the calling thread (CPU ranks).
    Helper,
    /// Backward on the calling thread, each bucket launched from the hook as it completes (GPU
    /// ranks: its sum runs on the communication stream).
    Inline,
    /// Backward, then the buckets.
    Sequential,
}

fn run<C: Communicator + ?Sized>(
    comm: &C,
    params: &[(String, Param)],
    last: Option<(&Var, Tensor)>,
    summed: &[Option<Tensor>],
    cap_bytes: usize,
    walk: Walk,
) -> Result<(Gradients, OverlapStats)> {
    if summed.len() != params.len() {
        bail!(
            OP,
            "{} running sums for {} parameters",
            summed.len(),
            params.len()
        );
    }
    let mut r = Reducer::new(comm, params, summed, cap_bytes)?;
    let Some((loss, seed)) = last else {
        return r.finish();
    };
    r.skip_unreached(&loss.grad_leaf_ids())?;
    if walk != Walk::Helper || r.world == 1 {
        let _phase = tensor::profiler::phase(tensor::profiler::Phase::Backward);
        let inline = walk == Walk::Inline && r.world > 1;
        loss.backward_with_hook(seed, &mut |v, g| {
            r.offer(v, g)?;
            match inline {
                true => r.launch_complete(&|| true),
                false => Ok(()),
            }
        })?;
        return r.finish();
    }
    let running = AtomicBool::new(true);
    let (tx, rx) = mpsc::channel::<(Var, Tensor)>();
    let backward = std::thread::scope(|s| {
        let walker = s.spawn(|| {
            let tx = tx;
            let out = loss.backward_with_hook(seed, &mut |v, g| {
                // A closed channel means the calling thread has failed: finish the walk anyway.
                let _ = tx.send((v.clone(), g.clone()));
                Ok(())
            });
            running.store(false, Ordering::SeqCst);
            out
        });
        let during = || running.load(Ordering::SeqCst);
        let mut failed = r.launch_complete(&during);
        for (v, g) in rx {
            if failed.is_err() {
                break;
            }
            failed = r.offer(&v, &g).and_then(|()| r.launch_complete(&during));
        }
        let walked = walker
            .join()
            .unwrap_or_else(|_| Err(tensor::Error::op(OP, "the backward thread panicked")));
        failed.and(walked)
    });
    backward?;
    r.finish()
}

/// The bucket plan and the gradients handed over so far.
struct Reducer<'a, C: ?Sized> {
    comm: &'a C,
    world: usize,
    /// Each parameter once (tied ones are listed twice in `params`): (var, running sum).
    unique: Vec<(Var, Option<Tensor>)>,
    index: HashMap<usize, usize>,
    /// Indices into `unique`, in launch order.
    buckets: Vec<Vec<usize>>,
    next: usize,
    /// Per unique parameter: its final local gradient, then its mean.
    ready: Vec<Option<Tensor>>,
    /// Per launched bucket: its sum, started, to finish.
    pending: Vec<PendingSum>,
    /// Per unique parameter: whether this rank has a gradient for it.
    present: Vec<bool>,
    stats: OverlapStats,
}

impl<'a, C: Communicator + ?Sized> Reducer<'a, C> {
    fn new(
        comm: &'a C,
        params: &[(String, Param)],
        summed: &[Option<Tensor>],
        cap_bytes: usize,
    ) -> Result<Self> {
        let mut unique: Vec<(Var, Option<Tensor>)> = Vec::new();
        let mut firsts: Vec<&Param> = Vec::new();
        let mut labels = Vec::new();
        for ((name, p), s) in params.iter().zip(summed) {
            if !firsts.iter().any(|q| q.same(p)) {
                firsts.push(p);
                unique.push((p.var(), s.clone()));
                labels.push(format!("the gradient of {name}"));
            }
        }
        let world = comm.world_size();
        if world > 1 {
            let values: Vec<&Tensor> = unique.iter().map(|(v, _)| v.value()).collect();
            agree_on_shapes(comm, &labels, &values)?;
        }
        let order: Vec<usize> = (0..unique.len()).rev().collect();
        let items: Vec<_> = order
            .iter()
            .map(|&u| {
                (
                    unique[u].0.value().dtype(),
                    unique[u].0.value().elem_count(),
                )
            })
            .collect();
        let buckets = plan_buckets(&items, cap_bytes)
            .into_iter()
            .map(|b| b.into_iter().map(|i| order[i]).collect())
            .collect();
        let index = unique
            .iter()
            .enumerate()
            .map(|(u, (v, _))| (v.id(), u))
            .collect();
        let n = unique.len();
        Ok(Reducer {
            comm,
            world,
            unique,
            index,
            buckets,
            next: 0,
            ready: vec![None; n],
            pending: Vec::new(),
            present: vec![false; n],
            stats: OverlapStats::default(),
        })
    }

    /// `g`, the final gradient of leaf `v` in this backward pass (ignored unless `v` is one of
    /// the parameters), plus the parameter's running sum.
    fn offer(&mut self, v: &Var, g: &Tensor) -> Result<()> {
        let Some(&u) = self.index.get(&v.id()) else {
            return Ok(());
        };
        let want = self.unique[u].0.value().dtype();
        if g.dtype() != want {
            bail!(OP, "a {} gradient for a {want} parameter", g.dtype());
        }
        self.ready[u] = Some(match &self.unique[u].1 {
            Some(sum) => sum.add(g)?,
            None => g.clone(),
        });
        self.present[u] = true;
        Ok(())
    }

    /// The parameters `loss` does not depend on (outside `reached`) are final before backward:
    /// their running sum, or zeros.
    fn skip_unreached(&mut self, reached: &std::collections::HashSet<usize>) -> Result<()> {
        for u in 0..self.unique.len() {
            if !reached.contains(&self.unique[u].0.id()) {
                self.fill_in(u)?;
            }
        }
        Ok(())
    }

    /// Parameter `u`'s gradient when this backward gives none: its running sum, or zeros.
    fn fill_in(&mut self, u: usize) -> Result<()> {
        let (v, sum) = &self.unique[u];
        self.present[u] = sum.is_some();
        self.ready[u] = Some(match sum {
            Some(s) => s.clone(),
            None => {
                let t = v.value();
                Tensor::zeros(t.shape(), t.dtype(), t.device())?
            }
        });
        Ok(())
    }

    /// Launches the next buckets in plan order while each is complete; `during()`: whether
    /// backward is still running.
    fn launch_complete(&mut self, during: &dyn Fn() -> bool) -> Result<()> {
        while self.next < self.buckets.len()
            && self.buckets[self.next]
                .iter()
                .all(|&u| self.ready[u].is_some())
        {
            self.launch(during())?;
        }
        Ok(())
    }

    /// Starts the next bucket's sum over the ranks.
    fn launch(&mut self, during_backward: bool) -> Result<()> {
        let _phase = tensor::profiler::phase(tensor::profiler::Phase::Communication);
        let bucket = &self.buckets[self.next];
        let started = Instant::now();
        let refs: Vec<&Tensor> = bucket
            .iter()
            .map(|&u| self.ready[u].as_ref().expect("a complete bucket"))
            .collect();
        let bytes = refs
            .iter()
            .map(|t| (t.elem_count() * t.dtype().size_in_bytes()) as u64)
            .sum();
        self.pending
            .push(self.comm.start_all_reduce_sum_flat(&refs)?);
        self.stats.buckets.push(BucketRecord {
            tensors: bucket.len(),
            bytes,
            secs: started.elapsed().as_secs_f64(),
            during_backward,
        });
        self.next += 1;
        Ok(())
    }

    /// Finishes every launched bucket's sum, in launch order, and divides it by the world size.
    fn finish_sums(&mut self) -> Result<()> {
        for (k, pending) in std::mem::take(&mut self.pending).into_iter().enumerate() {
            let started = Instant::now();
            let sum = self.comm.finish_sum(pending)?;
            let bucket = &self.buckets[k];
            let shapes: Vec<&[usize]> = bucket
                .iter()
                .map(|&u| self.unique[u].0.value().shape())
                .collect();
            let means = views_of_mean(self.comm, sum, &shapes)?;
            for (&u, m) in bucket.iter().zip(means) {
                self.ready[u] = Some(m);
            }
            self.stats.buckets[k].secs += started.elapsed().as_secs_f64();
        }
        Ok(())
    }

    /// Backward has ended: fills in the gradients it did not give (the running sum, or zeros),
    /// launches the remaining buckets, and drops the gradients no rank has.
    fn finish(mut self) -> Result<(Gradients, OverlapStats)> {
        for u in 0..self.unique.len() {
            if self.ready[u].is_none() {
                self.fill_in(u)?;
            }
        }
        let mut anywhere = self.present.clone();
        if self.world > 1 {
            let _phase = tensor::profiler::phase(tensor::profiler::Phase::Communication);
            while self.next < self.buckets.len() {
                self.launch(false)?;
            }
            let mut words = vec![self.unique.len() as u64];
            words.extend(self.present.iter().map(|&p| p as u64));
            let all = self.comm.all_gather_host(words)?;
            if let Some(r) = (1..all.len()).find(|&r| all[r][0] != all[0][0]) {
                bail!(
                    OP,
                    "rank {r} has {} parameters, rank 0 has {}",
                    all[r][0],
                    all[0][0]
                );
            }
            for (u, a) in anywhere.iter_mut().enumerate() {
                *a = all.iter().any(|w| w.get(1 + u) == Some(&1));
            }
            self.finish_sums()?;
        }
        let mut grads = Gradients::default();
        for (u, g) in self.ready.into_iter().enumerate() {
            if let (true, Some(g)) = (anywhere[u], g) {
                grads.insert(&self.unique[u].0, g);
            }
        }
        Ok((grads, self.stats))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data_parallel::all_reduce_grads;
    use crate::data_parallel::tests::on_ranks;
    use tensor::DType;

    /// A chain of `depth` square layers, `x @ w0 @ w1 ...`, then the sum; w_unused takes no
    /// part, and w_tied is listed twice.
    struct Net {
        params: Vec<(String, Param)>,
    }

    impl Net {
        fn new(width: usize, depth: usize) -> Net {
            let mut params: Vec<(String, Param)> = (0..depth)
                .map(|i| {
                    let t =
                        tensor::testing::randn(&[width, width], 0.1, DType::F32, 100 + i as u64);
                    (format!("w{i}"), Param::new(t))
                })
                .collect();
            let unused = Param::new(tensor::testing::randn(&[3], 1.0, DType::F32, 7));
            params.push(("w_unused".into(), unused));
            let tied = params[0].1.clone();
            params.push(("w_tied".into(), tied));
            Net { params }
        }

        fn loss(&self, rank: usize, width: usize, depth: usize, micro: u64) -> Var {
            let x =
                tensor::testing::randn(&[256, width], 1.0, DType::F32, 10 * rank as u64 + micro);
            let mut h = Var::constant(x);
            for (_, p) in &self.params[..depth] {
                h = h.matmul(&p.var()).unwrap();
            }
            h.sum_all().unwrap()
        }
    }

    /// The seed gradient of a scalar loss.
    fn one(loss: &Var) -> Tensor {
        Tensor::ones(loss.shape(), loss.value().dtype(), loss.value().device()).unwrap()
    }

    fn bits(g: &Gradients, params: &[(String, Param)]) -> Vec<Option<Vec<u64>>> {
        params
            .iter()
            .map(|(_, p)| {
                g.get(&p.var()).map(|t| {
                    t.to_vec_f64()
                        .unwrap()
                        .iter()
                        .map(|x| x.to_bits())
                        .collect()
                })
            })
            .collect()
    }

    /// Two micro-batches (the first summed, the second through the overlapped reducer), on 3
    /// ranks: the same bits as backward, sums, then `all_reduce_grads`, whether backward runs on
    /// a helper thread, launches the buckets from its hook or runs before them; the last layer's
    /// bucket is launched while backward still runs (15 layers' backward are left after it).
    #[test]
    fn overlapped_equals_sequential_bit_for_bit_and_launches_during_backward() {
        let (width, depth, world) = (128, 16, 3);
        let results = on_ranks(world, |rank, comm| {
            let net = Net::new(width, depth);
            let first = net.loss(rank, width, depth, 1).backward().unwrap();
            let summed: Vec<Option<Tensor>> = net
                .params
                .iter()
                .map(|(_, p)| first.get(&p.var()).cloned())
                .collect();
            let second = net.loss(rank, width, depth, 2);
            // Sequential: plain backward, sums, then the post-backward all-reduce.
            let mut plain = second.backward().unwrap();
            let mut want = Gradients::default();
            for ((_, p), s) in net.params.iter().zip(&summed) {
                if let (Some(s), Some(g)) = (s, plain.remove(&p.var())) {
                    want.insert(&p.var(), s.add(&g).unwrap());
                }
            }
            all_reduce_grads(&comm, &net.params, &mut want).unwrap();
            // One layer per bucket.
            let cap = width * width * 4;
            let last = || Some((&second, one(&second)));
            let (got, stats) = run(&comm, &net.params, last(), &summed, cap, Walk::Helper).unwrap();
            let (inline, inline_stats) =
                run(&comm, &net.params, last(), &summed, cap, Walk::Inline).unwrap();
            let (seq, seq_stats) =
                run(&comm, &net.params, last(), &summed, cap, Walk::Sequential).unwrap();
            (
                bits(&want, &net.params),
                bits(&got, &net.params),
                bits(&seq, &net.params),
                bits(&inline, &net.params),
                stats,
                seq_stats,
                inline_stats,
            )
        });
        for (want, got, seq, inline, stats, seq_stats, inline_stats) in &results {
            assert_eq!(got, want);
            assert_eq!(seq, want);
            assert_eq!(inline, want);
            // Inline: every bucket is launched from the hook, inside the backward walk.
            assert_eq!(inline_stats.buckets.len(), depth + 1);
            assert!(inline_stats.buckets.iter().all(|b| b.during_backward));
            assert_eq!(want, &results[0].0, "ranks differ");
            assert!(
                want[depth].is_none(),
                "the unused parameter has no gradient"
            );
            // depth layers and the unused vector, each a bucket of its own.
            assert_eq!(stats.buckets.len(), depth + 1);
            // Bucket 0 is the unused vector (final before backward), bucket 1 the last layer.
            assert!(stats.buckets[1].during_backward, "{stats:?}");
            assert!(seq_stats.buckets.iter().all(|b| !b.during_backward));
            assert_eq!(stats.bytes(), seq_stats.bytes());
        }
    }

    /// A rank with nothing to compute (no loss) joins the same collectives with its sums.
    #[test]
    fn an_idle_rank_contributes_its_sums() {
        let (width, depth) = (8, 3);
        let results = on_ranks(2, |rank, comm| {
            let net = Net::new(width, depth);
            let summed = vec![None; net.params.len()];
            let loss = net.loss(rank, width, depth, 1);
            let (g, _) = run(
                &comm,
                &net.params,
                (rank == 0).then(|| (&loss, one(&loss))),
                &summed,
                64,
                Walk::Helper,
            )
            .unwrap();
            let own = loss.backward().unwrap();
            (
                bits(&g, &net.params),
                own.get(&net.params[0].1.var())
                    .unwrap()
                    .to_vec_f64()
                    .unwrap(),
            )
        });
        assert_eq!(results[0].0, results[1].0);
        let mean: Vec<u64> = results[0]
            .1
            .iter()
            .map(|x| ((x / 2.0) as f32 as f64).to_bits())
            .collect();
        assert_eq!(results[0].0[0].as_ref().unwrap(), &mean);
    }
}
