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
//! `loss / gradient_accumulation_steps`), unscaled. A non-finite gradient norm on a step that is
//! not skipped stops training with an error naming the step (the run has diverged).
//!
//! Data parallel (`comm` with `world > 1` ranks): every micro-batch the loader gives is the
//! *global* micro-batch (`world x per_device_train_batch_size` documents); rank `r` keeps its
//! documents `r*n/world .. (r+1)*n/world` ([`shard`]). Each MLM loss is a mean over its labelled
//! positions, which differ between shards, so rank `r` weights its encoder (decoder) loss by
//! `world * labelled_r / labelled_global`: the mean over ranks of the weighted losses, which the
//! gradient all-reduce computes, is then exactly the loss of the whole global micro-batch, and N
//! ranks train as one rank with the global batch does. After the micro-batches,
//! `nn::all_reduce_grads` averages the summed gradients over the ranks (one all-reduce per
//! optimizer step, as DDP under `no_sync`), so the clipping norm, the fp16 skip decision and the
//! AdamW update are the same on every rank. The logged losses are the sums over ranks of the
//! weighted losses (`nn::comm::host::sum_f64`, in rank order).

use std::ops::Range;

use autograd::{Gradients, Var};
use nn::comm::host::sum_f64;
use nn::{all_reduce_grads, Communicator, StepDecision};
use nn::{step_params, unscale_and_clip, AdamW, Ctx, LossScaler, LrSchedule, Param, Precision};
use tensor::{Device, Tensor};

use super::loader::{LoadedBatch, LoaderState};
use super::state::LossSums;
use crate::collator::labelled;
use crate::model::{loss_values, BertForCotMAE, CotMaeOutput};
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
    /// `steps` is 1; the losses are the micro-batch means.
    pub sums: LossSums,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    /// The learning rate the update used.
    pub lr: f64,
    /// The loader's position after the step's last micro-batch.
    pub loader: LoaderState,
    /// fp16: the gradients overflowed and the update was skipped.
    pub skipped: bool,
    /// Data parallel: bytes this rank all-reduced (gradients) and seconds it spent in the
    /// all-reduce, waiting for the other ranks included (0 with one rank).
    pub comm_bytes: u64,
    pub comm_secs: f64,
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

/// One rank's part of a global micro-batch: its loss to backpropagate (already multiplied by
/// `factor`), and its contributions to the logged `(loss, encoder, head)` means.
struct ShardLoss {
    scaled: Var,
    logged: [f64; 3],
}

/// The weighted loss of this rank's shard (module doc); with one rank, the model's own loss.
fn shard_loss(
    model: &BertForCotMAE,
    out: &CotMaeOutput,
    weights: (f64, f64),
    world: usize,
    factor: f64,
) -> Result<ShardLoss> {
    let (loss, enc, head) = loss_values(out)?;
    if world == 1 {
        let scaled = if factor != 1.0 {
            out.loss.mul_scalar(factor)?
        } else {
            out.loss.clone()
        };
        return Ok(ShardLoss {
            scaled,
            logged: [loss, enc, head.unwrap_or(0.0)],
        });
    }
    let coef = model.args.head_mlm_coef;
    let (we, wh) = weights;
    let mut scaled = out.encoder_mlm_loss.mul_scalar(factor * we)?;
    if let Some(h) = &out.head_mlm_loss {
        scaled = scaled.add(&h.mul_scalar(factor * coef * wh)?)?;
    }
    let (enc, head) = (
        enc * we / world as f64,
        head.unwrap_or(0.0) * wh / world as f64,
    );
    Ok(ShardLoss {
        scaled,
        logged: [enc + coef * head, enc, head],
    })
}

