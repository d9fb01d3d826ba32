//! `BertForCotMAE` (REFERENCE §3): a BERT MLM encoder plus a shallow decoder head that
//! reconstructs a *contextual* span from its own heavily masked tokens and the encoder's [CLS]
//! vector of the partner span.
//!
//! ```text
//! encoder  input_ids [2B, L] ──lm.bert──▶ h [2B, L, H] ──lm.cls (masked rows)──▶ encoder_mlm_loss
//!                                          │ h[:, 0]  (row i: the [CLS] of text i)
//!                                          ▼
//! decoder  decoder_input_ids [2B, L] (row i holds text i^1, masked at 0.45)
//!          ──lm.bert.embeddings──▶ e [2B, L, H];  x = cat(h[:, :1], e[:, 1:])
//!          ──c_head.0..n (decoder_attention_mask)──▶ ──lm.cls (masked rows)──▶ head_mlm_loss
//! loss = encoder_mlm_loss + head_mlm_coef * head_mlm_loss
//! ```
//!
//! The embeddings and the MLM head are shared between encoder and decoder, so the decoder's
//! gradient flows into the encoder through the [CLS] vector *and* through those shared weights.
//! Parameter names follow the original's `state_dict` (its `BertForCotMAE` subclasses
//! `BertForMaskedLM`): `bert.*`, `cls.*`, then `c_head.<i>.*`; so a full checkpoint loads as an HF
//! `BertForMaskedLM` (the head's keys reported unexpected). Only `lm` (a plain `BertForMaskedLM`)
//! is kept for fine-tuning ([`BertForCotMAE::save_encoder`]).

use std::path::Path;

use autograd::Var;
use bert::{BertConfig, BertForMaskedLM, BertLayer, Init, Tokenizer};
use nn::{join, Ctx, Module, Param};
use tensor::{bail, Result, Rng};

use crate::collator::CotMaeBatch;

/// The model switches of the original's `ModelArguments`.
#[derive(Clone, Debug, PartialEq)]
pub struct CotMaeModelArgs {
    /// Build the decoder head (`c_head`).
    pub use_decoder_head: bool,
    /// Add the decoder's MLM loss to the loss.
    pub enable_head_mlm: bool,
    /// Transformer layers in the decoder head.
    pub n_head_layers: usize,
    /// Weight of the decoder's MLM loss.
    pub head_mlm_coef: f64,
}

impl Default for CotMaeModelArgs {
    fn default() -> Self {
        CotMaeModelArgs {
            use_decoder_head: true,
            enable_head_mlm: true,
            n_head_layers: 2,
            head_mlm_coef: 1.0,
        }
    }
}

/// The losses of one forward pass (rank-0 `Var`s).
pub struct CotMaeOutput {
    /// `encoder_mlm_loss + head_mlm_coef * head_mlm_loss` (just the encoder's without a head).
    pub loss: Var,
    pub encoder_mlm_loss: Var,
    /// The decoder's MLM loss (None when the head or its loss is disabled).
    pub head_mlm_loss: Option<Var>,
}

pub struct BertForCotMAE {
    /// The encoder with its MLM head: what pretraining produces.
    pub lm: BertForMaskedLM,
    /// The decoder head (empty when `use_decoder_head` is off).
    pub c_head: Vec<BertLayer>,
    pub args: CotMaeModelArgs,
}

impl BertForCotMAE {
    /// Wraps an encoder (loaded or fresh) and builds the decoder head with BERT's
    /// initialisation (normal(0, initializer_range) weights, zero biases, LayerNorm 1/0), drawn
    /// from `rng`.
    pub fn new(lm: BertForMaskedLM, args: CotMaeModelArgs, rng: &mut Rng) -> Result<Self> {
        let c_head = if args.use_decoder_head {
            let mut init = Init::Hf(rng);
            (0..args.n_head_layers)
                .map(|_| BertLayer::new(lm.config(), &mut init))
                .collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        Ok(BertForCotMAE { lm, c_head, args })
    }

    /// A fresh model: the encoder from `config`, then the head, both drawn from `rng`.
    pub fn from_config(config: &BertConfig, args: CotMaeModelArgs, rng: &mut Rng) -> Result<Self> {
        let lm = BertForMaskedLM::new(config, rng)?;
        Self::new(lm, args, rng)
    }

    pub fn config(&self) -> &BertConfig {
        self.lm.config()
    }

    fn head_loss_enabled(&self) -> bool {
        self.args.use_decoder_head && self.args.enable_head_mlm
    }

    /// The losses of one batch from [`CotMaeCollator`](crate::CotMaeCollator).
    pub fn forward(&self, batch: &CotMaeBatch, ctx: &mut Ctx) -> Result<CotMaeOutput> {
        let enc = self.lm.forward(
            &batch.input_ids,
            Some(&batch.attention_mask),
            None,
            &batch.labels,
            ctx,
        )?;
        if !self.head_loss_enabled() {
            return Ok(CotMaeOutput {
                loss: enc.loss.clone(),
                encoder_mlm_loss: enc.loss,
                head_mlm_loss: None,
            });
        }
        let head_loss = self.decoder_loss(&enc.last_hidden_state, batch, ctx)?;
        let loss = enc
            .loss
            .add(&head_loss.mul_scalar(self.args.head_mlm_coef)?)?;
        Ok(CotMaeOutput {
            loss,
            encoder_mlm_loss: enc.loss,
            head_mlm_loss: Some(head_loss),
        })
    }

    /// The decoder head's MLM loss given the encoder's last hidden states [2B, L, H].
    fn decoder_loss(&self, hidden: &Var, batch: &CotMaeBatch, ctx: &mut Ctx) -> Result<Var> {
        let ids = &batch.decoder_input_ids;
        let &[rows, len] = ids.shape() else {
            bail!(
                "BertForCotMAE",
                "decoder_input_ids must be [batch, seq], got {:?}",
                ids.shape()
            );
        };
        if hidden.shape()[0] != rows || len < 1 {
            bail!(
                "BertForCotMAE",
                "decoder batch {:?} does not match the encoder's {:?}",
                ids.shape(),
                hidden.shape()
            );
        }
        let cls = hidden.narrow(1, 0, 1)?;
        let emb = {
            let _m = tensor::profiler::module("bert");
            self.lm.bert.embeddings.forward(ids, None, ctx)?
        };
        let mut x = Var::cat(&[&cls, &emb.narrow(1, 1, len - 1)?], 1)?;
        let mask = bert::extended_attention_mask(&batch.decoder_attention_mask, x.value().dtype())?;
        for (i, layer) in self.c_head.iter().enumerate() {
            let _m = tensor::profiler::module(format_args!("c_head.{i}"));
            x = layer.forward(&x, Some(&mask), ctx)?;
        }
        Ok(self
            .lm
            .cls
            .predictions
            .masked_lm(&x, &batch.decoder_labels)?
            .loss)
    }

    /// Writes the encoder as an HF `BertForMaskedLM` directory (what fine-tuning starts from).
    pub fn save_encoder(
        &self,
        dir: impl AsRef<Path>,
        tokenizer: Option<&Tokenizer>,
    ) -> bert::Result<()> {
        self.lm.save_pretrained(dir, tokenizer)
    }
}

impl Module for BertForCotMAE {
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        self.lm.visit_params(prefix, f);
        for (i, layer) in self.c_head.iter().enumerate() {
            layer.visit_params(&join(prefix, &format!("c_head.{i}")), f);
        }
    }
}

