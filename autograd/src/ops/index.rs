//! Lookups by integer index. Their backward scatters the gradient back to the rows that were
//! read, adding where an index repeats.

use crate::var::Var;
use tensor::{Result, Tensor};

impl Var {
    /// Rows of `self` (a [V, H] table) at `ids` (I64, any shape) -> ids.shape + [H].
    pub fn embedding(&self, ids: &Tensor) -> Result<Var> {
        let y = Tensor::embedding(self.value(), ids)?;
        let (ids, v) = (ids.clone(), self.shape()[0]);
        Ok(Var::from_op(
            "embedding",
            y,
            vec![self.clone()],
            Box::new(move |g| Ok(vec![Some(Tensor::embedding_backward(&ids, g, v)?)])),
        ))
    }

    pub fn index_select(&self, dim: usize, indices: &Tensor) -> Result<Var> {
        let y = self.value().index_select(dim, indices)?;
        let (indices, x) = (indices.clone(), self.value().clone());
        Ok(Var::from_op(
            "index_select",
            y,
            vec![self.clone()],
            Box::new(move |g| {
                let zeros = Tensor::zeros(x.shape(), g.dtype(), g.device())?;
                Ok(vec![Some(zeros.index_add(dim, &indices, g)?)])
            }),
        ))
    }

    pub fn gather(&self, dim: usize, index: &Tensor) -> Result<Var> {
        let y = self.value().gather(dim, index)?;
        let (index, x) = (index.clone(), self.value().clone());
        Ok(Var::from_op(
            "gather",
            y,
            vec![self.clone()],
            Box::new(move |g| {
                let zeros = Tensor::zeros(x.shape(), g.dtype(), g.device())?;
                Ok(vec![Some(zeros.scatter_add(dim, &index, g)?)])
            }),
        ))
    }
}
