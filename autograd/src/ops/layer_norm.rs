//! LayerNorm over the last dim as one node: the forward keeps the per-row mean and 1/std so the
//! fused backward needs no recomputation.

use crate::var::Var;
use tensor::{Result, Tensor};

impl Var {
    pub fn layer_norm(&self, weight: &Var, bias: &Var, eps: f64) -> Result<Var> {
        let x = self.value().clone();
        let w = weight.value().clone();
        let (y, mean, rstd) = x.layer_norm(&w, bias.value(), eps)?;
        Ok(Var::from_op(
            "layer_norm",
            y,
            vec![self.clone(), weight.clone(), bias.clone()],
            Box::new(move |g| {
                let (dx, dw, db) = Tensor::layer_norm_backward(&x, &w, &mean, &rstd, g)?;
                Ok(vec![Some(dx), Some(dw), Some(db)])
            }),
        ))
    }
}
