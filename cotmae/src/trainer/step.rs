//! One optimizer step, as the HF Trainer (4.17) takes it:
//!
//! 1. for each of `gradient_accumulation_steps` micro-batches: upload it to the run's device,
//!    forward (under the precision's autocast), multiply the loss by the loss scale (fp16) and
//!    divide it by the accumulation count (when > 1), backward, add the gradients to the running
//!    sums;
//! 2. unscale the summed gradients (fp16), clip them to a global L2 norm of `max_grad_norm` (when
//!    > 0) and keep the norm before clipping (what newer HF versions log as `grad_norm`);
//! 3. fp16 only: when a gradient overflowed, the loss scaler halves its scale and the step is
//!    skipped (no AdamW update, the schedule does not advance; the step still counts, as in HF);
//! 4. one AdamW update at the schedule's current learning rate, then advance the schedule.
//!
//! The step's losses are the means of its micro-batch losses (HF accumulates
//! `loss / gradient_accumulation_steps`), unscaled. They are summed on the run's device and not
//! read by the step ([`StepStats::losses`]): the loop reads them on its logging steps, so a GPU
//! step does not wait for the device to report them. A non-finite gradient norm on a step that is
//! not skipped stops training with an error naming the step (the run has diverged).
//!
//! Data parallel (`comm` with `world > 1` ranks): every micro-batch the loader gives is the
//! *global* micro-batch (`world x per_device_train_batch_size` documents); rank `r` keeps its
//! documents `r*n/world .. (r+1)*n/world` ([`shard`]) and draws their rows of the global batch's
//! dropout masks (`nn::BatchRows`), so its forward computes exactly what one process computes for
//! those rows. Each MLM loss is a mean over its labelled positions, which differ between shards,
//! so rank `r` weights its encoder (decoder) loss by `world * labelled_r / labelled_global` (the
//! counts are on the host: every rank has the global batch): the mean over ranks of the weighted
//! losses, which the gradient all-reduce computes, is then exactly the loss of the whole global
//! micro-batch, and N ranks train as one rank with the global batch does. After the
//! micro-batches only sum their gradients (as DDP under `no_sync`); the last one's backward goes
//! through `nn::backward_and_all_reduce`, which averages the summed gradients over the ranks in
//! buckets, each launched as soon as its gradients are final while backward goes on, so the clipping norm, the fp16 skip
//! decision and the AdamW update are the same on every rank. Each rank's logged losses are its
//! weighted losses divided by `world`, kept on the device like one rank's; [`read_losses`] sums
//! them over the ranks (one small all-reduce) when the loop reads them, on logging steps only.

use std::ops::Range;

use autograd::Var;
use nn::{step_params, unscale_and_clip, AdamW, Ctx, LossScaler, LrSchedule, Param, Precision};
use nn::{BatchRows, Communicator, OverlapStats, StepDecision, StepGrads};
use tensor::profiler::{self, Phase};
use tensor::{DType, Device, Tensor};

use super::loader::{LoadedBatch, LoaderState};
use super::state::LossSums;
use crate::collator::{labelled, CotMaeBatch};
use crate::model::{BertForCotMAE, CotMaeOutput};
use crate::{Error, Result};

/// The optimizer, its schedule and the step's settings.
pub struct Optimization {
    pub opt: AdamW,
    pub sched: LrSchedule,
    /// 0: no clipping.
    pub max_grad_norm: f64,
    /// Micro-batches per step (>= 1).
    pub accumulation: usize,
    /// Where the model is; batches are uploaded there.
    pub device: Device,
    pub precision: Precision,
    /// Enabled for fp16 only (scale 1 and every step applied otherwise).
    pub scaler: LossScaler,
}

/// What one step did.
pub struct StepStats {
    /// `steps` is 1 and `sequences` counted; the losses are in `losses` (0 here).
    pub sums: LossSums,
    /// Each micro-batch's (loss, encoder MLM loss, head MLM loss or 0), `[micro-batches, 3]` on
    /// the run's device: [`read_losses`] reads them.
    pub losses: Tensor,
    /// The global gradient norm before clipping, f64 `[1]` on the run's device.
    pub grad_norm: Tensor,
    /// The learning rate the update used.
    pub lr: f64,
    /// The loader's position after the step's last micro-batch.
    pub loader: LoaderState,
    /// fp16: the gradients overflowed and the update was skipped.
    pub skipped: bool,
    /// Data parallel: what this rank's gradient all-reduce did (its buckets' bytes and seconds,
    /// waiting for the other ranks included; none with one rank; on a GPU the call only queues
    /// NCCL's work, so the seconds are the host's share).
    pub comm: OverlapStats,
}

