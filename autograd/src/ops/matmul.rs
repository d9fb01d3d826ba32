//! Matrix product: for y = a b, da = g b^T and db = a^T g, each summed over batch dims that
//! were broadcast. The transposes are stride views, so no copies are made. `matmul_bias` (the
//! linear layer, y = a b + bias) adds d bias = the column sums of g. `matmul_bias_gelu` (a Linear
//! layer followed by GELU, BERT's intermediate) is `matmul_bias` then `gelu` on the CPU, and on
//! CUDA the GEMM then one fused bias + GELU kernel, whose backward gives dz = g gelu'(z) and
//! d bias = the column sums of dz.

use crate::var::Var;
use tensor::{Device, Result, Tensor};

impl Var {
    pub fn matmul(&self, rhs: &Var) -> Result<Var> {
        let (a, b) = (self.value().clone(), rhs.value().clone());
        let y = a.matmul(&b)?;
        Ok(Var::from_op(
            "matmul",
            y,
            vec![self.clone(), rhs.clone()],
            Box::new(move |g| {
                let ga = g.matmul(&b.t()?)?.sum_to_shape(a.shape())?;
                let gb = a.t()?.matmul(g)?.sum_to_shape(b.shape())?;
                Ok(vec![Some(ga), Some(gb)])
            }),
        ))
    }

    /// `self [m, k] @ rhs [k, n] + bias [n]` in one GEMM (see `Tensor::matmul_bias`).
    pub fn matmul_bias(&self, rhs: &Var, bias: &Var) -> Result<Var> {
        let (a, b) = (self.value().clone(), rhs.value().clone());
        let y = a.matmul_bias(&b, bias.value())?;
        let n = b.shape()[1];
        Ok(Var::from_op(
            "matmul_bias",
            y,
            vec![self.clone(), rhs.clone(), bias.clone()],
            Box::new(move |g| {
                let ga = g.matmul(&b.t()?)?;
                let gb = a.t()?.matmul(g)?;
                Ok(vec![Some(ga), Some(gb), Some(g.sum_to_shape(&[n])?)])
            }),
        ))
    }

    /// gelu(`self [m, k] @ rhs [k, n] + bias [n]`). On the CPU exactly `matmul_bias` then `gelu`
    /// (two nodes, the same bits as calling them); elsewhere one node over the GEMM and the fused
    /// `Tensor::bias_gelu`.
    pub fn matmul_bias_gelu(&self, rhs: &Var, bias: &Var) -> Result<Var> {
        if self.value().device() == Device::Cpu {
            return self.matmul_bias(rhs, bias)?.gelu();
        }
        let (a, b, c) = (
            self.value().clone(),
            rhs.value().clone(),
            bias.value().clone(),
        );
        let z = a.matmul(&b)?;
        let y = z.bias_gelu(&c)?;
        Ok(Var::from_op(
            "matmul_bias_gelu",
            y,
            vec![self.clone(), rhs.clone(), bias.clone()],
            Box::new(move |g| {
                let (dz, dc) = Tensor::bias_gelu_backward(&z, &c, g)?;
                let ga = dz.matmul(&b.t()?)?;
                let gb = a.t()?.matmul(&dz)?;
                Ok(vec![Some(ga), Some(gb), Some(dc)])
            }),
        ))
    }
}
