//! Views and concatenation. Their backward moves the gradient back through the inverse view
//! (transpose back, pad a narrowed range with zeros, split a concatenation).

use crate::var::Var;
use tensor::{DType, Result, Tensor};

impl Var {
    fn view(
        &self,
        name: &'static str,
        value: Tensor,
        back: impl Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
    ) -> Var {
        Var::from_op(
            name,
            value,
            vec![self.clone()],
            Box::new(move |g| Ok(vec![Some(back(g)?)])),
        )
    }

    pub fn reshape(&self, shape: &[usize]) -> Result<Var> {
        let old = self.shape().to_vec();
        Ok(
            self.view("reshape", self.value().reshape(shape)?, move |g| {
                g.reshape(&old)
            }),
        )
    }

    pub fn transpose(&self, a: usize, b: usize) -> Result<Var> {
        Ok(
            self.view("transpose", self.value().transpose(a, b)?, move |g| {
                g.transpose(a, b)
            }),
        )
    }

    /// Swaps the last two dims.
    pub fn t(&self) -> Result<Var> {
        let r = self.shape().len();
        if r < 2 {
            return Err(tensor::Error::op(
                "t",
                format!("needs rank >= 2, got shape {:?}", self.shape()),
            ));
        }
        self.transpose(r - 2, r - 1)
    }

    pub fn permute(&self, perm: &[usize]) -> Result<Var> {
        let mut inverse = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            if p < inverse.len() {
                inverse[p] = i;
            }
        }
        Ok(self.view("permute", self.value().permute(perm)?, move |g| {
            g.permute(&inverse)
        }))
    }

    pub fn unsqueeze(&self, dim: usize) -> Result<Var> {
        Ok(
            self.view("unsqueeze", self.value().unsqueeze(dim)?, move |g| {
                g.squeeze(dim)
            }),
        )
    }

    pub fn squeeze(&self, dim: usize) -> Result<Var> {
        Ok(self.view("squeeze", self.value().squeeze(dim)?, move |g| {
            g.unsqueeze(dim)
        }))
    }

    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Var> {
        let old = self.shape().to_vec();
        Ok(self.view(
            "broadcast_to",
            self.value().broadcast_to(shape)?,
            move |g| g.sum_to_shape(&old),
        ))
    }

    pub fn contiguous(&self) -> Result<Var> {
        Ok(self.view("contiguous", self.value().contiguous()?, |g| Ok(g.clone())))
    }

    /// Elements `start..start+len` along `dim`; the gradient is zero outside that range.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Var> {
        let old = self.shape().to_vec();
        Ok(
            self.view("narrow", self.value().narrow(dim, start, len)?, move |g| {
                let mut parts = Vec::new();
                let pad = |n: usize| -> Result<Tensor> {
                    let mut s = old.clone();
                    s[dim] = n;
                    Tensor::zeros(&s, g.dtype(), g.device())
                };
                let before = pad(start)?;
                let after = pad(old[dim] - start - len)?;
                parts.push(&before);
                parts.push(g);
                parts.push(&after);
                Tensor::cat(&parts, dim)
            }),
        )
    }

    /// Casts; the gradient is cast back to the input's dtype.
    pub fn to_dtype(&self, dtype: DType) -> Result<Var> {
        let old = self.value().dtype();
        Ok(
            self.view("to_dtype", self.value().to_dtype(dtype)?, move |g| {
                g.to_dtype(old)
            }),
        )
    }

    /// Concatenation along `dim`; each input gets its slice of the gradient.
    pub fn cat(vars: &[&Var], dim: usize) -> Result<Var> {
        let values: Vec<&Tensor> = vars.iter().map(|v| v.value()).collect();
        let y = Tensor::cat(&values, dim)?;
        let sizes: Vec<usize> = vars.iter().map(|v| v.shape()[dim]).collect();
        Ok(Var::from_op(
            "cat",
            y,
            vars.iter().map(|&v| v.clone()).collect(),
            Box::new(move |g| Ok(g.split(&sizes, dim)?.into_iter().map(Some).collect())),
        ))
    }

    /// Pieces of the given sizes along `dim` (views of this value).
    pub fn split(&self, sizes: &[usize], dim: usize) -> Result<Vec<Var>> {
        let mut out = Vec::with_capacity(sizes.len());
        let mut start = 0;
        for &s in sizes {
            out.push(self.narrow(dim, start, s)?);
            start += s;
        }
        if start != self.shape().get(dim).copied().unwrap_or(0) {
            return Err(tensor::Error::op(
                "split",
                format!(
                    "sizes {sizes:?} do not sum to dim {dim} of shape {:?}",
                    self.shape()
                ),
            ));
        }
        Ok(out)
    }
}
