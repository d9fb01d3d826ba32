//! The masked-language-model head (`cls.predictions`) and `BertForMaskedLM`.
//!
//! Head: `transform` = LayerNorm(gelu(dense(h))), then the decoder `t E^T + bias`, where E is the
//! word-embedding table itself (tied: one `Param` under `bert.embeddings.word_embeddings.weight`)
//! and `bias` is `cls.predictions.bias` (HF's `cls.predictions.decoder.bias` is the same tensor).
//!
//! The loss is HF's: mean cross-entropy over the positions whose label is not -100. Only those
//! positions go through the head: the hidden states [B, L, H] are flattened to [B*L, H], the N
//! labelled rows gathered (row-major (b, l) order), and transform + decoder run on [N, H] — the
//! same loss and gradients as HF's full [B, L, V] logits, for N/(B*L) of the work.

use crate::config::BertConfig;
use crate::init::Init;
use crate::model::BertModel;
use autograd::Var;
use nn::layers::{LayerNorm, Linear};
use nn::{join, Ctx, Module, Param};
use tensor::{bail, DType, Device, Result, Rng, Tensor};

/// Label value of positions that do not count in the loss.
pub const IGNORE_INDEX: i64 = -100;

/// `cls.predictions.transform`: LayerNorm(gelu(dense(h))).
pub struct BertPredictionHeadTransform {
    pub dense: Linear,
    pub layer_norm: LayerNorm,
}

impl BertPredictionHeadTransform {
    pub fn new(c: &BertConfig, init: &mut Init) -> Result<BertPredictionHeadTransform> {
        Ok(BertPredictionHeadTransform {
            dense: init.linear(c.hidden_size, c.hidden_size, c)?,
            layer_norm: LayerNorm::new(c.hidden_size, c.layer_norm_eps)?,
        })
    }

    pub fn forward(&self, h: &Var) -> Result<Var> {
        self.layer_norm.forward(&self.dense.forward_gelu(h)?)
    }
}

impl Module for BertPredictionHeadTransform {
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        self.dense.visit_params(&join(prefix, "dense"), f);
        self.layer_norm.visit_params(&join(prefix, "LayerNorm"), f);
    }
}

/// The MLM loss at the labelled positions and the logits there.
pub struct MlmLoss {
    /// Rank-0 mean cross-entropy (0, with zero gradients, when no position is labelled; HF gives
    /// NaN there).
    pub loss: Var,
    /// [N, V] logits at the labelled positions.
    pub logits: Var,
    /// The flat indices `b * L + l` of those positions, in order.
    pub positions: Vec<usize>,
}

/// `cls.predictions`.
pub struct BertLMPredictionHead {
    pub transform: BertPredictionHeadTransform,
    /// [V, H], shared with the word embeddings.
    pub decoder_weight: Param,
    /// [V], zero-initialised.
    pub bias: Param,
}

impl BertLMPredictionHead {
    /// `word_embeddings`: the [V, H] table the decoder is tied to.
    pub fn new(
        c: &BertConfig,
        word_embeddings: Param,
        init: &mut Init,
    ) -> Result<BertLMPredictionHead> {
        let v = word_embeddings.shape()[0];
        Ok(BertLMPredictionHead {
            transform: BertPredictionHeadTransform::new(c, init)?,
            decoder_weight: word_embeddings,
            bias: Param::new(Tensor::zeros(&[v], DType::F32, Device::Cpu)?),
        })
    }

    /// Vocabulary logits for hidden states [.., H] -> [.., V].
    pub fn forward(&self, h: &Var) -> Result<Var> {
        let _m = tensor::profiler::module("cls.predictions");
        self.logits(h)
    }

    /// [`forward`](Self::forward) inside the module's profiler scope.
    fn logits(&self, h: &Var) -> Result<Var> {
        let shape = h.shape().to_vec();
        let hsize = *shape.last().unwrap_or(&0);
        let rows = h.value().elem_count() / hsize.max(1);
        let t = self.transform.forward(&h.reshape(&[rows, hsize])?)?;
        // Under half autocast on a GPU, the kept half copy of the tied table (no cast per step).
        let logits = match nn::half_copy_product(&t, &self.decoder_weight, Some(&self.bias), false)?
        {
            Some(l) => l,
            None => t.matmul_bias(&self.decoder_weight.var().t()?, &self.bias.var())?,
        };
        let mut out = shape;
        *out.last_mut().expect("rank >= 1") = logits.shape()[1];
        logits.reshape(&out)
    }

