//! Pointwise functions. Each backward is g * f'(x), written with whichever of x or y = f(x) is
//! cheaper.

use crate::var::Var;
use tensor::{Result, Tensor};

impl Var {
    /// Records y = fwd(x) with dL/dx = deriv(x, y, g).
    fn pointwise(
        &self,
        name: &'static str,
        fwd: impl Fn(&Tensor) -> Result<Tensor>,
        deriv: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync + 'static,
    ) -> Result<Var> {
        let x = self.value().clone();
        let y = fwd(&x)?;
        let y_saved = y.clone();
        Ok(Var::from_op(
            name,
            y,
            vec![self.clone()],
            Box::new(move |g| Ok(vec![Some(deriv(&x, &y_saved, g)?)])),
        ))
    }

    pub fn neg(&self) -> Result<Var> {
        self.pointwise("neg", Tensor::neg, |_, _, g| g.neg())
    }

    pub fn exp(&self) -> Result<Var> {
        self.pointwise("exp", Tensor::exp, |_, y, g| g.mul(y))
    }

    pub fn log(&self) -> Result<Var> {
        self.pointwise("log", Tensor::log, |x, _, g| g.div(x))
    }

    pub fn sqrt(&self) -> Result<Var> {
        self.pointwise("sqrt", Tensor::sqrt, |_, y, g| g.div(y)?.mul_scalar(0.5))
    }

    pub fn tanh(&self) -> Result<Var> {
        // d tanh = 1 - y^2
        self.pointwise("tanh", Tensor::tanh, |_, y, g| {
            g.mul(&y.sqr()?.affine(-1.0, 1.0)?)
        })
    }

    pub fn sigmoid(&self) -> Result<Var> {
        // d sigmoid = y (1 - y)
        self.pointwise("sigmoid", Tensor::sigmoid, |_, y, g| {
            g.mul(&y.mul(&y.affine(-1.0, 1.0)?)?)
        })
    }

    /// max(x, 0); the gradient at 0 is 0, as in torch.
    pub fn relu(&self) -> Result<Var> {
        self.pointwise("relu", Tensor::relu, |x, _, g| {
            let zero = Tensor::zeros(&[], x.dtype(), x.device())?;
            x.gt(&zero)?.where_cond(g, &zero)
        })
    }

    pub fn sqr(&self) -> Result<Var> {
        self.pointwise("sqr", Tensor::sqr, |x, _, g| g.mul(x)?.mul_scalar(2.0))
    }

    /// |x|; the gradient at 0 is 0, as in torch.
    pub fn abs(&self) -> Result<Var> {
        self.pointwise("abs", Tensor::abs, |x, _, g| {
            let zero = Tensor::zeros(&[], x.dtype(), x.device())?;
            let sign = x
                .gt(&zero)?
                .to_dtype(x.dtype())?
                .sub(&x.lt(&zero)?.to_dtype(x.dtype())?)?;
            g.mul(&sign)
        })
    }
}
