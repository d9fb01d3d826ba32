//! Dropout: zero each element with probability p and scale the rest by 1/(1-p). The keep-mask
//! drawn in the forward is reused by the backward. Identity when `train` is false.

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
}
