//! `BertModel`: embeddings, encoder and (optionally) the pooler, with HF's parameter names
//! (`embeddings.*`, `encoder.layer.<i>.*`, `pooler.dense.*`) in HF's state_dict order.
//!
//! ```text
//! input_ids [B, L] --embeddings--> [B, L, H] --layer 0..n (additive padding mask)--> last [B, L, H]
//!                                                   pooler: tanh(dense(last[:, 0])) -> [B, H]
//! ```

use crate::attention::extended_attention_mask;
use crate::config::BertConfig;
use crate::embeddings::BertEmbeddings;
use crate::encoder::BertEncoder;
use crate::init::Init;
use autograd::Var;
use nn::layers::Linear;
use nn::{join, Ctx, Module, Param};
use tensor::{bail, Result, Rng, Tensor};

/// `pooler`: tanh(dense(hidden state of the first token)).
pub struct BertPooler {
    pub dense: Linear,
}

impl BertPooler {
    pub fn new(c: &BertConfig, init: &mut Init) -> Result<BertPooler> {
        Ok(BertPooler {
            dense: init.linear(c.hidden_size, c.hidden_size, c)?,
        })
    }

    /// [B, L, H] -> [B, H].
    pub fn forward(&self, hidden: &Var) -> Result<Var> {
        let _m = tensor::profiler::module("pooler");
        let first = hidden.narrow(1, 0, 1)?.squeeze(1)?;
        self.dense.forward(&first)?.tanh()
    }
}

impl Module for BertPooler {
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        self.dense.visit_params(&join(prefix, "dense"), f);
    }
}

/// What [`BertModel::forward`] returns.
pub struct BertModelOutput {
    /// [B, L, H].
    pub last_hidden_state: Var,
    /// [B, H], when the model has a pooler.
    pub pooler_output: Option<Var>,
    /// The embedding output then every layer's output (only from [`BertModel::forward_all`]).
    pub hidden_states: Vec<Var>,
}

pub struct BertModel {
    pub config: BertConfig,
    pub embeddings: BertEmbeddings,
    pub encoder: BertEncoder,
    pub pooler: Option<BertPooler>,
}

impl BertModel {
    /// A randomly initialised model (HF's `_init_weights`), drawing from `rng` in parameter order.
    pub fn new(config: &BertConfig, add_pooling_layer: bool, rng: &mut Rng) -> Result<BertModel> {
        Self::with_init(config, add_pooling_layer, &mut Init::Hf(rng))
    }

    /// A model initialised by `init` ([`Init::Zeros`]: for weights about to be loaded).
    pub fn with_init(
        config: &BertConfig,
        add_pooling_layer: bool,
        init: &mut Init,
    ) -> Result<BertModel> {
        let embeddings = BertEmbeddings::new(config, init)?;
        let encoder = BertEncoder::new(config, init)?;
        let pooler = add_pooling_layer
            .then(|| BertPooler::new(config, init))
            .transpose()?;
        Ok(BertModel {
            config: config.clone(),
            embeddings,
            encoder,
            pooler,
        })
    }

    /// `input_ids` [B, L] i64; `attention_mask` [B, L] (1 = token, 0 = padding; any dtype; None:
    /// attend everywhere); `token_type_ids` [B, L] i64 (None: all 0).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        token_type_ids: Option<&Tensor>,
        ctx: &mut Ctx,
    ) -> Result<BertModelOutput> {
        self.run(input_ids, attention_mask, token_type_ids, ctx, false)
    }

    /// [`forward`](Self::forward), also returning every hidden state (HF's
    /// `output_hidden_states=True`).
    pub fn forward_all(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        token_type_ids: Option<&Tensor>,
        ctx: &mut Ctx,
    ) -> Result<BertModelOutput> {
        self.run(input_ids, attention_mask, token_type_ids, ctx, true)
    }

    fn run(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        token_type_ids: Option<&Tensor>,
        ctx: &mut Ctx,
        all: bool,
    ) -> Result<BertModelOutput> {
        let x = self.embeddings.forward(input_ids, token_type_ids, ctx)?;
        let mask = match attention_mask {
            Some(m) => {
                if m.shape() != input_ids.shape() {
                    bail!(
                        "BertModel",
                        "attention_mask shape {:?} differs from input_ids {:?}",
                        m.shape(),
                        input_ids.shape()
                    );
                }
                Some(extended_attention_mask(m, x.value().dtype())?)
            }
            None => None,
        };
        let (last, hidden_states) = if all {
            let hs = self.encoder.forward_all(&x, mask.as_ref(), ctx)?;
            (
                hs.last().expect("at least the embedding output").clone(),
                hs,
            )
        } else {
            (self.encoder.forward(&x, mask.as_ref(), ctx)?, Vec::new())
        };
        let pooler_output = match &self.pooler {
            Some(p) => Some(p.forward(&last)?),
            None => None,
        };
        Ok(BertModelOutput {
            last_hidden_state: last,
            pooler_output,
            hidden_states,
        })
    }
}

impl Module for BertModel {
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        self.embeddings.visit_params(&join(prefix, "embeddings"), f);
        self.encoder.visit_params(&join(prefix, "encoder"), f);
        if let Some(p) = &self.pooler {
            p.visit_params(&join(prefix, "pooler"), f);
        }
    }
}
