//! Dropout: zero each element with probability p and scale the rest by 1/(1-p). The keep-mask
//! drawn in the forward is reused by the backward. Identity when `train` is false.
//! `dropout_add`: dropout(x) + residual as one op (one kernel on CUDA, the same bits and draws as
//! the two ops), for the residual branches of BERT's output layers. Under autocast the branch is
//! a half (bf16/f16) product and the residual the f32 hidden state: the sum is f32 (torch's type
//! promotion), still one kernel, and the branch's gradient comes back in its half dtype.

use crate::var::Var;
use tensor::{DType, Result, Rng, Tensor};

impl Var {
    pub fn dropout(&self, p: f64, train: bool, rng: &mut Rng) -> Result<Var> {
        if !train || p == 0.0 {
            return Ok(self.clone());
        }
        let (y, mask) = self.value().dropout(p, rng)?;
        Ok(Var::from_op(
            "dropout",
            y,
            vec![self.clone()],
            Box::new(move |g| Ok(vec![Some(Tensor::dropout_backward(g, &mask, p)?)])),
        ))
    }

    /// `dropout(self) + residual` (same shape; same dtype, or a half `self` and an f32
    /// `residual`, giving f32; otherwise the two ops): the gradient is dropout's for `self` (in
    /// its dtype) and the output gradient for `residual`.
    pub fn dropout_add(&self, residual: &Var, p: f64, train: bool, rng: &mut Rng) -> Result<Var> {
        let (x, r) = (self.value(), residual.value());
        if !train || p == 0.0 || x.shape() != r.shape() || !(x.dtype() == r.dtype() || mixed(x, r))
        {
            return self.dropout(p, train, rng)?.add_promoted(residual);
        }
        let (y, mask) = x.dropout_add(r, p, rng)?;
        let dtype = x.dtype();
        Ok(Var::from_op(
            "dropout_add",
            y,
            vec![self.clone(), residual.clone()],
            Box::new(move |g| {
                Ok(vec![
                    Some(Tensor::dropout_backward_to(g, &mask, p, dtype)?),
                    Some(g.clone()),
                ])
            }),
        ))
    }

    /// `self + residual`, a half `self` first cast to an f32 `residual`'s dtype (torch's
    /// promotion; the evaluation path of a half branch); otherwise `add`.
    pub fn add_promoted(&self, residual: &Var) -> Result<Var> {
        match mixed(self.value(), residual.value()) {
            true => self.to_dtype(DType::F32)?.add(residual),
            false => self.add(residual),
        }
    }
}

/// A half (f16/bf16) branch into an f32 residual: what `dropout_add` promotes.
fn mixed(x: &Tensor, r: &Tensor) -> bool {
    matches!(x.dtype(), DType::F16 | DType::BF16) && r.dtype() == DType::F32
}
