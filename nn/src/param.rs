//! `Param`: a trainable tensor. Modules hold `Param`s and share them by reference, so tied weights
//! (the MLM decoder and the word embeddings) are one `Param` seen under two names. Each forward
//! pass reads the current value as a leaf `Var`; the optimizer replaces the value in place.
//!
//! Autocast on a GPU reads a parameter through [`Param::half`]: a bf16/f16 copy of the f32 value
//! kept beside it, made by one cast the first time and from then on written by the AdamW kernel
//! in the same pass that updates the f32 value (`step_params`), so a forward casts no weight.
//! Several parameters may keep their copies as consecutive runs of one buffer
//! ([`fused_half`](crate::fused_half): the fused QKV weight); each copy is then a view of it.

use autograd::Var;
use std::sync::{Arc, Mutex, RwLock};
use tensor::{DType, Device, Error, Result, Tensor};

/// A half-precision copy of a parameter's value: valid while the parameter's `Var` has `id`.
#[derive(Clone)]
pub(crate) struct HalfCopy {
    pub id: usize,
    pub value: Tensor,
}

#[derive(Clone)]
pub struct Param(Arc<RwLock<Var>>, Arc<Mutex<Option<HalfCopy>>>);

impl std::fmt::Debug for Param {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Param({:?})", self.tensor())
    }
}

impl Param {
    pub fn new(t: Tensor) -> Param {
        Param(Arc::new(RwLock::new(Var::param(t))), Arc::default())
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
    /// The value in `dtype` (f16 or bf16) for an autocast product on a GPU, as a graph node whose
    /// gradient flows back to the f32 parameter (cast to f32): the kept copy when it is current
    /// (the optimizer writes it), else one cast, counted as a weight cast, kept for next time.
    /// None for a CPU or non-f32 parameter, which autocast handles as before.
    pub fn half(&self, dtype: DType) -> Result<Option<Var>> {
        let v = self.var();
        if v.value().device() == Device::Cpu || v.value().dtype() != DType::F32 {
            return Ok(None);
        }
        let mut kept = self.1.lock().unwrap_or_else(|e| e.into_inner());
        let value = match &*kept {
            Some(h) if h.id == v.id() && h.value.dtype() == dtype => h.value.clone(),
            _ => {
                v.value().device().note_weight_cast()?;
                let value = v.value().to_dtype(dtype)?;
                *kept = Some(HalfCopy {
                    id: v.id(),
                    value: value.clone(),
                });
                value
            }
        };
        Ok(Some(v.cast_as(value)?))
    }

    /// The kept half copy when it is current: of the current value, in `dtype`.
    pub(crate) fn current_half(&self, dtype: DType) -> Option<Tensor> {
        let id = self.var().id();
        let kept = self.1.lock().unwrap_or_else(|e| e.into_inner());
        kept.as_ref()
            .filter(|h| h.id == id && h.value.dtype() == dtype)
            .map(|h| h.value.clone())
    }

    /// Takes the kept half copy out (the optimizer writes it in place, then [`Param::put_half`]).
    pub(crate) fn take_half(&self) -> Option<HalfCopy> {
        self.1.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Keeps `value` as the half copy of the current value.
    pub(crate) fn put_half(&self, value: Tensor) {
        let id = self.var().id();
        *self.1.lock().unwrap_or_else(|e| e.into_inner()) = Some(HalfCopy { id, value });
    }

    pub fn same(&self, other: &Param) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