/// Each parameter once (tied weights are one `Param`), in state-dict order.
pub fn unique_params(model: &BertForCotMAE) -> Vec<(String, Param)> {
    let mut out: Vec<(String, Param)> = Vec::new();
    for (name, p) in nn::Module::named_params(model) {
        if !out.iter().any(|(_, q)| q.same(&p)) {
            out.push((name, p));
        }
    }
    out
}

/// Rank `rank`'s documents of a global micro-batch of `docs` over `world` ranks (uneven when the
/// epoch's last batch does not split evenly; possibly empty).
pub fn shard(docs: usize, rank: usize, world: usize) -> Range<usize> {
    docs * rank / world..docs * (rank + 1) / world
}

/// `world * local / global` (1 when nothing is labelled anywhere: the loss is then 0).
fn weight(local: usize, global: usize, world: usize) -> f64 {
    if global == 0 {
        1.0
    } else {
        (world * local) as f64 / global as f64
    }
}

/// This rank's part of a global micro-batch: the batch to compute, the rows of the global batch
/// it is (None: the whole batch) and its loss weights (encoder, decoder); None when its shard is
/// empty.
type Shard = (CotMaeBatch, Option<BatchRows>, (f64, f64));

fn rank_shard(
    batch: CotMaeBatch,
    global_docs: usize,
    rank: usize,
    world: usize,
) -> Result<Option<Shard>> {
    if world == 1 {
        return Ok(Some((batch, None, (1.0, 1.0))));
    }
    let docs = shard(global_docs, rank, world);
    if docs.is_empty() {
        return Ok(None);
    }
    // Documents a..b are rows 2a..2b (anchor and context side by side).
    let rows = 2 * docs.start..2 * docs.end;
    let local = batch.rows(rows.clone())?;
    let weights = (
        weight(labelled(&local.labels)?, labelled(&batch.labels)?, world),
        weight(
            labelled(&local.decoder_labels)?,
            labelled(&batch.decoder_labels)?,
            world,
        ),
    );
    let part = BatchRows::new(rows.start, rows.len(), 2 * global_docs)?;
    Ok(Some((local, Some(part), weights)))
}

/// The loss to backpropagate (the weighted shard loss of the module doc times `factor`) and the
/// `[1, 3]` row of (loss, encoder MLM loss, head MLM loss) this rank contributes to the logged
/// means, on the device; with one rank, the model's own loss and losses.
fn shard_loss(
    model: &BertForCotMAE,
    out: &CotMaeOutput,
    (we, wh): (f64, f64),
    world: usize,
    factor: f64,
) -> Result<(Var, Tensor)> {
    let device = out.loss.value().device();
    let head = match &out.head_mlm_loss {
        Some(h) => h.value().clone(),
        None => Tensor::zeros(&[], DType::F32, device)?,
    };
    let row = |l: &Tensor, e: &Tensor, h: &Tensor| -> Result<Tensor> {
        let [l, e, h] = [l, e, h].map(|t| t.to_dtype(DType::F32).and_then(|t| t.reshape(&[1, 1])));
        Ok(Tensor::cat(&[&l?, &e?, &h?], 1)?)
    };
    if world == 1 {
        let scaled = match factor {
            1.0 => out.loss.clone(),
            f => out.loss.mul_scalar(f)?,
        };
        let logged = row(out.loss.value(), out.encoder_mlm_loss.value(), &head)?;
        return Ok((scaled, logged));
    }
    let coef = model.args.head_mlm_coef;
    let mut scaled = out.encoder_mlm_loss.mul_scalar(factor * we)?;
    if let Some(h) = &out.head_mlm_loss {
        scaled = scaled.add(&h.mul_scalar(factor * coef * wh)?)?;
    }
    let enc = out.encoder_mlm_loss.value().mul_scalar(we / world as f64)?;
    let head = head.mul_scalar(wh / world as f64)?;
    let loss = enc.add(&head.mul_scalar(coef)?)?;
    Ok((scaled, row(&loss, &enc, &head)?))
}