    /// The MLM loss of hidden states [B, L, H] against labels [B, L] i64 (a vocabulary id, or
    /// [`IGNORE_INDEX`]); only the labelled positions go through the head. The labels are read
    /// on the host, so they may be a CPU tensor while the hidden states are on a GPU.
    pub fn masked_lm(&self, hidden: &Var, labels: &Tensor) -> Result<MlmLoss> {
        const OP: &str = "masked_lm";
        let _m = tensor::profiler::module("cls.predictions");
        let &[b, l, h] = hidden.shape() else {
            bail!(
                OP,
                "hidden states must be [batch, seq, hidden], got {:?}",
                hidden.shape()
            );
        };
        if labels.shape() != [b, l] || labels.dtype() != DType::I64 {
            bail!(
                OP,
                "labels must be i64 [{b}, {l}] like the hidden states, got {:?} {}",
                labels.shape(),
                labels.dtype()
            );
        }
        let v = self.bias.shape()[0];
        let (mut positions, mut targets) = (Vec::new(), Vec::new());
        for (i, &t) in labels.to_vec::<i64>()?.iter().enumerate() {
            if t == IGNORE_INDEX {
                continue;
            }
            if t < 0 || t as usize >= v {
                bail!(
                    OP,
                    "label {t} at position {i} is neither -100 nor a vocabulary id (< {v})"
                );
            }
            positions.push(i);
            targets.push(t);
        }
        let n = positions.len();
        if n == 0 {
            return Ok(MlmLoss {
                loss: hidden.sum_all()?.mul_scalar(0.0)?,
                logits: Var::constant(Tensor::zeros(
                    &[0, v],
                    hidden.value().dtype(),
                    hidden.value().device(),
                )?),
                positions,
            });
        }
        // The labels are read on the host (they may stay there); the gather index and the
        // targets go to the hidden states' device.
        let device = hidden.value().device();
        let index = Tensor::from_vec(positions.iter().map(|&p| p as i64).collect(), &[n])?
            .to_device(device)?;
        let rows = hidden.reshape(&[b * l, h])?.index_select(0, &index)?;
        let logits = self.logits(&rows)?;
        let targets = Tensor::from_vec(targets, &[n])?.to_device(device)?;
        let loss = logits.cross_entropy(&targets, IGNORE_INDEX)?;
        Ok(MlmLoss {
            loss,
            logits,
            positions,
        })
    }
}

impl Module for BertLMPredictionHead {
    /// HF order: `bias`, then `transform.*`; the tied decoder weight is listed by the embeddings.
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        f(join(prefix, "bias"), &self.bias);
        self.transform.visit_params(&join(prefix, "transform"), f);
    }
}

/// `cls`: holds `predictions` (HF's `BertOnlyMLMHead`).
pub struct BertOnlyMLMHead {
    pub predictions: BertLMPredictionHead,
}

impl Module for BertOnlyMLMHead {
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        self.predictions
            .visit_params(&join(prefix, "predictions"), f);
    }
}

/// What [`BertForMaskedLM::forward`] returns.
pub struct MaskedLmOutput {
    pub loss: Var,
    /// [N, V] at the labelled positions.
    pub logits: Var,
    /// Flat indices `b * L + l` of the labelled positions.
    pub positions: Vec<usize>,
    /// [B, L, H], the encoder's output.
    pub last_hidden_state: Var,
}

/// BERT with the MLM head: parameters `bert.*` (no pooler) and `cls.predictions.*`.
pub struct BertForMaskedLM {
    pub bert: BertModel,
    pub cls: BertOnlyMLMHead,
}

impl BertForMaskedLM {
    /// Randomly initialised as HF does (normal(0, initializer_range), zero biases including the
    /// MLM bias, LayerNorm 1/0, zero padding row), the decoder tied to the word embeddings.
    pub fn new(config: &BertConfig, rng: &mut Rng) -> Result<BertForMaskedLM> {
        Self::with_init(config, &mut Init::Hf(rng))
    }

    /// A model initialised by `init` ([`Init::Zeros`]: for weights about to be loaded).
    pub fn with_init(config: &BertConfig, init: &mut Init) -> Result<BertForMaskedLM> {
        let bert = BertModel::with_init(config, false, init)?;
        let tied = bert.embeddings.word_embeddings.weight.clone();
        let predictions = BertLMPredictionHead::new(config, tied, init)?;
        Ok(BertForMaskedLM {
            bert,
            cls: BertOnlyMLMHead { predictions },
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.bert.config
    }

    /// The MLM loss for a masked batch (see [`BertModel::forward`] for the inputs; `labels`
    /// [B, L] i64, -100 where not predicted).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        token_type_ids: Option<&Tensor>,
        labels: &Tensor,
        ctx: &mut Ctx,
    ) -> Result<MaskedLmOutput> {
        let out = {
            let _m = tensor::profiler::module("bert");
            self.bert
                .forward(input_ids, attention_mask, token_type_ids, ctx)?
        };
        let mlm = self
            .cls
            .predictions
            .masked_lm(&out.last_hidden_state, labels)?;
        Ok(MaskedLmOutput {
            loss: mlm.loss,
            logits: mlm.logits,
            positions: mlm.positions,
            last_hidden_state: out.last_hidden_state,
        })
    }

    /// Logits at every position, [B, L, V] (inference; training uses [`forward`](Self::forward)).
    pub fn logits(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        token_type_ids: Option<&Tensor>,
        ctx: &mut Ctx,
    ) -> Result<Var> {
        let out = {
            let _m = tensor::profiler::module("bert");
            self.bert
                .forward(input_ids, attention_mask, token_type_ids, ctx)?
        };
        self.cls.predictions.forward(&out.last_hidden_state)
    }
}

impl Module for BertForMaskedLM {
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        self.bert.visit_params(&join(prefix, "bert"), f);
        self.cls.visit_params(&join(prefix, "cls"), f);
    }
}
