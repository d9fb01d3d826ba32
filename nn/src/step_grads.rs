//! One optimizer step's gradients under data parallelism, as both trainers take them: the
//! running sums of the step's backward passes (micro-batches, and gradient-cache chunks), then
//! their mean over the ranks, the step's last backward pass overlapped with that all-reduce
//! (torch DDP: `no_sync` on the earlier passes, the bucketed reducer on the last).
//!
//! ```text
//! StepGrads::new(params, overlap)
//!   backward(loss_1, seed_1, last = false)   sums = g_1
//!   backward(loss_2, seed_2, last = false)   sums = g_1 + g_2
//!   backward(loss_k, seed_k, last = true)    each final gradient: sums + g_k -> its bucket's
//!                                            all-reduce, launched while backward goes on
//!   finish()                                 the mean over the ranks, and what it cost
//! ```
//!
//! Every backward's gradient is added to the running sum in the same order (`sum + g`) whether
//! the last one overlaps or not, so `overlap = false` (the sums, then [`all_reduce_grads`]) gives
//! the same bits, later. A rank that has nothing to compute in the step's last micro-batch calls
//! no `last` backward; `finish` then joins the same collectives with its sums. With one rank
//! there is no collective: `finish` returns the sums.
//!
//! [`CommTotals`] adds up what each step's all-reduce did, for the one line per run the trainers
//! print with more than one rank.

use crate::comm::Communicator;
use crate::overlap::{backward_and_all_reduce, BucketRecord, NotOverlapped, OverlapStats};
use crate::{all_reduce_grads, Param};
use autograd::{Gradients, Var};
use std::time::Instant;
use tensor::{bail, Result, Tensor};

/// The running gradient sums of one optimizer step (module docs).
pub struct StepGrads {
    params: Vec<(String, Param)>,
    /// One per entry of `params`.
    summed: Vec<Option<Tensor>>,
    overlap: bool,
    /// Set by the `last` backward pass when it all-reduced.
    reduced: Option<(Gradients, OverlapStats)>,
}

impl StepGrads {
    /// Empty sums for `params` (every rank passes the same list). `overlap`: the last backward
    /// pass overlaps the all-reduce; false: the all-reduce follows it ([`all_reduce_grads`]).
    pub fn new(params: &[(String, Param)], overlap: bool) -> StepGrads {
        StepGrads {
            params: params.to_vec(),
            summed: vec![None; params.len()],
            overlap,
            reduced: None,
        }
    }

    /// Back-propagates `seed` from `loss` (`seed` has `loss`'s shape; None: ones, for a scalar
    /// loss). `last`: the step's last
    /// backward pass on this rank; with more than one rank and overlap on, its gradients go
    /// through the overlapped all-reduce with the sums; otherwise they are added to the sums.
    pub fn backward<C: Communicator + ?Sized>(
        &mut self,
        comm: &C,
        loss: &Var,
        seed: Option<Tensor>,
        last: bool,
    ) -> Result<()> {
        if self.reduced.is_some() {
            bail!(
                "StepGrads::backward",
                "a backward pass after the step's last"
            );
        }
        let seed = match seed {
            Some(s) => s,
            None => {
                let _phase = tensor::profiler::phase(tensor::profiler::Phase::Backward);
                let v = loss.value();
                Tensor::ones(v.shape(), v.dtype(), v.device())?
            }
        };
        if last && self.overlap && comm.world_size() > 1 {
            let reduced =
                backward_and_all_reduce(comm, &self.params, Some((loss, seed)), &self.summed)?;
            self.reduced = Some(reduced);
            return Ok(());
        }
        let grads = {
            let _phase = tensor::profiler::phase(tensor::profiler::Phase::Backward);
            loss.backward_with(seed)?
        };
        self.add(&grads)
    }

    /// Adds `grads` (keyed by the parameters' vars) to the running sums.
    fn add(&mut self, grads: &Gradients) -> Result<()> {
        for ((_, p), slot) in self.params.iter().zip(self.summed.iter_mut()) {
            if let Some(g) = grads.get(&p.var()) {
                *slot = Some(match slot.take() {
                    None => g.clone(),
                    Some(acc) => acc.add(g)?,
                });
            }
        }
        Ok(())
    }

