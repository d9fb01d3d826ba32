//! Reverse-mode differentiation in one screen: order the graph so that every node comes after
//! its inputs, then walk it backwards, handing each node's gradient to its op's backward closure
//! and adding the results into its inputs' gradients. A value used twice (tied embeddings)
//! receives the sum of both contributions.
//!
//! A leaf's gradient is final once every node that takes it as an input has been visited: the
//! walk counts, per leaf, the edges still pending, and hands the gradient to the caller's hook
//! ([`Var::backward_with_hook`]) the moment that count reaches zero, while the rest of the walk
//! goes on (data parallel starts the all-reduce of a finished bucket there).

use crate::var::Var;
use std::collections::{HashMap, HashSet};
use tensor::{Error, Result, Tensor};

/// Gradients of the leaves that require them, keyed by `Var::id`.
#[derive(Default)]
pub struct Gradients(HashMap<usize, Tensor>);

impl Gradients {
    pub fn get(&self, v: &Var) -> Option<&Tensor> {
        self.0.get(&v.id())
    }

    pub fn remove(&mut self, v: &Var) -> Option<Tensor> {
        self.0.remove(&v.id())
    }

    pub fn insert(&mut self, v: &Var, g: Tensor) {
        self.0.insert(v.id(), g);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Nodes reachable from `root` through inputs that require gradients, inputs before outputs.
/// Iterative (a BERT graph is thousands of nodes deep in places).
fn topological_order(root: &Var) -> Vec<Var> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    // (node, whether its inputs have been pushed already)
    let mut stack = vec![(root.clone(), false)];
    while let Some((v, expanded)) = stack.pop() {
        if expanded {
            order.push(v);
            continue;
        }
        if !seen.insert(v.id()) {
            continue;
        }
        stack.push((v.clone(), true));
        if let Some(op) = &v.0.op {
            for i in op
                .inputs
                .iter()
                .filter(|i| i.requires_grad() && !seen.contains(&i.id()))
            {
                stack.push((i.clone(), false));
            }
        }
    }
    order
}

impl Var {
    /// Gradients of this scalar with respect to every leaf that requires one.
    pub fn backward(&self) -> Result<Gradients> {
        if self.value().elem_count() != 1 {
            return Err(Error::op(
                "backward",
                format!(
                    "needs a single-element output, got shape {:?}; use backward_with",
                    self.shape()
                ),
            ));
        }
        // The seed gradient is the backward pass's first op (profiled in its phase).
        let _phase = tensor::profiler::phase(tensor::profiler::Phase::Backward);
        let seed = Tensor::ones(self.shape(), self.value().dtype(), self.value().device())?;
        self.backward_with(seed)
    }

    /// Back-propagates `grad` (the gradient of some scalar with respect to this value).
    pub fn backward_with(&self, grad: Tensor) -> Result<Gradients> {
        self.backward_with_hook(grad, &mut |_, _| Ok(()))
    }

    /// [`Var::backward_with`], calling `on_final(leaf, gradient)` for each leaf as soon as its
    /// gradient is final (no node still to visit feeds it), in the order the walk finishes them:
    /// the leaves nearest the output first. A hook error stops the walk and is returned.
    pub fn backward_with_hook(
        &self,
        grad: Tensor,
        on_final: &mut dyn FnMut(&Var, &Tensor) -> Result<()>,
    ) -> Result<Gradients> {
        if grad.shape() != self.shape() {
            return Err(Error::ShapeMismatch {
                op: "backward",
                lhs: self.shape().to_vec(),
                rhs: grad.shape().to_vec(),
            });
        }
        let mut grads: HashMap<usize, Tensor> = HashMap::new();
        let mut leaves = Gradients::default();
        if !self.requires_grad() {
            return Ok(leaves);
        }
        grads.insert(self.id(), grad);
        let _phase = tensor::profiler::phase(tensor::profiler::Phase::Backward);
        let order = topological_order(self);
        // Per leaf: the edges from nodes not yet visited.
        let mut pending: HashMap<usize, usize> = HashMap::new();
        for op in order.iter().filter_map(|v| v.0.op.as_ref()) {
            for i in op.inputs.iter().filter(|i| i.is_grad_leaf()) {
                *pending.entry(i.id()).or_default() += 1;
            }
        }
        for v in order.iter().rev() {
            let Some(op) = &v.0.op else {
                // Only the root, a leaf itself, still holds its gradient here.
                if let Some(g) = grads.remove(&v.id()) {
                    on_final(v, &g)?;
                    leaves.0.insert(v.id(), g);
                }
                continue;
            };
            // Each node's gradient is complete once every later node has been visited.
            let Some(g) = grads.remove(&v.id()) else {
                finish_leaves(op, &mut pending, &mut grads, &mut leaves, on_final)?;
                continue;
            };
            let input_grads = {
                let _module = tensor::profiler::enter_module(op.module.clone());
                (op.backward)(&g)?
            };
            for (input, ig) in op.inputs.iter().zip(input_grads) {
                let Some(ig) = ig else { continue };
                if !input.requires_grad() {
                    continue;
                }
                if ig.shape() != input.shape() {
                    return Err(Error::op(
                        "backward",
                        format!(
                            "op {} produced a gradient of shape {:?} for an input of shape {:?}",
                            op.name,
                            ig.shape(),
                            input.shape()
                        ),
                    ));
                }
                let acc = match grads.remove(&input.id()) {
                    Some(prev) => prev.add(&ig)?,
                    None => ig,
                };
                grads.insert(input.id(), acc);
            }
            finish_leaves(op, &mut pending, &mut grads, &mut leaves, on_final)?;
        }
        Ok(leaves)
    }

