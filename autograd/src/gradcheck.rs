//! `gradcheck`: compares the gradients `backward` computes with central finite differences, in
//! f64 on the CPU. The function may return any shape: it is reduced to the scalar
//! `sum(f(x) * w)` with fixed random weights `w`, so every output element is checked.

use crate::var::{no_grad, Var};
use tensor::{DType, Device, Error, Result, Rng, Tensor};

#[derive(Clone, Copy, Debug)]
pub struct GradcheckOptions {
    /// Finite-difference step.
    pub eps: f64,
    /// Pass when |analytic - numeric| <= atol + rtol * |numeric| for every element.
    pub atol: f64,
    pub rtol: f64,
}

impl Default for GradcheckOptions {
    fn default() -> Self {
        GradcheckOptions {
            eps: 1e-6,
            atol: 1e-7,
            rtol: 1e-5,
        }
    }
}

/// Checks `f`'s gradients at `inputs` (which must be f64; others are passed through as constants
/// and not checked). Returns an error describing the worst mismatch.
pub fn gradcheck(
    f: impl Fn(&[Var]) -> Result<Var>,
    inputs: &[Tensor],
    opts: GradcheckOptions,
) -> Result<()> {
    let is_checked = |t: &Tensor| t.dtype() == DType::F64;
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| {
            if is_checked(t) {
                Var::param(t.clone())
            } else {
                Var::constant(t.clone())
            }
        })
        .collect();
    let out = f(&vars)?;
    let w = Tensor::rand_uniform(
        out.shape(),
        -1.0,
        1.0,
        DType::F64,
        Device::Cpu,
        &mut Rng::new(1234),
    )?;
    let grads = out.backward_with(w.clone())?;

    // The scalar the finite differences look at.
    let objective = |xs: &[Tensor]| -> Result<f64> {
        no_grad(|| {
            let vs: Vec<Var> = xs.iter().map(|t| Var::constant(t.clone())).collect();
            f(&vs)?.value().mul(&w)?.sum_all()?.to_scalar::<f64>()
        })
    };

    for (k, input) in inputs.iter().enumerate().filter(|(_, t)| is_checked(t)) {
        let analytic = match grads.get(&vars[k]) {
            Some(g) => g.to_vec::<f64>()?,
            None => vec![0.0; input.elem_count()],
        };
        let base = input.to_vec::<f64>()?;
        let mut xs: Vec<Tensor> = inputs.to_vec();
        for (i, &a) in analytic.iter().enumerate() {
            let mut probe = |delta: f64| -> Result<f64> {
                let mut v = base.clone();
                v[i] += delta;
                xs[k] = Tensor::from_vec(v, input.shape())?;
                objective(&xs)
            };
            let numeric = (probe(opts.eps)? - probe(-opts.eps)?) / (2.0 * opts.eps);
            // Written so that a NaN on either side fails.
            let close = (a - numeric).abs() <= opts.atol + opts.rtol * numeric.abs();
            if !close {
                return Err(Error::op(
                    "gradcheck",
                    format!(
                        "input {k} (shape {:?}) element {i}: analytic {a:e}, numeric {numeric:e} (op {})",
                        input.shape(),
                        out.op_name()
                    ),
                ));
            }
        }
    }
    Ok(())
}