    /// The step's gradients averaged over the ranks of `comm` (the sums with one rank), and what
    /// the all-reduce did.
    pub fn finish<C: Communicator + ?Sized>(self, comm: &C) -> Result<(Gradients, OverlapStats)> {
        if let Some(reduced) = self.reduced {
            return Ok(reduced);
        }
        if comm.world_size() > 1 && self.overlap {
            return backward_and_all_reduce(comm, &self.params, None, &self.summed);
        }
        let mut grads = Gradients::default();
        for ((_, p), g) in self.params.iter().zip(self.summed) {
            if let Some(g) = g {
                grads.insert(&p.var(), g);
            }
        }
        let mut stats = OverlapStats::default();
        if comm.world_size() > 1 {
            let started = Instant::now();
            all_reduce_grads(comm, &self.params, &mut grads)?;
            let (tensors, bytes) = grads_size(&self.params, &grads);
            stats.buckets.push(BucketRecord {
                tensors,
                bytes,
                secs: started.elapsed().as_secs_f64(),
                during_backward: false,
            });
            stats.not_overlapped = Some(NotOverlapped::Off);
        }
        Ok((grads, stats))
    }
}

/// The number and bytes of the gradients of `params` in `grads` (each parameter once).
fn grads_size(params: &[(String, Param)], grads: &Gradients) -> (usize, u64) {
    let mut seen: Vec<&Param> = Vec::new();
    let (mut n, mut bytes) = (0, 0);
    for (_, p) in params {
        if seen.iter().any(|q| q.same(p)) {
            continue;
        }
        seen.push(p);
        if let Some(g) = grads.get(&p.var()) {
            n += 1;
            bytes += (g.elem_count() * g.dtype().size_in_bytes()) as u64;
        }
    }
    (n, bytes)
}

/// What the all-reduces of a run's steps did, added up.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CommTotals {
    pub steps: u64,
    /// Gradient bytes all-reduced.
    pub bytes: u64,
    /// Seconds in the collectives (waiting for the other ranks included).
    pub secs: f64,
    /// The part of `secs` in buckets launched while a backward pass was still running.
    pub overlapped_secs: f64,
    /// Why some step's backward did not overlap its all-reduce (the last reason seen).
    pub not_overlapped: Option<NotOverlapped>,
}

impl CommTotals {
    /// Adds one step's all-reduce.
    pub fn add(&mut self, stats: &OverlapStats) {
        self.steps += 1;
        self.bytes += stats.bytes();
        self.secs += stats.comm_secs();
        self.overlapped_secs += stats.overlapped_secs();
        self.not_overlapped = stats.not_overlapped.or(self.not_overlapped);
    }

