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

    /// LayerNorm of x. A half x with f32 parameters (an autocast activation on a GPU, the MLM
    /// head's GELU output) is cast to f32 first, as torch's autocast runs LayerNorm in f32: the
    /// output is f32 and the input's gradient comes back in its dtype.
    pub fn forward(&self, x: &Var) -> Result<Var> {
        let (w, b) = (self.weight.var(), self.bias.var());
        let half = matches!(x.value().dtype(), DType::F16 | DType::BF16);
        if half && w.value().dtype() == DType::F32 && x.value().device() != Device::Cpu {
            return x.to_dtype(DType::F32)?.layer_norm(&w, &b, self.eps);
        }
        x.layer_norm(&w, &b, self.eps)
    }
}

impl Module for LayerNorm {
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        f(join(prefix, "weight"), &self.weight);
        f(join(prefix, "bias"), &self.bias);
    }
}
