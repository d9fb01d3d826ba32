//! Tevatron's `DenseModel` (REFERENCE §6): one BERT shared by queries and passages, a text's
//! representation is the last hidden state at [CLS] (no pooler, no normalisation), and the
//! training loss is a softmax over every passage of the batch.
//!
//! ```text
//! query  [Q, q_len]      --BERT--> last[:, 0] = q_reps [Q, H]
//! passage [Q*n, p_len]   --BERT--> last[:, 0] = p_reps [Q*n, H]    (per query: positive, n-1 negatives)
//! scores = q_reps p_reps^T [Q, Q*n]; target of query i = column i*n; loss = mean cross-entropy
//! ```
//!
//! Each query's own hard negatives and every other query's passages (in-batch negatives) are in
//! its softmax. Also here: [`TokenBatch`], the model input (`[CLS] ids[..max_len-2] [SEP]`, padded,
//! with its attention mask), and the poolings `encode` offers ([`Pooling::Cls`], and
//! [`Pooling::Mean`] + [`l2_normalize`] for sentence-transformers models).

use std::path::Path;

use autograd::Var;
use bert::{BertModel, LoadReport, Tokenizer};
use nn::Ctx;
use tensor::Tensor;

use crate::{Error, Result};

/// The token ids a [`TokenBatch`] adds around and after each text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecialIds {
    pub cls: u32,
    pub sep: u32,
    pub pad: u32,
}

impl SpecialIds {
    pub fn from_tokenizer(tok: &Tokenizer) -> SpecialIds {
        SpecialIds {
            cls: tok.cls_id(),
            sep: tok.sep_id(),
            pad: tok.pad_id(),
        }
    }
}

/// How long a [`TokenBatch`]'s rows are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadTo {
    /// Every row `max_len` long (Tevatron's `padding='max_length'`).
    MaxLen,
    /// Rows as long as the longest text of the batch (same vectors, less work).
    Longest,
}

/// A padded batch of texts, each `[CLS] + ids[..max_len - 2] + [SEP]` (Tevatron's
/// `encode_plus(truncation='only_first', max_length=max_len)`).
#[derive(Clone, Debug)]
pub struct TokenBatch {
    /// [B, L] i64, padding `SpecialIds::pad`.
    pub input_ids: Tensor,
    /// [B, L] i64, 1 on real tokens (the special tokens included), 0 on padding.
    pub attention_mask: Tensor,
}

impl TokenBatch {
    pub fn new(
        texts: &[&[u32]],
        max_len: usize,
        pad_to: PadTo,
        special: SpecialIds,
    ) -> Result<TokenBatch> {
        if max_len < 2 {
            return Err(Error::Config(format!(
                "max_len {max_len} leaves no room for [CLS] and [SEP]"
            )));
        }
        if texts.is_empty() {
            return Err(Error::Config("a batch needs at least one text".into()));
        }
        let content = max_len - 2;
        let len = match pad_to {
            PadTo::MaxLen => max_len,
            PadTo::Longest => {
                2 + texts
                    .iter()
                    .map(|t| t.len().min(content))
                    .max()
                    .unwrap_or(0)
            }
        };
        let mut ids = vec![special.pad as i64; texts.len() * len];
        let mut mask = vec![0i64; texts.len() * len];
        for (i, t) in texts.iter().enumerate() {
            let t = &t[..t.len().min(content)];
            let row = &mut ids[i * len..(i + 1) * len];
            row[0] = special.cls as i64;
            for (slot, &id) in row[1..].iter_mut().zip(t) {
                *slot = id as i64;
            }
            row[t.len() + 1] = special.sep as i64;
            mask[i * len..i * len + t.len() + 2].fill(1);
        }
        Ok(TokenBatch {
            input_ids: Tensor::from_vec(ids, &[texts.len(), len])?,
            attention_mask: Tensor::from_vec(mask, &[texts.len(), len])?,
        })
    }

    /// Number of texts.
    pub fn len(&self) -> usize {
        self.input_ids.shape()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row length L.
    pub fn seq_len(&self) -> usize {
        self.input_ids.shape()[1]
    }

    /// The batch on `device` (the same tensors when they are there already).
    pub fn to_device(&self, device: tensor::Device) -> Result<TokenBatch> {
        Ok(TokenBatch {
            input_ids: self.input_ids.to_device(device)?,
            attention_mask: self.attention_mask.to_device(device)?,
        })
    }
}

/// How token states become one vector per text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// The last hidden state at [CLS] (Tevatron).
    Cls,
    /// The mean of the last hidden states over the attention mask (sentence-transformers).
    Mean,
}

impl Pooling {
    pub fn from_name(s: &str) -> Option<Pooling> {
        match s {
            "cls" => Some(Pooling::Cls),
            "mean" => Some(Pooling::Mean),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
        }
    }
}

