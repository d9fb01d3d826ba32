//! `BertEmbeddings`: the input layer. For ids [B, L], the output is
//! `LayerNorm(word[ids] + token_type[token_type_ids] + position[0..L])` then dropout, [B, L, H],
//! summed in HF's order (word + token type, then + position) so results match to the last bit
//! that summation order can decide.

use crate::config::BertConfig;
use crate::init::Init;
use autograd::Var;
use nn::layers::{Dropout, Embedding, LayerNorm};
use nn::{join, Ctx, Module, Param};
use tensor::{bail, DType, Result, Tensor};

pub struct BertEmbeddings {
    pub word_embeddings: Embedding,
    pub position_embeddings: Embedding,
    pub token_type_embeddings: Embedding,
    pub layer_norm: LayerNorm,
    pub dropout: Dropout,
}

impl BertEmbeddings {
    /// HF initialisation: every table normal(0, initializer_range), the padding row of the word
    /// embeddings zero; LayerNorm 1 and 0.
    pub fn new(c: &BertConfig, init: &mut Init) -> Result<BertEmbeddings> {
        Ok(BertEmbeddings {
            word_embeddings: init.embedding(c.vocab_size, c.hidden_size, c.pad_token_id, c)?,
            position_embeddings: init.embedding(
                c.max_position_embeddings,
                c.hidden_size,
                None,
                c,
            )?,
            token_type_embeddings: init.embedding(c.type_vocab_size, c.hidden_size, None, c)?,
            layer_norm: LayerNorm::new(c.hidden_size, c.layer_norm_eps)?,
            dropout: Dropout::new(c.hidden_dropout_prob),
        })
    }

    /// `input_ids` [B, L] i64; `token_type_ids` [B, L] i64 or `None` (all segment 0).
    /// Returns [B, L, H].
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        ctx: &mut Ctx,
    ) -> Result<Var> {
        const OP: &str = "BertEmbeddings";
        let _m = tensor::profiler::module("embeddings");
        if input_ids.rank() != 2 || input_ids.dtype() != DType::I64 {
            bail!(
                OP,
                "input_ids must be [batch, seq] i64, got {:?} {}",
                input_ids.shape(),
                input_ids.dtype()
            );
        }
        let len = input_ids.shape()[1];
        let max = self.position_embeddings.weight.shape()[0];
        if len > max {
            bail!(
                OP,
                "sequence length {len} exceeds max_position_embeddings {max}"
            );
        }
        let words = self.word_embeddings.forward(input_ids)?;
        let with_types = match token_type_ids {
            Some(tt) => {
                if tt.shape() != input_ids.shape() || tt.dtype() != DType::I64 {
                    bail!(
                        OP,
                        "token_type_ids must be i64 of the input_ids' shape {:?}, got {:?} {}",
                        input_ids.shape(),
                        tt.shape(),
                        tt.dtype()
                    );
                }
                words.add(&self.token_type_embeddings.forward(tt)?)?
            }
            // Segment 0 everywhere: row 0 of the table, broadcast.
            None => words.add(&self.token_type_embeddings.weight.var().narrow(0, 0, 1)?)?,
        };
        let positions = Tensor::arange(0.0, len as f64, 1.0, DType::I64, input_ids.device())?;
        let x = with_types.add(&self.position_embeddings.forward(&positions)?)?;
        self.dropout.forward(&self.layer_norm.forward(&x)?, ctx)
    }
}

impl Module for BertEmbeddings {
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        self.word_embeddings
            .visit_params(&join(prefix, "word_embeddings"), f);
        self.position_embeddings
            .visit_params(&join(prefix, "position_embeddings"), f);
        self.token_type_embeddings
            .visit_params(&join(prefix, "token_type_embeddings"), f);
        self.layer_norm.visit_params(&join(prefix, "LayerNorm"), f);
    }
}