    /// The ids of the leaves that take a gradient and that this value depends on: the only ones
    /// [`Var::backward`] can give a gradient (the others are final before it starts).
    pub fn grad_leaf_ids(&self) -> HashSet<usize> {
        topological_order(self)
            .iter()
            .filter(|v| v.is_grad_leaf())
            .map(|v| v.id())
            .collect()
    }

    /// A leaf that takes a gradient (a parameter).
    fn is_grad_leaf(&self) -> bool {
        self.0.op.is_none() && self.0.requires_grad
    }
}

/// `op` has been visited: counts its edges off its leaf inputs, and moves each leaf whose count
/// reaches zero (its gradient final) into `leaves`, through `on_final`.
fn finish_leaves(
    op: &crate::var::OpNode,
    pending: &mut HashMap<usize, usize>,
    grads: &mut HashMap<usize, Tensor>,
    leaves: &mut Gradients,
    on_final: &mut dyn FnMut(&Var, &Tensor) -> Result<()>,
) -> Result<()> {
    for input in op.inputs.iter().filter(|i| i.is_grad_leaf()) {
        let Some(n) = pending.get_mut(&input.id()) else {
            continue;
        };
        *n -= 1;
        if *n > 0 {
            continue;
        }
        pending.remove(&input.id());
        if let Some(g) = grads.remove(&input.id()) {
            on_final(input, &g)?;
            leaves.0.insert(input.id(), g);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tensor::DType;

    fn param(seed: u64) -> Var {
        Var::param(tensor::testing::randn(&[3, 3], 1.0, DType::F64, seed))
    }

    /// Each leaf is reported once, when its last consumer has been visited (a leaf used twice
    /// only after both uses), with the same gradient `backward` returns, the output's side first.
    #[test]
    fn the_hook_sees_each_leaf_once_when_final() {
        let (w1, w2, w3) = (param(1), param(2), param(3));
        // loss = sum((w1 @ w2) @ w3 + w1): w1 feeds the first and the last op.
        let h = w1.matmul(&w2).unwrap();
        let y = h.matmul(&w3).unwrap().add(&w1).unwrap();
        let loss = y.sum_all().unwrap();
        let mut seen: Vec<(usize, Vec<f64>)> = Vec::new();
        let seed = Tensor::ones(loss.shape(), DType::F64, tensor::Device::Cpu).unwrap();
        let grads = loss
            .backward_with_hook(seed, &mut |v, g| {
                seen.push((v.id(), g.to_vec_f64()?));
                Ok(())
            })
            .unwrap();
        let ids: Vec<usize> = seen.iter().map(|(i, _)| *i).collect();
        assert_eq!(ids, vec![w3.id(), w1.id(), w2.id()]);
        let plain = loss.backward().unwrap();
        for (w, (_, g)) in [&w3, &w1, &w2].into_iter().zip(&seen) {
            assert_eq!(&plain.get(w).unwrap().to_vec_f64().unwrap(), g);
            assert_eq!(&grads.get(w).unwrap().to_vec_f64().unwrap(), g);
        }
        let e = loss
            .backward_with_hook(
                Tensor::ones(loss.shape(), DType::F64, tensor::Device::Cpu).unwrap(),
                &mut |_, _| Err(tensor::Error::op("hook", "stop")),
            )
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("stop"), "{e}");
        let unused = param(4);
        let ids = loss.grad_leaf_ids();
        assert!(ids.contains(&w1.id()) && ids.contains(&w3.id()) && !ids.contains(&unused.id()));
    }
}