/// Optimizer step number `step` (1-based, for messages) as rank `comm.rank()` of
/// `comm.world_size()`; see the module doc.
pub fn train_step(
    model: &BertForCotMAE,
    params: &[(String, Param)],
    ctx: &mut Ctx,
    next_batch: &mut dyn FnMut() -> Result<LoadedBatch>,
    o: &mut Optimization,
    step: u64,
    comm: &dyn Communicator,
) -> Result<StepStats> {
    let _profiled = profiler::step(step);
    let (rank, world) = (comm.rank(), comm.world_size());
    let ga = o.accumulation.max(1);
    // The micro-batches' gradients are summed; the last one's backward all-reduces the sums as
    // its gradients become final (the earlier ones only sum, as DDP under `no_sync`).
    let mut step_grads = StepGrads::new(params, true);
    let mut sums = LossSums {
        steps: 1,
        ..LossSums::default()
    };
    let mut loader = None;
    let mut losses: Vec<Tensor> = Vec::with_capacity(ga);
    // HF scales the loss by 1/ga, then by the loss scale; the scale is a power of two, so one
    // multiplication by scale/ga gives the same number (and 1/ga alone when not scaling).
    let factor = o.scaler.scale() as f64 / ga as f64;
    // Data parallel: whether a rank had nothing to compute in some micro-batch (its generator
    // then did not move on with the others').
    let mut idle_rank = false;
    for m in 0..ga {
        let item = profiler::in_phase(Phase::Data, &mut *next_batch)?;
        sums.sequences += 2 * item.docs as u64;
        loader = Some(item.state);
        idle_rank |= world > 1 && item.docs < world;
        let Some((local, rows, weights)) = rank_shard(item.batch, item.docs, rank, world)? else {
            // Nothing to compute: this rank adds zero gradients and zero losses to the sums.
            losses.push(Tensor::zeros(&[1, 3], DType::F32, o.device)?);
            continue;
        };
        let batch = profiler::in_phase(Phase::Data, || local.to_device(o.device))?;
        ctx.rows = rows;
        let out = profiler::in_phase(Phase::Forward, || {
            o.precision.autocast(|| model.forward(&batch, ctx))
        });
        ctx.rows = None;
        let out = out?;
        let (scaled, logged) = shard_loss(model, &out, weights, world, factor)?;
        losses.push(logged);
        step_grads.backward(comm, &scaled, None, m + 1 == ga)?;
    }
    let loader = loader.expect("at least one micro-batch");
    let losses = Tensor::cat(&losses.iter().collect::<Vec<_>>(), 0)?;
    // A rank idle in the last micro-batch joins the all-reduce here, the others already have
    // (the same collectives in the same order on every rank).
    let (mut grads, comm_stats) = step_grads.finish(comm)?;
    if idle_rank {
        // Every rank that computed moved its generator as one process would; an idle one did not.
        let at = comm.all_gather_host(vec![ctx.rng.offset])?;
        ctx.rng.offset = at.iter().map(|w| w[0]).max().unwrap_or(ctx.rng.offset);
    }
    let mut with_grad: Vec<(usize, Tensor)> = params
        .iter()
        .enumerate()
        .filter_map(|(i, (_, p))| Some((i, grads.remove(&p.var())?)))
        .collect();
    let mut refs: Vec<&mut Tensor> = with_grad.iter_mut().map(|(_, g)| g).collect();
    let (grad_norm, decision) = if o.precision == Precision::F16 {
        // The scaler decides on the host whether the step applies.
        let (norm, decision) = unscale_and_clip(&mut o.scaler, &mut refs, o.max_grad_norm)?;
        if decision == StepDecision::Apply && !norm.is_finite() {
            return Err(diverged(step, norm, &losses, comm));
        }
        (
            Tensor::from_vec(vec![norm], &[1])?.to_device(o.device)?,
            decision,
        )
    } else {
        // Decided on the device; a non-finite norm is reported when the losses are read.
        let max = match o.max_grad_norm {
            m if m > 0.0 => m,
            _ => f64::INFINITY, // no clipping: the factor is 1
        };
        let norm = nn::clip_grad_norm_deferred(&mut refs, max)?.reshape(&[1])?;
        (norm, StepDecision::Apply)
    };
    let lr = o.sched.lr();
    if decision == StepDecision::Skip {
        return Ok(StepStats {
            sums,
            losses,
            grad_norm,
            lr,
            loader,
            skipped: true,
            comm: comm_stats,
        });
    }
    for (i, g) in with_grad {
        grads.insert(&params[i].1.var(), g);
    }
    step_params(&mut o.opt, lr, params, &grads)?;
    o.sched.advance();
    Ok(StepStats {
        sums,
        losses,
        grad_norm,
        lr,
        loader,
        skipped: false,
        comm: comm_stats,
    })
}

