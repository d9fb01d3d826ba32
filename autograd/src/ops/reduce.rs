//! Sums and means. The backward broadcasts the gradient back over the reduced dims.

use crate::var::Var;
use tensor::{Result, Tensor};

/// `g` (reduced over `dims`, with or without keepdim) broadcast back to `shape`.
fn expand_back(g: &Tensor, shape: &[usize], dims: &[usize], keepdim: bool) -> Result<Tensor> {
    let mut g = g.clone();
    if !keepdim {
        let mut sorted = dims.to_vec();
        sorted.sort_unstable();
        for &d in &sorted {
            g = g.unsqueeze(d)?;
        }
    }
    g.broadcast_to(shape)?.contiguous()
}

impl Var {
    pub fn sum(&self, dims: &[usize], keepdim: bool) -> Result<Var> {
        let y = self.value().sum(dims, keepdim)?;
        let (shape, dims) = (self.shape().to_vec(), dims.to_vec());
        Ok(Var::from_op(
            "sum",
            y,
            vec![self.clone()],
            Box::new(move |g| Ok(vec![Some(expand_back(g, &shape, &dims, keepdim)?)])),
        ))
    }

    pub fn mean(&self, dims: &[usize], keepdim: bool) -> Result<Var> {
        let n: usize = dims
            .iter()
            .map(|&d| self.shape().get(d).copied().unwrap_or(1))
            .product();
        self.sum(dims, keepdim)?.mul_scalar(1.0 / n as f64)
    }

    /// Sum of every element, as a rank-0 value.
    pub fn sum_all(&self) -> Result<Var> {
        let y = self.value().sum_all()?;
        let shape = self.shape().to_vec();
        Ok(Var::from_op(
            "sum_all",
            y,
            vec![self.clone()],
            Box::new(move |g| Ok(vec![Some(g.broadcast_to(&shape)?.contiguous()?)])),
        ))
    }

    pub fn mean_all(&self) -> Result<Var> {
        let n = self.value().elem_count();
        self.sum_all()?.mul_scalar(1.0 / n as f64)
    }
}
