//! `Dropout`: active only when the context is in train mode; draws its mask from the context's
//! Philox generator, so a seed fixes every mask of a run.

use crate::module::Ctx;
use autograd::Var;
use tensor::Result;

#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    pub p: f64,
}

impl Dropout {
    pub fn new(p: f64) -> Dropout {
        Dropout { p }
    }

    pub fn forward(&self, x: &Var, ctx: &mut Ctx) -> Result<Var> {
        x.dropout(self.p, ctx.train, &mut ctx.rng)
    }

    /// `forward(x) + residual`, fused (`Var::dropout_add`: the same draws and bits).
    pub fn forward_add(&self, x: &Var, residual: &Var, ctx: &mut Ctx) -> Result<Var> {
        x.dropout_add(residual, self.p, ctx.train, &mut ctx.rng)
    }
}