/// The error of a step whose gradient norm is not finite (the run has diverged); `losses` is
/// the step's `[micro-batches, 3]` device losses (summed over the ranks of `comm`).
fn diverged(step: u64, norm: f64, losses: &Tensor, comm: &dyn Communicator) -> Error {
    let mut sums = LossSums::default();
    let zero = Tensor::from_vec(vec![0f64], &[1]).and_then(|z| z.to_device(losses.device()));
    let read = zero
        .map_err(Error::from)
        .and_then(|z| read_losses(&mut [(&mut sums, losses, &z)], comm));
    let loss = match read {
        Ok(_) => sums.loss,
        Err(e) => return e,
    };
    Error::Config(format!(
        "step {step}: the gradient norm is {norm} (loss {loss}): training diverged; try a lower \
         --learning_rate"
    ))
}

/// Reads what several steps left on the device (their [`StepStats::losses`] and `grad_norm`)
/// with one download of each, writes each step's losses into its sums (the mean over its
/// micro-batches, summed in f64 in order: the numbers reading each at once gives) and returns
/// each step's gradient norm; the trainer then stops at the first step that applied a non-finite
/// norm ([`check_norms`]). With several ranks every rank calls it at the same steps: each rank's
/// losses are its shares of the global ones (module doc), summed over the ranks here in one
/// all-reduce; the gradient norms are already the same on every rank.
pub fn read_losses(
    steps: &mut [(&mut LossSums, &Tensor, &Tensor)],
    comm: &dyn Communicator,
) -> Result<Vec<f64>> {
    if steps.is_empty() {
        return Ok(Vec::new());
    }
    let losses: Vec<&Tensor> = steps.iter().map(|(_, l, _)| *l).collect();
    let norms: Vec<&Tensor> = steps.iter().map(|(_, _, n)| *n).collect();
    let mut losses = Tensor::cat(&losses, 0)?;
    if comm.world_size() > 1 {
        losses = comm.all_reduce_sum_flat(&[&losses])?;
    }
    let values = losses.to_vec_f64()?;
    let norms = Tensor::cat(&norms, 0)?.to_vec_f64()?;
    let mut at = 0;
    for (sums, l, _) in steps.iter_mut() {
        let micro = l.shape()[0];
        let ga = micro as f64;
        let (mut loss, mut enc, mut head) = (0.0, 0.0, 0.0);
        for v in values[3 * at..3 * (at + micro)].chunks_exact(3) {
            loss += v[0] / ga;
            enc += v[1] / ga;
            head += v[2] / ga;
        }
        (sums.loss, sums.encoder_mlm_loss, sums.head_mlm_loss) = (loss, enc, head);
        at += micro;
    }
    Ok(norms)
}

/// The error for the first of `steps` (step number, applied, losses, norm) that applied a
/// non-finite gradient norm: the run has diverged.
pub fn check_norms(steps: &[(u64, bool, &LossSums, f64)]) -> Result<()> {
    match steps
        .iter()
        .find(|(_, applied, _, n)| *applied && !n.is_finite())
    {
        None => Ok(()),
        Some((step, _, sums, norm)) => Err(Error::Config(format!(
            "step {step}: the gradient norm is {norm} (loss {}): training diverged; try a lower \
             --learning_rate",
            sums.loss
        ))),
    }
}
