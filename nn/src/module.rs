//! `Module`: anything with parameters. It lists them with HF's dotted names, in the order HF's
//! `state_dict()` gives, so checkpoints map onto modules by name with no translation table.
//! `Ctx` carries what a forward pass needs besides its inputs: train/eval mode, the dropout RNG,
//! and which rows of a batch the pass computes (dropout draws keyed by row, `rows.rs`).
//! [`to_device`] moves a module's parameters to a device.

use crate::rows::BatchRows;
use crate::Param;
use tensor::{Device, Result, Rng};

pub trait Module {
    /// Calls `f(name, param)` for every parameter, names prefixed by `prefix` (HF's dotted
    /// path of this module, "" at the root), in state_dict order.
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param));

    /// Every parameter with its full name, in state_dict order. A tied parameter is listed
    /// under each of its names.
    fn named_params(&self) -> Vec<(String, Param)> {
        let mut out = Vec::new();
        self.visit_params("", &mut |n, p| out.push((n, p.clone())));
        out
    }

    /// Total number of parameter elements, counting tied parameters once.
    fn num_params(&self) -> usize {
        let mut seen: Vec<Param> = Vec::new();
        let mut n = 0;
        self.visit_params("", &mut |_, p| {
            if !seen.iter().any(|q| q.same(p)) {
                n += p.shape().iter().product::<usize>();
                seen.push(p.clone());
            }
        });
        n
    }
}

/// Moves every parameter of `module` to `device` (a parameter already there is left as it is).
/// A tied parameter, listed under several names, is moved once and stays one parameter. Every
/// parameter is copied before any is replaced, so on an error (naming the parameter) the module
/// is unchanged. Gradients of earlier passes keep their device; the optimizer's moments follow
/// their parameter at its next step.
pub fn to_device(module: &dyn Module, device: Device) -> Result<()> {
    let mut moved: Vec<(String, Param, tensor::Tensor)> = Vec::new();
    let mut failure = None;
    module.visit_params("", &mut |name, p| {
        if failure.is_some() || moved.iter().any(|(_, q, _)| q.same(p)) {
            return;
        }
        let t = p.tensor();
        if t.device() == device {
            return;
        }
        match t.to_device(device) {
            Ok(t) => moved.push((name, p.clone(), t)),
            Err(e) => failure = Some(tensor::Error::op("to_device", format!("{name}: {e}"))),
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    for (name, p, t) in moved {
        p.set(&name, t)?;
    }
    Ok(())
}

/// `prefix.name`, or `name` at the root.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Forward-pass context: whether dropout is active, the generator it draws from, and the part of
/// the batch this pass computes.
pub struct Ctx {
    pub train: bool,
    pub rng: Rng,
    /// `Some(rows)`: the batch this pass sees is these rows of a larger one, and dropout draws
    /// that batch's masks for them ([`BatchRows`]); `None`: the batch is whole.
    pub rows: Option<BatchRows>,
}

impl Ctx {
    pub fn train(seed: u64) -> Ctx {
        Ctx::training(Rng::new(seed))
    }

    /// Train mode drawing from `rng`, over whole batches.
    pub fn training(rng: Rng) -> Ctx {
        Ctx {
            train: true,
            rng,
            rows: None,
        }
    }

    pub fn eval() -> Ctx {
        Ctx {
            train: false,
            rng: Rng::new(0),
            rows: None,
        }
    }

    /// The generator for a dropout draw of `n` elements over this pass's batch (batch-first),
    /// moving `self.rng` past it: `self.rng` itself for a whole batch, the row-keyed position
    /// for a part ([`BatchRows::uniform_draw`]).
    pub fn dropout_rng(&mut self, n: usize) -> Result<Rng> {
        match self.rows {
            None => {
                let at = self.rng;
                self.rng.reserve(n, 4);
                Ok(at)
            }
            Some(rows) => rows.uniform_draw(&mut self.rng, n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tensor::{DType, Tensor};

    /// Two names for one parameter (as the MLM decoder and the word embeddings) and one more.
    struct Tied {
        shared: Param,
        other: Param,
    }

    impl Module for Tied {
        fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
            f(join(prefix, "embeddings.weight"), &self.shared);
            f(join(prefix, "bias"), &self.other);
            f(join(prefix, "decoder.weight"), &self.shared);
        }
    }

    #[test]
    fn to_device_on_the_cpu_keeps_values_and_ties() {
        let m = Tied {
            shared: Param::new(tensor::testing::randn(&[3, 4], 1.0, DType::F32, 1)),
            other: Param::new(Tensor::from_vec(vec![1f32, 2.0], &[2]).unwrap()),
        };
        let before: Vec<Vec<f32>> = m
            .named_params()
            .iter()
            .map(|(_, p)| p.tensor().to_vec::<f32>().unwrap())
            .collect();
        to_device(&m, Device::Cpu).unwrap();
        let after = m.named_params();
        for ((name, p), want) in after.iter().zip(&before) {
            assert_eq!(p.tensor().device(), Device::Cpu, "{name}");
            assert_eq!(&p.tensor().to_vec::<f32>().unwrap(), want, "{name}");
        }
        assert!(after[0].1.same(&after[2].1));
        assert_eq!(m.num_params(), 14);
    }
}
