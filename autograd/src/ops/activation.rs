//! GELU (erf form), one node with a fused backward.

use crate::var::Var;
use tensor::{Result, Tensor};

impl Var {
    pub fn gelu(&self) -> Result<Var> {
        let x = self.value().clone();
        let y = x.gelu()?;
        Ok(Var::from_op(
            "gelu",
            y,
            vec![self.clone()],
            Box::new(move |g| Ok(vec![Some(Tensor::gelu_backward(&x, g)?)])),
        ))
    }
}