/// Pools `hidden` [B, L, H] to [B, H]. Mean pooling divides the masked sum by the number of real
/// tokens (clamped to 1e-9, as sentence-transformers does).
pub fn pool(hidden: &Var, attention_mask: &Tensor, pooling: Pooling) -> Result<Var> {
    let _m = tensor::profiler::module("pooler");
    match pooling {
        Pooling::Cls => Ok(hidden.narrow(1, 0, 1)?.squeeze(1)?),
        Pooling::Mean => {
            let dtype = hidden.value().dtype();
            let (b, l) = (attention_mask.shape()[0], attention_mask.shape()[1]);
            let mask = attention_mask.to_dtype(dtype)?;
            let count = mask.sum(&[1], true)?.maximum_scalar(1e-9)?;
            let mask = Var::constant(mask.reshape(&[b, l, 1])?);
            let sum = hidden.mul(&mask)?.sum(&[1], false)?;
            Ok(sum.div(&Var::constant(count))?)
        }
    }
}

/// Rows divided by their L2 norm (at least 1e-12), as `torch.nn.functional.normalize`.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum(&[1], true)?.sqrt()?.maximum_scalar(1e-12)?;
    Ok(x.div(&norm)?)
}

/// Scores, target and loss of one batch (see the module docs).
pub struct DenseOutput {
    /// [Q, H].
    pub q_reps: Var,
    /// [Q * n, H].
    pub p_reps: Var,
    /// [Q, Q * n].
    pub scores: Var,
    /// Scalar mean cross-entropy.
    pub loss: Var,
}

// ANCHOR: contrastive_loss
/// The contrastive loss over `q_reps` [Q, H] and `p_reps` [Q * n, H] (passages grouped per query,
/// positive first): returns (scores [Q, Q * n], loss).
pub fn contrastive_loss(q_reps: &Var, p_reps: &Var) -> Result<(Var, Var)> {
    let (q, p) = (q_reps.shape()[0], p_reps.shape()[0]);
    if q == 0 || p % q != 0 {
        return Err(Error::Config(format!(
            "contrastive loss: {p} passages for {q} queries (expected a positive multiple)"
        )));
    }
    let n = p / q;
    let scores = q_reps.matmul(&p_reps.t()?)?;
    let target: Vec<i64> = (0..q as i64).map(|i| i * n as i64).collect();
    let target = Tensor::from_vec(target, &[q])?.to_device(scores.value().device())?;
    let loss = scores.cross_entropy(&target, -100)?;
    Ok((scores, loss))
}
// ANCHOR_END: contrastive_loss

/// The shared-encoder dense retriever.
pub struct DenseModel {
    pub encoder: BertModel,
}

impl DenseModel {
    pub fn new(encoder: BertModel) -> DenseModel {
        DenseModel { encoder }
    }

    /// Loads an HF model directory as `AutoModel.from_pretrained` would. The pooler is kept when
    /// the checkpoint has one (saved back unchanged; the loss never uses it) and left out when it
    /// has none, instead of being randomly initialised. A missing encoder weight is an error
    /// naming the file and the tensors unless `allow_random_init` (`--allow_random_init`).
    pub fn from_pretrained(
        dir: impl AsRef<Path>,
        allow_random_init: bool,
    ) -> Result<(DenseModel, LoadReport)> {
        let (mut encoder, mut report) = BertModel::from_pretrained(dir, true)?;
        report.require(&|n| !bert::is_head_param(n), allow_random_init)?;
        let is_pooler = |n: &String| n.starts_with("pooler.");
        if report.missing.iter().filter(|n| is_pooler(n)).count() == 2 {
            encoder.pooler = None;
            report.missing.retain(|n| !is_pooler(n));
        }
        Ok((DenseModel { encoder }, report))
    }

    /// Writes an HF `BertModel` directory (with the tokenizer's files when given).
    pub fn save_pretrained(
        &self,
        dir: impl AsRef<Path>,
        tokenizer: Option<&Tokenizer>,
    ) -> Result<()> {
        Ok(self.encoder.save_pretrained(dir, tokenizer)?)
    }

    /// Where the encoder's parameters are (those of the word embeddings; `nn::module::to_device`
    /// moves them all together).
    pub fn device(&self) -> tensor::Device {
        let w = &self.encoder.embeddings.word_embeddings.weight;
        w.tensor().device()
    }

    /// The hidden size H.
    pub fn dim(&self) -> usize {
        self.encoder.config.hidden_size
    }

