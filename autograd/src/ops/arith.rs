//! Binary arithmetic with broadcasting, and scalar arithmetic. A broadcast input receives its
//! gradient summed back to its own shape (`sum_to_shape`).

use crate::var::Var;
use tensor::{Result, Tensor};

/// Records a broadcasting binary op whose backward gives (dL/da, dL/db) at the output's shape.
fn binary(
    name: &'static str,
    a: &Var,
    b: &Var,
    value: Tensor,
    grads: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<(Tensor, Tensor)> + Send + Sync + 'static,
) -> Var {
    let (av, bv) = (a.value().clone(), b.value().clone());
    let (sa, sb) = (av.shape().to_vec(), bv.shape().to_vec());
    Var::from_op(
        name,
        value,
        vec![a.clone(), b.clone()],
        Box::new(move |g| {
            let (ga, gb) = grads(&av, &bv, g)?;
            Ok(vec![
                Some(ga.sum_to_shape(&sa)?),
                Some(gb.sum_to_shape(&sb)?),
            ])
        }),
    )
}

impl Var {
    pub fn add(&self, rhs: &Var) -> Result<Var> {
        let y = self.value().add(rhs.value())?;
        Ok(binary("add", self, rhs, y, |_, _, g| {
            Ok((g.clone(), g.clone()))
        }))
    }

    pub fn sub(&self, rhs: &Var) -> Result<Var> {
        let y = self.value().sub(rhs.value())?;
        Ok(binary("sub", self, rhs, y, |_, _, g| {
            Ok((g.clone(), g.neg()?))
        }))
    }

    pub fn mul(&self, rhs: &Var) -> Result<Var> {
        let y = self.value().mul(rhs.value())?;
        Ok(binary("mul", self, rhs, y, |a, b, g| {
            Ok((g.mul(b)?, g.mul(a)?))
        }))
    }

    /// d(a/b) = g/b, -g*a/b^2.
    pub fn div(&self, rhs: &Var) -> Result<Var> {
        let y = self.value().div(rhs.value())?;
        Ok(binary("div", self, rhs, y, |a, b, g| {
            let gb = g.mul(a)?.div(&b.sqr()?)?.neg()?;
            Ok((g.div(b)?, gb))
        }))
    }

    /// x + c.
    pub fn add_scalar(&self, c: f64) -> Result<Var> {
        let y = self.value().add_scalar(c)?;
        Ok(Var::from_op(
            "add_scalar",
            y,
            vec![self.clone()],
            Box::new(|g| Ok(vec![Some(g.clone())])),
        ))
    }

    /// x * c.
    pub fn mul_scalar(&self, c: f64) -> Result<Var> {
        self.affine(c, 0.0)
    }

    /// x * mul + add.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Var> {
        let y = self.value().affine(mul, add)?;
        Ok(Var::from_op(
            "affine",
            y,
            vec![self.clone()],
            Box::new(move |g| Ok(vec![Some(g.mul_scalar(mul)?)])),
        ))
    }

    /// x^e, d = e * x^(e-1).
    pub fn powf(&self, e: f64) -> Result<Var> {
        let x = self.value().clone();
        let y = x.powf(e)?;
        Ok(Var::from_op(
            "powf",
            y,
            vec![self.clone()],
            Box::new(move |g| Ok(vec![Some(g.mul(&x.powf(e - 1.0)?.mul_scalar(e)?)?)])),
        ))
    }
}
