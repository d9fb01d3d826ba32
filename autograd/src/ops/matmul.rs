//! Matrix product: for y = a b, da = g b^T and db = a^T g, each summed over batch dims that
//! were broadcast. The transposes are stride views, so no copies are made. `matmul_bias` (the
//! linear layer, y = a b + bias) adds d bias = the column sums of g. `matmul_bias_gelu` (a Linear
//! layer followed by GELU, BERT's intermediate) is `matmul_bias` then `gelu` on the CPU, and on
//! CUDA the product (a `matmul` node) then one fused bias + GELU kernel (a `bias_gelu` node, whose
//! backward gives dz = g gelu'(z) and d bias = the column sums of dz).
//!
//! Under [`autocast`](crate::autocast) with a half dtype, f32 CUDA operands of the products are
//! cast to it first (operands already in it are read as they are) and the product stays in it,
//! all as graph ops (so gradients come back in each operand's dtype); the bias + GELU of
//! `matmul_bias_gelu` then runs on the half product with the bias as it is (f32 or half). f32 CPU operands under bf16
//! autocast run in the CPU's bf16 GEMM instead (nodes `matmul_bf16` / `matmul_bias_bf16`, the
//! backward's products in the same GEMM; with gradients off, `matmul_bias_gelu` fuses the bias
//! and GELU into that GEMM's epilogue).

use crate::autocast::{cpu_bf16_products, gemm_dtype};
use crate::var::Var;
use tensor::{DType, Device, Result, Tensor};

/// The GEMM a product node (forward and backward) runs.
#[derive(Clone, Copy)]
enum Gemm {
    /// `Tensor::matmul`: the operands' dtype, on their device.
    Plain,
    /// `Tensor::matmul_bf16`: bf16 products summed in f32 on the CPU (bf16 autocast).
    CpuBf16,
}

impl Gemm {
    fn of(operands: &[&Tensor]) -> Gemm {
        if cpu_bf16_products(operands) {
            Gemm::CpuBf16
        } else {
            Gemm::Plain
        }
    }

    fn mm(self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        match self {
            Gemm::Plain => a.matmul(b),
            Gemm::CpuBf16 => a.matmul_bf16(b),
        }
    }

    /// The node's name: the op, with `_bf16` for the CPU bf16 GEMM.
    fn name(self, plain: &'static str, bf16: &'static str) -> &'static str {
        match self {
            Gemm::Plain => plain,
            Gemm::CpuBf16 => bf16,
        }
    }
}

/// `v` cast to `half` for an autocast product (unchanged when it already is); a cast of a
/// parameter (or a view of one) is counted on its GPU as a weight cast
/// (`Device::note_weight_cast`).
fn autocast_operand(v: &Var, half: DType) -> Result<Var> {
    if v.value().dtype() == half {
        return Ok(v.clone());
    }
    if v.is_param_view() {
        v.value().device().note_weight_cast()?;
    }
    v.to_dtype(half)
}

impl Var {
    pub fn matmul(&self, rhs: &Var) -> Result<Var> {
        if let Some(half) = gemm_dtype(&[self.value(), rhs.value()]) {
            return autocast_operand(self, half)?.matmul(&autocast_operand(rhs, half)?);
        }
        let (a, b) = (self.value().clone(), rhs.value().clone());
        let gemm = Gemm::of(&[&a, &b]);
        let y = gemm.mm(&a, &b)?;
        Ok(Var::from_op(
            gemm.name("matmul", "matmul_bf16"),
            y,
            vec![self.clone(), rhs.clone()],
            Box::new(move |g| {
                let ga = gemm.mm(g, &b.t()?)?.sum_to_shape(a.shape())?;
                let gb = gemm.mm(&a.t()?, g)?.sum_to_shape(b.shape())?;
                Ok(vec![Some(ga), Some(gb)])
            }),
        ))
    }

    /// `self [m, k] @ rhs [k, n] + bias [n]` in one GEMM (see `Tensor::matmul_bias`).
    pub fn matmul_bias(&self, rhs: &Var, bias: &Var) -> Result<Var> {
        if let Some(half) = gemm_dtype(&[self.value(), rhs.value(), bias.value()]) {
            let (a, b, c) = (
                autocast_operand(self, half)?,
                autocast_operand(rhs, half)?,
                autocast_operand(bias, half)?,
            );
            return a.matmul_bias(&b, &c);
        }
        let (a, b) = (self.value().clone(), rhs.value().clone());
        let gemm = Gemm::of(&[&a, &b, bias.value()]);
        let y = match gemm {
            Gemm::Plain => a.matmul_bias(&b, bias.value())?,
            Gemm::CpuBf16 => a.matmul_bias_bf16(&b, bias.value(), false)?,
        };
        let n = b.shape()[1];
        Ok(Var::from_op(
            gemm.name("matmul_bias", "matmul_bias_bf16"),
            y,
            vec![self.clone(), rhs.clone(), bias.clone()],
            Box::new(move |g| {
                let ga = gemm.mm(g, &b.t()?)?;
                let gb = gemm.mm(&a.t()?, g)?;
                Ok(vec![Some(ga), Some(gb), Some(g.sum_to_shape(&[n])?)])
            }),
        ))
    }

    /// gelu(`self [m, k] @ rhs [k, n] + bias [n]`). On the CPU exactly `matmul_bias` then `gelu`
    /// (two nodes, the same bits as calling them; under bf16 autocast with gradients off, one
    /// bf16 GEMM with the bias and GELU in its epilogue); elsewhere `matmul` (autocast applies) then the
    /// fused [`Var::bias_gelu`].
    pub fn matmul_bias_gelu(&self, rhs: &Var, bias: &Var) -> Result<Var> {
        if self.value().device() == Device::Cpu {
            let operands = [self.value(), rhs.value(), bias.value()];
            if !crate::is_grad_enabled() && cpu_bf16_products(&operands) {
                let y = self
                    .value()
                    .matmul_bias_bf16(rhs.value(), bias.value(), true)?;
                return Ok(Var::constant(y));
            }
            return self.matmul_bias(rhs, bias)?.gelu();
        }
        self.matmul(rhs)?.bias_gelu(bias)
    }

    /// gelu(`self [.., h]` + `bias [h]`) as one node over `Tensor::bias_gelu` (one fused kernel
    /// on CUDA) and its fused backward.
    pub fn bias_gelu(&self, bias: &Var) -> Result<Var> {
        let (z, c) = (self.value().clone(), bias.value().clone());
        let y = z.bias_gelu(&c)?;
        Ok(Var::from_op(
            "bias_gelu",
            y,
            vec![self.clone(), bias.clone()],
            Box::new(move |g| {
                let (dz, dc) = Tensor::bias_gelu_backward(&z, &c, g)?;
                Ok(vec![Some(dz), Some(dc)])
            }),
        ))
    }
}
