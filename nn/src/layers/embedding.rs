//! `Embedding`: a [num_embeddings, dim] table read by integer ids. With `padding_idx`, that row
//! starts at zero and never receives a gradient (torch's `nn.Embedding(padding_idx=...)`).

use crate::module::{join, Module};
use crate::Param;
use autograd::Var;
use tensor::{DType, Device, Result, Rng, Tensor};

pub struct Embedding {
    pub weight: Param,
    pub padding_idx: Option<usize>,
}

impl Embedding {
    pub fn new(
        num: usize,
        dim: usize,
        padding_idx: Option<usize>,
        std: f64,
        rng: &mut Rng,
    ) -> Result<Embedding> {
        let mut w = Tensor::randn(&[num, dim], 0.0, std, DType::F32, Device::Cpu, rng)?;
        if let Some(p) = padding_idx.filter(|&p| p < num) {
            w.data_mut::<f32>()?[p * dim..(p + 1) * dim].fill(0.0);
        }
        Ok(Embedding {
            weight: Param::new(w),
            padding_idx,
        })
    }

    /// ids (I64, any shape) -> ids.shape + [dim].
    pub fn forward(&self, ids: &Tensor) -> Result<Var> {
        self.weight.var().embedding(ids, self.padding_idx)
    }
}

impl Module for Embedding {
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        f(join(prefix, "weight"), &self.weight);
    }
}
