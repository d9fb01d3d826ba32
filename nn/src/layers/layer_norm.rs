//! `LayerNorm` over the last dim, HF names `weight`/`bias` (checkpoints may say `gamma`/`beta`;
//! the loader maps those).

use crate::module::{join, Module};
use crate::Param;
use autograd::Var;
use tensor::{DType, Device, Result, Tensor};

pub struct LayerNorm {
    pub weight: Param,
    pub bias: Param,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: Param::new(Tensor::ones(&[dim], DType::F32, Device::Cpu)?),
            bias: Param::new(Tensor::zeros(&[dim], DType::F32, Device::Cpu)?),
            eps,
        })
    }

    pub fn forward(&self, x: &Var) -> Result<Var> {
        x.layer_norm(&self.weight.var(), &self.bias.var(), self.eps)
    }
}

impl Module for LayerNorm {
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        f(join(prefix, "weight"), &self.weight);
        f(join(prefix, "bias"), &self.bias);
    }
}
