//! `Dropout`: active only when the context is in train mode; draws its mask from the context's
//! Philox generator, so a seed fixes every mask of a run (keyed by batch row when the context
//! computes part of a batch: `Ctx::dropout_rng`).

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
        if !ctx.train || self.p == 0.0 {
            return Ok(x.clone());
        }
        let mut rng = ctx.dropout_rng(x.value().elem_count())?;
        x.dropout(self.p, true, &mut rng)
    }

    /// `forward(x) + residual`, fused (`Var::dropout_add`: the same draws and bits; a half `x`
    /// added into an f32 residual gives f32, as under autocast).
    pub fn forward_add(&self, x: &Var, residual: &Var, ctx: &mut Ctx) -> Result<Var> {
        if !ctx.train || self.p == 0.0 {
            return x.add_promoted(residual);
        }
        let mut rng = ctx.dropout_rng(x.value().elem_count())?;
        x.dropout_add(residual, self.p, true, &mut rng)
    }
}