/// Convenience for tests and the trainer: the three losses as f64.
pub fn loss_values(out: &CotMaeOutput) -> Result<(f64, f64, Option<f64>)> {
    let v = |x: &Var| -> Result<f64> { Ok(x.value().to_vec_f64()?[0]) };
    Ok((
        v(&out.loss)?,
        v(&out.encoder_mlm_loss)?,
        out.head_mlm_loss.as_ref().map(v).transpose()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collator::{CollatorConfig, CotMaeCollator};

    fn tiny() -> BertConfig {
        BertConfig {
            vocab_size: 40,
            hidden_size: 16,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            intermediate_size: 32,
            max_position_embeddings: 32,
            hidden_dropout_prob: 0.0,
            attention_probs_dropout_prob: 0.0,
            ..BertConfig::default()
        }
    }

    #[test]
    fn names_follow_the_original_state_dict() {
        let mut rng = Rng::new(1);
        let m = BertForCotMAE::from_config(&tiny(), CotMaeModelArgs::default(), &mut rng).unwrap();
        let names: Vec<String> = m.named_params().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names[0], "bert.embeddings.word_embeddings.weight");
        assert!(names.contains(&"cls.predictions.bias".to_string()));
        assert!(names.contains(&"c_head.1.output.LayerNorm.bias".to_string()));
        assert!(!names.iter().any(|n| n.starts_with("c_head.2")));
        let no_head = CotMaeModelArgs {
            use_decoder_head: false,
            ..CotMaeModelArgs::default()
        };
        let m = BertForCotMAE::from_config(&tiny(), no_head, &mut rng).unwrap();
        assert!(!m
            .named_params()
            .iter()
            .any(|(n, _)| n.starts_with("c_head")));
    }

    #[test]
    fn loss_is_encoder_plus_weighted_head_and_gradients_reach_both() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/tokenizer/vocab.txt"
        );
        let tok = Tokenizer::from_vocab_file(path, true).unwrap();
        let mut collator = CotMaeCollator::new(
            &tok,
            CollatorConfig {
                max_seq_length: 12,
                ..CollatorConfig::default()
            },
            3,
        )
        .unwrap();
        let texts: Vec<Vec<u32>> = (0..4)
            .map(|r| {
                (0..6 + r)
                    .map(|i| 2000 + ((i * 7 + r * 3) % 35) as u32)
                    .collect()
            })
            .collect();
        let batch = collator.collate_texts(&texts).unwrap();
        let args = CotMaeModelArgs {
            head_mlm_coef: 0.5,
            ..CotMaeModelArgs::default()
        };
        let config = BertConfig {
            vocab_size: tok.vocab_size(),
            ..tiny()
        };
        let m = BertForCotMAE::from_config(&config, args, &mut Rng::new(7)).unwrap();
        let out = m.forward(&batch, &mut Ctx::train(0)).unwrap();
        let (loss, enc, head) = loss_values(&out).unwrap();
        let head = head.unwrap();
        assert!(enc > 0.0 && head > 0.0);
        assert!((loss - (enc + 0.5 * head)).abs() < 1e-5 * loss);
        let grads = out.loss.backward().unwrap();
        for (name, p) in m.named_params() {
            let g = grads
                .get(&p.var())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let norm: f64 = g.to_vec_f64().unwrap().iter().map(|x| x * x).sum();
            // Position embeddings past the sequence length and the padding row get none.
            if name.starts_with("c_head") || name.ends_with("dense.weight") {
                assert!(norm > 0.0, "{name} has a zero gradient");
            }
        }
    }
}
