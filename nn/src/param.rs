//! `Param`: a trainable tensor. Modules hold `Param`s and share them by reference, so tied weights
//! (the MLM decoder and the word embeddings) are one `Param` seen under two names. Each forward
//! pass reads the current value as a leaf `Var`; the optimizer replaces the value in place.

use autograd::Var;
use std::sync::{Arc, RwLock};
use tensor::{Error, Result, Tensor};

#[derive(Clone)]
pub struct Param(Arc<RwLock<Var>>);

impl std::fmt::Debug for Param {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Param({:?})", self.tensor())
    }
}

impl Param {
    pub fn new(t: Tensor) -> Param {
        Param(Arc::new(RwLock::new(Var::param(t))))
    }

    /// The current value as a leaf of the graph; gradients come back keyed by this `Var`.
    pub fn var(&self) -> Var {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn tensor(&self) -> Tensor {
        self.var().value().clone()
    }

    pub fn shape(&self) -> Vec<usize> {
        self.var().shape().to_vec()
    }

    /// Replaces the value (same shape required: the error names `name`).
    pub fn set(&self, name: &str, t: Tensor) -> Result<()> {
        let have = self.shape();
        if t.shape() != have.as_slice() {
            return Err(Error::op(
                "Param::set",
                format!(
                    "{name}: shape {:?} does not match the parameter's {have:?}",
                    t.shape()
                ),
            ));
        }
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Var::param(t);
        Ok(())
    }

    /// Runs `f` on the value in place. The old leaf is released first, so when no graph still
    /// holds it the update writes into the existing buffer with no copy.
    pub fn update<R>(&self, f: impl FnOnce(&mut Tensor) -> Result<R>) -> Result<R> {
        let mut t = self.take();
        let r = f(&mut t);
        self.put(t);
        r
    }

    /// Takes the value out, leaving a placeholder until [`Param::put`] returns it. Lets an
    /// optimizer hold every parameter mutably at once (see `optim::step_params`).
    pub(crate) fn take(&self) -> Tensor {
        let mut guard = self.0.write().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *guard, Var::constant(Tensor::scalar(0f32))).into_value()
    }

    /// Puts back a value taken with [`Param::take`], as a fresh leaf.
    pub(crate) fn put(&self, t: Tensor) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Var::param(t);
    }

    /// True when both handles are the same parameter (tied weights).
    pub fn same(&self, other: &Param) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
