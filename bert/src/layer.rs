//! One transformer block (`encoder.layer.<i>`): attention, then the feed-forward network
//! `output(gelu(intermediate(a)), a)`, where `output` (and `attention.output`) is
//! LayerNorm(dropout(dense(x)) + residual) — post-LayerNorm, as in BERT.

use crate::attention::BertAttention;
use crate::config::BertConfig;
use crate::init::Init;
use autograd::Var;
use nn::layers::{Dropout, LayerNorm, Linear};
use nn::{join, Ctx, Module, Param};
use tensor::{Result, Tensor};

/// `intermediate`: dense H -> I, then the erf GELU.
pub struct BertIntermediate {
    pub dense: Linear,
}

impl BertIntermediate {
    pub fn new(c: &BertConfig, init: &mut Init) -> Result<BertIntermediate> {
        Ok(BertIntermediate {
            dense: init.linear(c.hidden_size, c.intermediate_size, c)?,
        })
    }

    pub fn forward(&self, x: &Var) -> Result<Var> {
        let _m = tensor::profiler::module("intermediate");
        // Its only reader is the output projection (`BertOutput`).
        self.dense.forward_gelu_for_product(x)
    }
}

impl Module for BertIntermediate {
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        self.dense.visit_params(&join(prefix, "dense"), f);
    }
}

/// `output` (and `attention.output`): LayerNorm(dropout(x W^T + b) + residual), back to H.
pub struct BertOutput {
    pub dense: Linear,
    pub layer_norm: LayerNorm,
    pub dropout: Dropout,
}

impl BertOutput {
    /// A projection from `in_features` to the hidden size.
    pub fn new(in_features: usize, c: &BertConfig, init: &mut Init) -> Result<BertOutput> {
        Ok(BertOutput {
            dense: init.linear(in_features, c.hidden_size, c)?,
            layer_norm: LayerNorm::new(c.hidden_size, c.layer_norm_eps)?,
            dropout: Dropout::new(c.hidden_dropout_prob),
        })
    }

    pub fn forward(&self, x: &Var, residual: &Var, ctx: &mut Ctx) -> Result<Var> {
        let _m = tensor::profiler::module("output");
        let y = match ctx.train && self.dropout.p != 0.0 {
            true => {
                let h = self.dense.forward(x)?;
                self.dropout.forward_add(&h, residual, ctx)?
            }
            // Dropout is the identity: the residual can join the product's epilogue.
            false => self.dense.forward_residual(x, residual)?,
        };
        self.layer_norm.forward(&y)
    }
}

impl Module for BertOutput {
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        self.dense.visit_params(&join(prefix, "dense"), f);
        self.layer_norm.visit_params(&join(prefix, "LayerNorm"), f);
    }
}

pub struct BertLayer {
    pub attention: BertAttention,
    pub intermediate: BertIntermediate,
    pub output: BertOutput,
}

impl BertLayer {
    pub fn new(c: &BertConfig, init: &mut Init) -> Result<BertLayer> {
        Ok(BertLayer {
            attention: BertAttention::new(c, init)?,
            intermediate: BertIntermediate::new(c, init)?,
            output: BertOutput::new(c.intermediate_size, c, init)?,
        })
    }

    /// x [B, L, H], `mask` the additive [B, 1, 1, L] mask (see
    /// [`extended_attention_mask`](crate::attention::extended_attention_mask)) -> [B, L, H].
    pub fn forward(&self, x: &Var, mask: Option<&Tensor>, ctx: &mut Ctx) -> Result<Var> {
        let a = self.attention.forward(x, mask, ctx)?;
        self.output
            .forward(&self.intermediate.forward(&a)?, &a, ctx)
    }
}

impl Module for BertLayer {
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        self.attention.visit_params(&join(prefix, "attention"), f);
        self.intermediate
            .visit_params(&join(prefix, "intermediate"), f);
        self.output.visit_params(&join(prefix, "output"), f);
    }
}
