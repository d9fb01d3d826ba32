//! Dropout: zero each element with probability p and scale the rest by 1/(1-p). The keep-mask
//! drawn in the forward is reused by the backward. Identity when `train` is false.
//! `dropout_add`: dropout(x) + residual as one op (one kernel on CUDA, the same bits and draws as
//! the two ops), for the residual branches of BERT's output layers.

use crate::var::Var;
use tensor::{Result, Rng, Tensor};

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

    /// `dropout(self) + residual` (same shape and dtype; otherwise the two ops): the gradient is
    /// dropout's for `self` and the output gradient for `residual`.
    pub fn dropout_add(&self, residual: &Var, p: f64, train: bool, rng: &mut Rng) -> Result<Var> {
        let (x, r) = (self.value(), residual.value());
        if !train || p == 0.0 || x.shape() != r.shape() || x.dtype() != r.dtype() {
            return self.dropout(p, train, rng)?.add(residual);
        }
        let (y, mask) = x.dropout_add(r, p, rng)?;
        Ok(Var::from_op(
            "dropout_add",
            y,
            vec![self.clone(), residual.clone()],
            Box::new(move |g| {
                Ok(vec![
                    Some(Tensor::dropout_backward(g, &mask, p)?),
                    Some(g.clone()),
                ])
            }),
        ))
    }
}
