//! `Linear`: y = x W^T + b with W stored [out, in] as in torch. The input's leading dims are
//! flattened into one so the product is a single 2-D GEMM against a transposed view of W.

use crate::module::{join, Module};
use crate::Param;
use autograd::Var;
use tensor::{DType, Device, Result, Rng, Tensor};

pub struct Linear {
    pub weight: Param,
    pub bias: Option<Param>,
}

impl Linear {
    /// BERT initialisation: weight ~ N(0, std^2), bias 0.
    pub fn new(
        in_features: usize,
        out_features: usize,
        bias: bool,
        std: f64,
        rng: &mut Rng,
    ) -> Result<Linear> {
        let w = Tensor::randn(
            &[out_features, in_features],
            0.0,
            std,
            DType::F32,
            Device::Cpu,
            rng,
        )?;
        let b = bias
            .then(|| Tensor::zeros(&[out_features], DType::F32, Device::Cpu))
            .transpose()?;
        Ok(Linear {
            weight: Param::new(w),
            bias: b.map(Param::new),
        })
    }

    pub fn forward(&self, x: &Var) -> Result<Var> {
        let shape = x.shape().to_vec();
        let in_features = *shape.last().unwrap_or(&0);
        let rows = x.value().elem_count() / in_features.max(1);
        let x2 = x.reshape(&[rows, in_features])?;
        let mut y = x2.matmul(&self.weight.var().t()?)?;
        if let Some(b) = &self.bias {
            y = y.add(&b.var())?;
        }
        let mut out_shape = shape;
        *out_shape.last_mut().expect("rank >= 1") = y.shape()[1];
        y.reshape(&out_shape)
    }
}

impl Module for Linear {
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        f(join(prefix, "weight"), &self.weight);
        if let Some(b) = &self.bias {
            f(join(prefix, "bias"), b);
        }
    }
}