/// Optimizer step number `step` (1-based, for messages); see the module doc.
pub fn train_step(
    model: &BertForCotMAE,
    params: &[(String, Param)],
    ctx: &mut Ctx,
    next_batch: &mut dyn FnMut() -> Result<LoadedBatch>,
    o: &mut Optimization,
    step: u64,
    comm: &dyn Communicator,
) -> Result<StepStats> {
    let (rank, world) = (comm.rank(), comm.world_size());
    let ga = o.accumulation.max(1);
    let mut summed: Vec<Option<Tensor>> = vec![None; params.len()];
    let mut sums = LossSums {
        steps: 1,
        ..LossSums::default()
    };
    let mut logged = [0f64; 3];
    let mut loader = None;
    // HF scales the loss by 1/ga, then by the loss scale; the scale is a power of two, so one
    // multiplication by scale/ga gives the same number (and 1/ga alone when not scaling).
    let factor = o.scaler.scale() as f64 / ga as f64;
    for _ in 0..ga {
        let item = next_batch()?;
        sums.sequences += 2 * item.docs as u64;
        loader = Some(item.state);
        let docs = shard(item.docs, rank, world);
        if docs.is_empty() {
            // Nothing to compute: this rank adds zero gradients to the mean.
            continue;
        }
        let (local, weights) = if world == 1 {
            (item.batch, (1.0, 1.0))
        } else {
            let local = item.batch.rows(2 * docs.start..2 * docs.end)?;
            let weights = (
                weight(
                    labelled(&local.labels)?,
                    labelled(&item.batch.labels)?,
                    world,
                ),
                weight(
                    labelled(&local.decoder_labels)?,
                    labelled(&item.batch.decoder_labels)?,
                    world,
                ),
            );
            (local, weights)
        };
        let batch = local.to_device(o.device)?;
        let out = o.precision.autocast(|| model.forward(&batch, ctx))?;
        let ShardLoss { scaled, logged: l } = shard_loss(model, &out, weights, world, factor)?;
        let grads = scaled.backward()?;
        drop((out, scaled, batch));
        for ((_, p), slot) in params.iter().zip(summed.iter_mut()) {
            if let Some(g) = grads.get(&p.var()) {
                *slot = Some(match slot.take() {
                    None => g.clone(),
                    Some(acc) => acc.add(g)?,
                });
            }
        }
        for (s, v) in logged.iter_mut().zip(l) {
            *s += v / ga as f64;
        }
    }
    let loader = loader.expect("at least one micro-batch");
    let [loss, enc, head] = sum_f64(comm, &logged)?[..] else {
        unreachable!("three values in, three out")
    };
    (sums.loss, sums.encoder_mlm_loss, sums.head_mlm_loss) = (loss, enc, head);

    let mut grads = Gradients::default();
    for ((_, p), g) in params.iter().zip(summed) {
        if let Some(g) = g {
            grads.insert(&p.var(), g);
        }
    }
    let started = std::time::Instant::now();
    let comm_bytes = match world {
        1 => 0,
        _ => params
            .iter()
            .filter_map(|(_, p)| grads.get(&p.var()))
            .map(|g| (g.elem_count() * g.dtype().size_in_bytes()) as u64)
            .sum(),
    };
    all_reduce_grads(comm, params, &mut grads)?;
    let comm_secs = started.elapsed().as_secs_f64() * (world > 1) as u8 as f64;
    let mut with_grad: Vec<(usize, Tensor)> = params
        .iter()
        .enumerate()
        .filter_map(|(i, (_, p))| Some((i, grads.remove(&p.var())?)))
        .collect();
    let mut refs: Vec<&mut Tensor> = with_grad.iter_mut().map(|(_, g)| g).collect();
    let (grad_norm, decision) = unscale_and_clip(&mut o.scaler, &mut refs, o.max_grad_norm)?;
    let lr = o.sched.lr();
    if decision == StepDecision::Skip {
        return Ok(StepStats {
            sums,
            grad_norm,
            lr,
            loader,
            skipped: true,
            comm_bytes,
            comm_secs,
        });
    }
    if !grad_norm.is_finite() {
        return Err(Error::Config(format!(
            "step {step}: the gradient norm is {grad_norm} (loss {}): training diverged; try a \
             lower --learning_rate",
            sums.loss
        )));
    }
    for (i, g) in with_grad {
        grads.insert(&params[i].1.var(), g);
    }
    step_params(&mut o.opt, lr, params, &grads)?;
    o.sched.advance();
    Ok(StepStats {
        sums,
        grad_norm,
        lr,
        loader,
        skipped: false,
        comm_bytes,
        comm_secs,
    })
}
