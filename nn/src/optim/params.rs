//! One optimizer step over a model's `Param`s with the gradients of a backward pass: the bridge
//! between autograd (gradients keyed by each parameter's current leaf `Var`) and the optimizer
//! (which updates named tensors in place).

use super::{AdamW, HalfAt, ParamUpdate};
use crate::Param;
use autograd::Gradients;
use tensor::{Result, Tensor};

/// Applies one AdamW step at learning rate `lr` to every parameter in `params` that has a
/// gradient in `grads` (parameters without one are skipped, as torch skips `grad is None`).
/// Tied parameters listed twice are updated once. Drop the loss and its graph before calling:
/// a parameter the graph still holds is copied before it is written.
pub fn step_params(
    opt: &mut AdamW,
    lr: f64,
    params: &[(String, Param)],
    grads: &Gradients,
) -> Result<()> {
    let _phase = tensor::profiler::phase(tensor::profiler::Phase::Optimizer);
    let mut chosen: Vec<(&str, &Param, Tensor)> = Vec::new();
    for (name, p) in params {
        if chosen.iter().any(|(_, q, _)| q.same(p)) {
            continue;
        }
        if let Some(g) = grads.get(&p.var()) {
            chosen.push((name, p, g.clone()));
        }
    }
    // The half copies autocast keeps (`Param::half`): the kernel writes them with the values.
    // Copies that are runs of one shared buffer (`fused_half`) are written there in place.
    let mut halves: Vec<Option<Tensor>> = chosen
        .iter()
        .map(|(_, p, _)| p.take_half().map(|h| h.value))
        .collect();
    let (ats, mut bases) = shared_runs(&mut halves);
    let mut values: Vec<Tensor> = chosen.iter().map(|(_, p, _)| p.take()).collect();
    let mut updates: Vec<ParamUpdate> = chosen
        .iter()
        .zip(values.iter_mut())
        .map(|((name, _, grad), value)| ParamUpdate { name, value, grad })
        .collect();
    let mut half_refs: Vec<Option<&mut Tensor>> = halves.iter_mut().map(|h| h.as_mut()).collect();
    if half_refs.iter().all(Option::is_none) {
        half_refs.clear();
    }
    let result =
        opt.step_with_fused_half_copies(lr, &mut updates, &mut half_refs, &ats, &mut bases);
    drop((updates, half_refs));
    // Put every value back, stepped or (on error, which AdamW reports before writing) untouched.
    for ((_, p, _), v) in chosen.iter().zip(values) {
        p.put(v);
    }
    // Half copies the kernel wrote belong to the new values; others are stale and dropped.
    if let Ok(true) = result {
        for (i, ((_, p, _), h)) in chosen.iter().zip(halves).enumerate() {
            if let Some(h) = h {
                p.put_half(h);
            } else if let Some(at) = ats.get(i).copied().flatten() {
                let run = bases[at.base].narrow(0, at.offset, p.tensor().elem_count());
                p.put_half(run?.reshape(&p.shape())?);
            }
        }
    }
    result.map(|_| ())
}

/// Moves the copies in `halves` that are runs of a shared buffer (views, `fused_half`) out:
/// returns each one's place (`ats`, one entry per parameter, or empty when there is none) and
/// the buffers, as 1-D tensors. The views are dropped, so a buffer nothing else reads is
/// written in place.
fn shared_runs(halves: &mut [Option<Tensor>]) -> (Vec<Option<HalfAt>>, Vec<Tensor>) {
    let mut ats = vec![None; halves.len()];
    let mut bases: Vec<Tensor> = Vec::new();
    for (h, at) in halves.iter_mut().zip(ats.iter_mut()) {
        let Some(t) = h.as_ref() else { continue };
        let base = t.base();
        if !t.is_contiguous() || base.elem_count() == t.elem_count() {
            continue;
        }
        let index = match bases.iter().position(|b| b.same_storage(t)) {
            Some(i) => i,
            None => {
                bases.push(base);
                bases.len() - 1
            }
        };
        *at = Some(HalfAt {
            base: index,
            offset: t.layout().offset(),
        });
        *h = None;
    }
    if bases.is_empty() {
        ats.clear();
    }
    (ats, bases)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AdamWConfig, AdamWVariant, Linear, Module};
    use autograd::Var;
    use tensor::{DType, Rng};

    #[test]
    fn one_step_over_params_equals_stepping_the_tensors() {
        let layer = Linear::new(4, 3, true, 0.5, &mut Rng::new(1)).unwrap();
        let x = Var::constant(tensor::testing::randn(&[5, 4], 1.0, DType::F32, 2));
        let params = layer.named_params();
        let before: Vec<Tensor> = params
            .iter()
            .map(|(_, p)| p.tensor().copy().unwrap())
            .collect();
        let loss = layer
            .forward(&x)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let gs: Vec<Tensor> = params
            .iter()
            .map(|(_, p)| grads.get(&p.var()).unwrap().clone())
            .collect();
        drop(loss);

        let cfg = AdamWConfig {
            lr: 1e-2,
            weight_decay: 0.01,
            variant: AdamWVariant::Torch,
            ..Default::default()
        };
        let mut opt = AdamW::new(cfg.clone()).unwrap();
        step_params(&mut opt, 1e-2, &params, &grads).unwrap();
        assert_eq!(opt.step_count(), 1);

        // The same step applied directly to copies of the tensors.
        let mut reference = AdamW::new(cfg).unwrap();
        let mut values = before.clone();
        let mut ups: Vec<ParamUpdate> = params
            .iter()
            .zip(values.iter_mut())
            .zip(&gs)
            .map(|(((n, _), value), grad)| ParamUpdate {
                name: n,
                value,
                grad,
            })
            .collect();
        reference.step(1e-2, &mut ups).unwrap();
        drop(ups);
        for ((name, p), (want, old)) in params.iter().zip(values.iter().zip(&before)) {
            let got = p.tensor().to_vec::<f32>().unwrap();
            assert_eq!(got, want.to_vec::<f32>().unwrap(), "{name}");
            assert_ne!(got, old.to_vec::<f32>().unwrap(), "{name} did not move");
        }
    }
}
