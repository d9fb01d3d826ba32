//! `Module`: anything with parameters. It lists them with HF's dotted names, in the order HF's
//! `state_dict()` gives, so checkpoints map onto modules by name with no translation table.
//! `Ctx` carries what a forward pass needs besides its inputs: train/eval mode and the dropout RNG.

use crate::Param;
use tensor::Rng;

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

/// `prefix.name`, or `name` at the root.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Forward-pass context: whether dropout is active, and the generator it draws from.
pub struct Ctx {
    pub train: bool,
    pub rng: Rng,
}

impl Ctx {
    pub fn train(seed: u64) -> Ctx {
        Ctx {
            train: true,
            rng: Rng::new(seed),
        }
    }

    pub fn eval() -> Ctx {
        Ctx {
            train: false,
            rng: Rng::new(0),
        }
    }
}
