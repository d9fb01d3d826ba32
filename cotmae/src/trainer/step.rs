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

use autograd::Gradients;
use nn::StepDecision;
use nn::{step_params, unscale_and_clip, AdamW, Ctx, LossScaler, LrSchedule, Param, Precision};
use tensor::profiler::{self, Phase};
use tensor::{Device, Tensor};

use super::loader::{LoadedBatch, LoaderState};
use super::state::LossSums;
use crate::model::{loss_values, BertForCotMAE};
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

/// Optimizer step number `step` (1-based, for messages); see the module doc.
pub fn train_step(
    model: &BertForCotMAE,
    params: &[(String, Param)],
    ctx: &mut Ctx,
    next_batch: &mut dyn FnMut() -> Result<LoadedBatch>,
    o: &mut Optimization,
    step: u64,
) -> Result<StepStats> {
    let _profiled = profiler::step(step);
    let ga = o.accumulation.max(1);
    let mut summed: Vec<Option<Tensor>> = vec![None; params.len()];
    let mut sums = LossSums {
        steps: 1,
        ..LossSums::default()
    };
    let mut loader = None;
    // HF scales the loss by 1/ga, then by the loss scale; the scale is a power of two, so one
    // multiplication by scale/ga gives the same number (and 1/ga alone when not scaling).
    let factor = o.scaler.scale() as f64 / ga as f64;
    for _ in 0..ga {
        let item = profiler::in_phase(Phase::Data, &mut *next_batch)?;
        let batch = profiler::in_phase(Phase::Data, || item.batch.to_device(o.device))?;
        let out = profiler::in_phase(Phase::Forward, || {
            o.precision.autocast(|| model.forward(&batch, ctx))
        })?;
        let (loss, enc, head) = loss_values(&out)?;
        let scaled = if factor != 1.0 {
            out.loss.mul_scalar(factor)?
        } else {
            out.loss.clone()
        };
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
        sums.loss += loss / ga as f64;
        sums.encoder_mlm_loss += enc / ga as f64;
        sums.head_mlm_loss += head.unwrap_or(0.0) / ga as f64;
        sums.sequences += 2 * item.docs as u64;
        loader = Some(item.state);
    }
    let loader = loader.expect("at least one micro-batch");

    let mut with_grad: Vec<(usize, Tensor)> = summed
        .into_iter()
        .enumerate()
        .filter_map(|(i, g)| Some((i, g?)))
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
        });
    }
    if !grad_norm.is_finite() {
        return Err(Error::Config(format!(
            "step {step}: the gradient norm is {grad_norm} (loss {}): training diverged; try a \
             lower --learning_rate",
            sums.loss
        )));
    }
    let mut grads = Gradients::default();
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
    })
}