    /// Token states pooled to [B, H].
    pub fn encode_pooled(
        &self,
        batch: &TokenBatch,
        pooling: Pooling,
        ctx: &mut Ctx,
    ) -> Result<Var> {
        let out = self
            .encoder
            .forward(&batch.input_ids, Some(&batch.attention_mask), None, ctx)?;
        pool(&out.last_hidden_state, &batch.attention_mask, pooling)
    }

    /// Tevatron's `encode_query` / `encode_passage`: [CLS] states [B, H].
    pub fn encode(&self, batch: &TokenBatch, ctx: &mut Ctx) -> Result<Var> {
        self.encode_pooled(batch, Pooling::Cls, ctx)
    }

    /// Tevatron's `DenseModel.forward` in training mode on one process: the queries and the
    /// passages go through the encoder separately (so dropout draws differ), then
    /// [`contrastive_loss`].
    pub fn forward(
        &self,
        query: &TokenBatch,
        passages: &TokenBatch,
        ctx: &mut Ctx,
    ) -> Result<DenseOutput> {
        let q_reps = self.encode(query, ctx)?;
        let p_reps = self.encode(passages, ctx)?;
        let (scores, loss) = contrastive_loss(&q_reps, &p_reps)?;
        Ok(DenseOutput {
            q_reps,
            p_reps,
            scores,
            loss,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECIAL: SpecialIds = SpecialIds {
        cls: 2,
        sep: 3,
        pad: 0,
    };

    #[test]
    fn token_batch_adds_specials_truncates_and_pads() {
        let texts: [&[u32]; 3] = [&[10, 11, 12, 13, 14], &[20], &[]];
        let b = TokenBatch::new(&texts, 5, PadTo::MaxLen, SPECIAL).unwrap();
        assert_eq!(b.input_ids.shape(), &[3, 5]);
        assert_eq!(
            b.input_ids.to_vec::<i64>().unwrap(),
            [2, 10, 11, 12, 3, 2, 20, 3, 0, 0, 2, 3, 0, 0, 0]
        );
        assert_eq!(
            b.attention_mask.to_vec::<i64>().unwrap(),
            [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0]
        );
        let short: [&[u32]; 2] = [&[20], &[]];
        let b = TokenBatch::new(&short, 5, PadTo::Longest, SPECIAL).unwrap();
        assert_eq!(b.input_ids.to_vec::<i64>().unwrap(), [2, 20, 3, 2, 3, 0]);
        assert_eq!(b.seq_len(), 3);
        assert!(TokenBatch::new(&short, 1, PadTo::MaxLen, SPECIAL).is_err());
        assert!(TokenBatch::new(&[], 8, PadTo::MaxLen, SPECIAL).is_err());
    }

    #[test]
    fn mean_pooling_ignores_padding_and_normalize_gives_unit_rows() {
        // hidden [2, 3, 2]; row 0 has 2 real tokens, row 1 has 3.
        let h = Tensor::from_vec(
            vec![1f32, 2., 3., 4., 100., 100., 1., 1., 2., 2., 3., 3.],
            &[2, 3, 2],
        )
        .unwrap();
        let mask = Tensor::from_vec(vec![1i64, 1, 0, 1, 1, 1], &[2, 3]).unwrap();
        let m = pool(&Var::constant(h.clone()), &mask, Pooling::Mean).unwrap();
        assert_eq!(m.value().to_vec::<f32>().unwrap(), [2., 3., 2., 2.]);
        let c = pool(&Var::constant(h), &mask, Pooling::Cls).unwrap();
        assert_eq!(c.value().to_vec::<f32>().unwrap(), [1., 2., 1., 1.]);
        let n = l2_normalize(&Tensor::from_vec(vec![3f32, 4., 0., 0.], &[2, 2]).unwrap()).unwrap();
        assert_eq!(n.to_vec::<f32>().unwrap(), [0.6, 0.8, 0., 0.]);
    }

    #[test]
    fn contrastive_loss_targets_every_nth_column() {
        // Q = 2, n = 2: the positives are columns 0 and 2.
        let q = Var::param(Tensor::from_vec(vec![1f32, 0., 0., 1.], &[2, 2]).unwrap());
        let p =
            Var::param(Tensor::from_vec(vec![2f32, 0., 0., 0., 0., 3., 1., 1.], &[4, 2]).unwrap());
        let (scores, loss) = contrastive_loss(&q, &p).unwrap();
        let s = scores.value().to_vec::<f32>().unwrap();
        assert_eq!(s, [2., 0., 0., 1., 0., 0., 3., 1.]);
        let lse = |r: &[f32]| r.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
        let want = ((lse(&s[0..4]) - 2.0) + (lse(&s[4..8]) - 3.0)) / 2.0;
        let got = loss.value().to_scalar::<f32>().unwrap() as f64;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        assert!(contrastive_loss(&q, &p.narrow(0, 0, 3).unwrap()).is_err());
    }
}
