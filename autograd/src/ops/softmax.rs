//! Softmax and log-softmax over the last dim with a fused scale and additive mask, as attention
//! uses them: y = softmax(x * scale + mask). One node; the mask gets no gradient.

use crate::var::Var;
use tensor::{Result, Tensor};

impl Var {
    pub fn softmax_last(&self, mask: Option<&Tensor>, scale: f64) -> Result<Var> {
        let y = self.value().softmax_last(mask, scale)?;
        let ys = y.clone();
        Ok(Var::from_op(
            "softmax",
            y,
            vec![self.clone()],
            Box::new(move |g| Ok(vec![Some(Tensor::softmax_backward(&ys, g, scale)?)])),
        ))
    }

    pub fn log_softmax_last(&self, mask: Option<&Tensor>, scale: f64) -> Result<Var> {
        let y = self.value().log_softmax_last(mask, scale)?;
        let ys = y.clone();
        Ok(Var::from_op(
            "log_softmax",
            y,
            vec![self.clone()],
            Box::new(move |g| Ok(vec![Some(Tensor::log_softmax_backward(&ys, g, scale)?)])),
        ))
    }
}
