//! Reverse-mode differentiation in one screen: order the graph so that every node comes after
//! its inputs, then walk it backwards, handing each node's gradient to its op's backward closure
//! and adding the results into its inputs' gradients. A value used twice (tied embeddings)
//! receives the sum of both contributions.

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
        for v in topological_order(self).iter().rev() {
            // Each node's gradient is complete once every later node has been visited.
            let Some(g) = grads.remove(&v.id()) else {
                continue;
            };
            let Some(op) = &v.0.op else {
                leaves.0.insert(v.id(), g);
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
        }
        Ok(leaves)
    }
}
