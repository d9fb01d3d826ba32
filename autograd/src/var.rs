//! `Var`: a tensor that remembers how it was made. Leaves are parameters or inputs (created with
//! `Var::param` / `Var::constant`); every op output holds its inputs and a closure that maps the
//! gradient of the output to the gradients of the inputs.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tensor::{DType, Result, Tensor};

/// Maps the gradient of an op's output to one optional gradient per input (None: no gradient
/// flows to that input, e.g. an integer index).
pub type BackwardFn = Box<dyn Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

pub(crate) struct OpNode {
    pub name: &'static str,
    /// The module path open when the op ran forward (profiling on), so its backward ops are
    /// attributed to the same module.
    pub module: Option<Arc<str>>,
    pub inputs: Vec<Var>,
    pub backward: BackwardFn,
}

pub(crate) struct Node {
    pub id: usize,
    pub value: Tensor,
    pub requires_grad: bool,
    pub op: Option<OpNode>,
}

/// A differentiable value. Cloning is cheap and shares the node.
#[derive(Clone)]
pub struct Var(pub(crate) Arc<Node>);

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Runs `f` without recording any op: outputs are constants and hold no inputs.
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let prev = GRAD_ENABLED.with(|g| g.replace(false));
    let r = f();
    GRAD_ENABLED.with(|g| g.set(prev));
    r
}

pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

impl std::fmt::Debug for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = self.0.op.as_ref().map_or("leaf", |o| o.name);
        write!(f, "Var#{}({:?}, {op})", self.0.id, self.0.value)
    }
}

impl Var {
    fn leaf(value: Tensor, requires_grad: bool) -> Var {
        Var(Arc::new(Node {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            value,
            requires_grad,
            op: None,
        }))
    }

    /// A leaf whose gradient `backward` computes (a parameter or an input under test).
    pub fn param(value: Tensor) -> Var {
        Var::leaf(value, true)
    }

    /// A leaf with no gradient (data, masks, indices).
    pub fn constant(value: Tensor) -> Var {
        Var::leaf(value, false)
    }

    /// The output of an op. Records the op only when some input needs a gradient and recording
    /// is enabled; otherwise the output is a constant and the closure is dropped.
    pub fn from_op(
        name: &'static str,
        value: Tensor,
        inputs: Vec<Var>,
        backward: BackwardFn,
    ) -> Var {
        let requires_grad = is_grad_enabled() && inputs.iter().any(|v| v.requires_grad());
        if !requires_grad {
            return Var::constant(value);
        }
        Var(Arc::new(Node {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            value,
            requires_grad,
            op: Some(OpNode {
                name,
                module: tensor::profiler::current_module(),
                inputs,
                backward,
            }),
        }))
    }

    /// A unique id (gradients are keyed by it).
    pub fn id(&self) -> usize {
        self.0.id
    }

    pub fn value(&self) -> &Tensor {
        &self.0.value
    }

    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad
    }

    pub fn shape(&self) -> &[usize] {
        self.0.value.shape()
    }

    /// The value, taken out without a copy when no other handle or graph node holds this `Var`.
    pub fn into_value(self) -> Tensor {
        match Arc::try_unwrap(self.0) {
            Ok(node) => node.value,
            Err(shared) => shared.value.clone(),
        }
    }

    /// The same value cut off from the graph.
    pub fn detach(&self) -> Var {
        Var::constant(self.0.value.clone())
    }

    /// The name of the op that made this value ("leaf" for leaves).
    pub fn op_name(&self) -> &'static str {
        self.0.op.as_ref().map_or("leaf", |o| o.name)
    }

    /// `self` cast to `value`'s dtype, where `value` already holds that cast (a kept half copy
    /// of a parameter): a `to_dtype` node whose gradient is cast back to `self`'s dtype.
    pub fn cast_as(&self, value: Tensor) -> tensor::Result<Var> {
        if value.shape() != self.shape() {
            return Err(tensor::Error::ShapeMismatch {
                op: "cast_as",
                lhs: self.shape().to_vec(),
                rhs: value.shape().to_vec(),
            });
        }
        let dtype = self.value().dtype();
        Ok(Var::from_op(
            "to_dtype",
            value,
            vec![self.clone()],
            Box::new(move |g| Ok(vec![Some(g.to_dtype(dtype)?)])),
        ))
    }

    /// `value`: `vars` concatenated along dim 0 in another dtype (the kept half copy of several
    /// parameters in one buffer, `nn::fused_half`), as one node whose gradient is cut back into
    /// each input's rows (views) and cast to that input's dtype, one cast per input.
    pub fn cat_cast_as(vars: &[Var], value: Tensor) -> tensor::Result<Var> {
        let rows: Vec<usize> = vars
            .iter()
            .map(|v| v.shape().first().copied().unwrap_or(0))
            .collect();
        let fits = vars.iter().all(|v| {
            v.shape().len() == value.shape().len() && v.shape().get(1..) == value.shape().get(1..)
        }) && value.shape().first() == Some(&rows.iter().sum());
        if !fits {
            let shapes: Vec<&[usize]> = vars.iter().map(|v| v.shape()).collect();
            return Err(tensor::Error::op(
                "cat_cast_as",
                format!(
                    "{shapes:?} concatenated along dim 0 are not {:?}",
                    value.shape()
                ),
            ));
        }
        let dtypes: Vec<DType> = vars.iter().map(|v| v.value().dtype()).collect();
        Ok(Var::from_op(
            "cat_to_dtype",
            value,
            vars.to_vec(),
            Box::new(move |g| {
                let mut start = 0;
                let mut out = Vec::with_capacity(rows.len());
                for (&n, &dtype) in rows.iter().zip(&dtypes) {
                    out.push(Some(g.narrow(0, start, n)?.to_dtype(dtype)?));
                    start += n;
                }
                Ok(out)
            }),
        ))
    }

    /// True for a parameter (a leaf with a gradient) or a view of one (`t`, `transpose`,
    /// `reshape`, `permute`, `narrow`): what autocast counts as a weight cast.
    pub fn is_param_view(&self) -> bool {
        match &self.0.op {
            None => self.0.requires_grad,
            Some(o) => {
                matches!(o.name, "t" | "transpose" | "reshape" | "permute" | "narrow")
                    && o.inputs.len() == 1
                    && o.inputs[0].is_param_view()
            }
        }
    }
}
