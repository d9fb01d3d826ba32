//! `BertEncoder`: the stack of `encoder.layer.<i>` blocks, applied in order with one shared
//! additive attention mask.

use crate::config::BertConfig;
use crate::init::Init;
use crate::layer::BertLayer;
use autograd::Var;
use nn::{join, Ctx, Module, Param};
use tensor::{Result, Tensor};

pub struct BertEncoder {
    pub layers: Vec<BertLayer>,
}

impl BertEncoder {
    pub fn new(c: &BertConfig, init: &mut Init) -> Result<BertEncoder> {
        let layers = (0..c.num_hidden_layers)
            .map(|_| BertLayer::new(c, init))
            .collect::<Result<_>>()?;
        Ok(BertEncoder { layers })
    }

    /// The last layer's output for input x [B, L, H].
    pub fn forward(&self, x: &Var, mask: Option<&Tensor>, ctx: &mut Ctx) -> Result<Var> {
        self.run(x, mask, ctx, None)
    }

    /// Every hidden state: the input, then each layer's output (`num_hidden_layers + 1` values,
    /// HF's `output_hidden_states`).
    pub fn forward_all(&self, x: &Var, mask: Option<&Tensor>, ctx: &mut Ctx) -> Result<Vec<Var>> {
        let mut all = vec![x.clone()];
        self.run(x, mask, ctx, Some(&mut all))?;
        Ok(all)
    }

    fn run(
        &self,
        x: &Var,
        mask: Option<&Tensor>,
        ctx: &mut Ctx,
        mut keep: Option<&mut Vec<Var>>,
    ) -> Result<Var> {
        let _m = tensor::profiler::module("encoder");
        let mut h = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let _l = tensor::profiler::module(format_args!("layer.{i}"));
            h = layer.forward(&h, mask, ctx)?;
            if let Some(k) = keep.as_deref_mut() {
                k.push(h.clone());
            }
        }
        Ok(h)
    }
}

impl Module for BertEncoder {
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        for (i, layer) in self.layers.iter().enumerate() {
            layer.visit_params(&join(prefix, &format!("layer.{i}")), f);
        }
    }
}
