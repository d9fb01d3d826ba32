//! Parameter initialisation. [`Init::Hf`] is HF's `_init_weights`: dense and embedding weights
//! normal(0, initializer_range) (the padding row of the word embeddings zero), biases zero
//! (the MLM bias included), LayerNorm weight 1 and bias 0. [`Init::Zeros`] only allocates (zero
//! pages, LayerNorm weights 1): for a model whose weights are about to be loaded, so loading
//! bert-base does not first draw 110M random numbers. [`reinit`] then gives HF's initialisation
//! to whatever the checkpoint lacked.

use crate::config::BertConfig;
use nn::layers::{Embedding, Linear};
use nn::Param;
use tensor::{DType, Device, Result, Rng, Tensor};

pub enum Init<'a> {
    /// HF's initialisation, drawing from the generator in parameter order.
    Hf(&'a mut Rng),
    /// Zero weights and biases, LayerNorm weights 1.
    Zeros,
}

fn zeros(shape: &[usize]) -> Result<Param> {
    Ok(Param::new(Tensor::zeros(shape, DType::F32, Device::Cpu)?))
}

impl Init<'_> {
    /// A dense layer with bias, weight [out, in].
    pub fn linear(
        &mut self,
        in_features: usize,
        out_features: usize,
        c: &BertConfig,
    ) -> Result<Linear> {
        match self {
            Init::Hf(rng) => Linear::new(in_features, out_features, true, c.initializer_range, rng),
            Init::Zeros => Ok(Linear::from_params(
                zeros(&[out_features, in_features])?,
                Some(zeros(&[out_features])?),
            )),
        }
    }

    /// An embedding table [num, dim].
    pub fn embedding(
        &mut self,
        num: usize,
        dim: usize,
        padding_idx: Option<usize>,
        c: &BertConfig,
    ) -> Result<Embedding> {
        match self {
            Init::Hf(rng) => Embedding::new(num, dim, padding_idx, c.initializer_range, rng),
            Init::Zeros => Ok(Embedding {
                weight: zeros(&[num, dim])?,
                padding_idx,
            }),
        }
    }
}

/// Replaces parameter `name` by HF's initialisation for it, judged by its name: `*LayerNorm.weight`
/// 1, `*bias` 0, any other weight normal(0, initializer_range), with row `pad_token_id` of
/// `*word_embeddings.weight` zero.
pub fn reinit(name: &str, p: &Param, c: &BertConfig, rng: &mut Rng) -> Result<()> {
    let shape = p.shape();
    let t = if name.ends_with("LayerNorm.weight") {
        Tensor::ones(&shape, DType::F32, Device::Cpu)?
    } else if name.ends_with("bias") {
        Tensor::zeros(&shape, DType::F32, Device::Cpu)?
    } else {
        let mut t = Tensor::randn(
            &shape,
            0.0,
            c.initializer_range,
            DType::F32,
            Device::Cpu,
            rng,
        )?;
        if let (true, Some(pad), &[n, d]) = (
            name.ends_with("word_embeddings.weight"),
            c.pad_token_id,
            shape.as_slice(),
        ) {
            if pad < n {
                t.data_mut::<f32>()?[pad * d..(pad + 1) * d].fill(0.0);
            }
        }
        t
    };
    p.set(name, t)
}
