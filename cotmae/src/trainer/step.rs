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

use autograd::Gradients;
use nn::StepDecision;
use nn::{step_params, unscale_and_clip, AdamW, Ctx, LossScaler, LrSchedule, Param, Precision};
use tensor::profiler::{self, Phase};
use tensor::{DType, Device, Tensor};

use super::loader::{LoadedBatch, LoaderState};
use super::state::LossSums;
use crate::model::BertForCotMAE;
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
    let mut losses: Vec<Tensor> = Vec::with_capacity(ga);
    // HF scales the loss by 1/ga, then by the loss scale; the scale is a power of two, so one
    // multiplication by scale/ga gives the same number (and 1/ga alone when not scaling).
    let factor = o.scaler.scale() as f64 / ga as f64;
    for _ in 0..ga {
        let item = profiler::in_phase(Phase::Data, &mut *next_batch)?;
        let batch = profiler::in_phase(Phase::Data, || item.batch.to_device(o.device))?;
        let out = profiler::in_phase(Phase::Forward, || {
            o.precision.autocast(|| model.forward(&batch, ctx))
        })?;
        let head = match &out.head_mlm_loss {
            Some(h) => h.value().clone(),
            None => Tensor::zeros(&[], DType::F32, o.device)?,
        };
        let parts = [out.loss.value(), out.encoder_mlm_loss.value(), &head]
            .map(|t| t.to_dtype(DType::F32).and_then(|t| t.reshape(&[1, 1])));
        let [l, e, h] = parts;
        losses.push(Tensor::cat(&[&l?, &e?, &h?], 1)?);
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
        sums.sequences += 2 * item.docs as u64;
        loader = Some(item.state);
    }
    let loader = loader.expect("at least one micro-batch");
    let losses = Tensor::cat(&losses.iter().collect::<Vec<_>>(), 0)?;

    let mut with_grad: Vec<(usize, Tensor)> = summed
        .into_iter()
        .enumerate()
        .filter_map(|(i, g)| Some((i, g?)))
        .collect();
    let mut refs: Vec<&mut Tensor> = with_grad.iter_mut().map(|(_, g)| g).collect();
    let (grad_norm, decision) = if o.precision == Precision::F16 {
        // The scaler decides on the host whether the step applies.
        let (norm, decision) = unscale_and_clip(&mut o.scaler, &mut refs, o.max_grad_norm)?;
        if decision == StepDecision::Apply && !norm.is_finite() {
            return Err(diverged(step, norm, &losses));
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
        });
    }
    let mut grads = Gradients::default();
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
    })
}

/// The error of a step whose gradient norm is not finite (the run has diverged); `losses` is
/// the step's `[micro-batches, 3]` device losses.
fn diverged(step: u64, norm: f64, losses: &Tensor) -> Error {
    let mut sums = LossSums::default();
    let zero = Tensor::from_vec(vec![0f64], &[1]).and_then(|z| z.to_device(losses.device()));
    let read = zero
        .map_err(Error::from)
        .and_then(|z| read_losses(&mut [(&mut sums, losses, &z)]));
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
/// norm ([`check_norms`]).
pub fn read_losses(steps: &mut [(&mut LossSums, &Tensor, &Tensor)]) -> Result<Vec<f64>> {
    if steps.is_empty() {
        return Ok(Vec::new());
    }
    let losses: Vec<&Tensor> = steps.iter().map(|(_, l, _)| *l).collect();
    let norms: Vec<&Tensor> = steps.iter().map(|(_, _, n)| *n).collect();
    let values = Tensor::cat(&losses, 0)?.to_vec_f64()?;
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