    /// The run's line: per step, the bytes all-reduced, the time in the all-reduce and its share
    /// of `runtime_secs`, and the share of that time overlapping the backward pass (or why none
    /// did).
    pub fn line(&self, world: usize, runtime_secs: f64) -> String {
        let steps = self.steps.max(1);
        let overlap = match self.not_overlapped {
            Some(why) if self.overlapped_secs == 0.0 => {
                format!("not overlapped with the backward pass ({why})")
            }
            _ => format!(
                "{:.1}% of it launched while the backward pass was still running",
                100.0 * self.overlapped_secs / self.secs.max(f64::MIN_POSITIVE)
            ),
        };
        format!(
            "data parallel: {world} ranks; per step {} bytes of gradients all-reduced, {:.1} ms \
             in the all-reduce (waiting for the other ranks included; {:.1}% of the step time), \
             {overlap}",
            self.bytes / steps,
            1e3 * self.secs / steps as f64,
            100.0 * self.secs / runtime_secs.max(1e-9),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data_parallel::tests::on_ranks;
    use tensor::DType;

    /// Two layers `x @ w0 @ w1`, summed, on rank-dependent inputs.
    fn params() -> Vec<(String, Param)> {
        (0..2)
            .map(|i| {
                let t = tensor::testing::randn(&[16, 16], 0.3, DType::F32, 40 + i);
                (format!("w{i}"), Param::new(t))
            })
            .collect()
    }

    fn loss(params: &[(String, Param)], rank: usize, micro: u64) -> (Var, Option<Tensor>) {
        let x = tensor::testing::randn(&[8, 16], 1.0, DType::F32, 10 * rank as u64 + micro);
        let mut h = Var::constant(x);
        for (_, p) in params {
            h = h.matmul(&p.var()).unwrap();
        }
        let l = h.sum_all().unwrap();
        // Half the losses with an explicit seed (ones), half with the default.
        let seed = (micro % 2 == 1)
            .then(|| Tensor::ones(l.shape(), DType::F32, l.value().device()).unwrap());
        (l, seed)
    }

    fn bits(g: &Gradients, params: &[(String, Param)]) -> Vec<Vec<u64>> {
        params
            .iter()
            .map(|(_, p)| {
                let t = g.get(&p.var()).unwrap().to_vec_f64().unwrap();
                t.iter().map(|x| x.to_bits()).collect()
            })
            .collect()
    }

    /// The run's line: per-step means, and why nothing overlapped (CPU ranks with the profiler
    /// on) when nothing did.
    #[test]
    fn the_line_gives_per_step_means_and_says_why_nothing_overlapped() {
        let step = |during_backward: bool, not_overlapped| OverlapStats {
            buckets: vec![BucketRecord {
                tensors: 2,
                bytes: 800,
                secs: 0.5,
                during_backward,
            }],
            not_overlapped,
        };
        let mut t = CommTotals::default();
        t.add(&step(false, Some(NotOverlapped::Profiler)));
        t.add(&step(false, Some(NotOverlapped::Profiler)));
        assert_eq!(
            t.line(4, 10.0),
            "data parallel: 4 ranks; per step 800 bytes of gradients all-reduced, 500.0 ms in the \
             all-reduce (waiting for the other ranks included; 10.0% of the step time), not \
             overlapped with the backward pass (the profiler is on)"
        );
        t.add(&step(true, None));
        assert!(t
            .line(4, 10.0)
            .ends_with(", 33.3% of it launched while the backward pass was still running"));
    }

    /// Three backward passes a step on 2 ranks: overlapped and after-backward give the same
    /// bits, the line names each; one rank returns the plain sums.
    #[test]
    fn overlapped_and_after_backward_steps_agree_bit_for_bit() {
        let results = on_ranks(2, |rank, comm| {
            let ps = params();
            let mut out = Vec::new();
            for overlap in [true, false] {
                let mut sg = StepGrads::new(&ps, overlap);
                for m in 0..3 {
                    let (l, seed) = loss(&ps, rank, m);
                    sg.backward(&comm, &l, seed, m == 2).unwrap();
                }
                let (g, stats) = sg.finish(&comm).unwrap();
                let mut totals = CommTotals::default();
                totals.add(&stats);
                out.push((bits(&g, &ps), totals.line(2, 1.0)));
            }
            out
        });
        for per_rank in &results {
            assert_eq!(per_rank[0].0, per_rank[1].0, "overlapped vs after backward");
            assert_eq!(per_rank[0].0, results[0][0].0, "ranks differ");
            assert!(
                per_rank[0].1.contains("2 ranks; per step 2048 bytes"),
                "{}",
                per_rank[0].1
            );
            assert!(per_rank[1].1.contains("(turned off)"), "{}", per_rank[1].1);
        }
        let ps = params();
        let mut sg = StepGrads::new(&ps, true);
        let mut want: Option<Vec<f64>> = None;
        for m in 0..2 {
            let (l, seed) = loss(&ps, 0, m);
            let g = l
                .backward()
                .unwrap()
                .get(&ps[0].1.var())
                .unwrap()
                .to_vec_f64()
                .unwrap();
            want = Some(match want {
                None => g,
                Some(w) => w
                    .iter()
                    .zip(&g)
                    .map(|(a, b)| (*a as f32 + *b as f32) as f64)
                    .collect(),
            });
            sg.backward(&crate::SingleProcess, &l, seed, m == 1)
                .unwrap();
        }
        let (g, stats) = sg.finish(&crate::SingleProcess).unwrap();
        assert_eq!(
            g.get(&ps[0].1.var()).unwrap().to_vec_f64().unwrap(),
            want.unwrap()
        );
        assert!(stats.buckets.is_empty());
        // Nothing may follow the step's last backward pass.
        let errs = on_ranks(2, |rank, comm| {
            let mut sg = StepGrads::new(&ps, true);
            let (l, seed) = loss(&ps, rank, 0);
            sg.backward(&comm, &l, seed.clone(), true).unwrap();
            sg.backward(&comm, &l, seed, false).unwrap_err().to_string()
        });
        assert!(errs[0].contains("after the step's last"), "{}", errs[0]);
    }
}
