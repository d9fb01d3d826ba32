//! The CoT-MAE collator (REFERENCE §2): documents in, one encoder batch and one decoder batch out.
//!
//! Per document (in batch order): a span `i` uniform over its spans, then the contextual kind
//! (`data_type`: `mixed` = uniform over random_sampled / nearby / overlap; a named kind; or a
//! `+`-joined list to choose among uniformly). The texts are laid out
//! `[anchor_0, ctx_0, anchor_1, ctx_1, ...]` (2B rows for B documents).
//!
//! Per text: when longer than `max_seq_length - 2`, one random contiguous crop of that length
//! (offset uniform over all positions). **Deviation:** the original crops twice independently,
//! once for the whole-word mask and once for the ids, so for long texts its masks are misaligned
//! with its ids, and it crops again for the decoder copy; here each text is cropped once per batch
//! and that crop serves its encoder row, its decoder row, their ids and their masks. A row is
//! `[CLS] crop [SEP]` padded with `[PAD]` to `max_seq_length`; the attention mask is 1 on
//! `[CLS]`, the crop and `[SEP]`.
//!
//! Whole-word masking of one row (HF `DataCollatorForWholeWordMask` as the original uses it):
//! candidates are the crop's words (a token and the `##` pieces after it; `[CLS]`/`[SEP]` ids in
//! the crop are skipped), shuffled; `n = min(512, max(1, round_half_even(len(crop) * ratio)))`;
//! words are taken in shuffled order while they fit (a word that would exceed `n` is skipped and
//! later, shorter words are still tried). Then, as HF's special-tokens mask does, positions whose
//! id is a special token (`[PAD] [UNK] [CLS] [SEP] [MASK]`) are unselected, so a chosen `[UNK]`
//! is never predicted. Each selected position: with probability 0.8 `[MASK]`, else with
//! probability 0.5 a uniformly random id in `0..vocab_size`, else unchanged; its label is the
//! original id; every other label is -100.
//!
//! The encoder batch masks rows `[anchor_0, ctx_0, ...]` with `encoder_mask_ratio`; the decoder
//! batch masks the same crops swapped pairwise, `[ctx_0, anchor_0, ctx_1, anchor_1, ...]`
//! (decoder row `2i` is `ctx_i`, row `2i + 1` is `anchor_i`), independently, with
//! `decoder_mask_ratio`.
//!
//! Randomness: one `tensor::Rng` whose (seed, counter) is the collator's whole state
//! ([`CollatorState`]); draws per batch: per document the span then the kind, then the crop
//! offsets of all long texts in row order, then per encoder row its shuffle and replacement
//! draws, then the same per decoder row. Restoring a saved state reproduces the following batches
//! exactly.

use std::str::FromStr;

use bert::Tokenizer;
use serde::{Deserialize, Serialize};
use tensor::{Rng, Tensor};

use crate::spans::{SpanKind, SpanSet};
use crate::token_store::TokenStore;
use crate::{draw, Error, Result};

/// HF's `max_predictions` default for whole-word masking.
pub const MAX_PREDICTIONS: usize = 512;
/// Label of positions without a prediction target.
pub const IGNORE_INDEX: i64 = -100;

/// Where the collator reads documents from.
pub trait SpanSource {
    fn num_docs(&self) -> usize;
    fn num_spans(&self, doc: usize) -> usize;
    /// Appends the ids of span `i` of `doc` for `kind` to `out`.
    fn span_ids(&self, doc: usize, i: usize, kind: SpanKind, out: &mut Vec<u32>);
}

impl SpanSource for TokenStore {
    fn num_docs(&self) -> usize {
        TokenStore::num_docs(self)
    }
    fn num_spans(&self, doc: usize) -> usize {
        TokenStore::num_spans(self, doc)
    }
    fn span_ids(&self, doc: usize, i: usize, kind: SpanKind, out: &mut Vec<u32>) {
        out.extend(self.span(doc, i, kind).iter().map(|&t| t as u32));
    }
}

/// In-memory documents, e.g. parsed from `data.jsonl`.
impl SpanSource for [Vec<SpanSet>] {
    fn num_docs(&self) -> usize {
        self.len()
    }
    fn num_spans(&self, doc: usize) -> usize {
        self.get(doc).map_or(0, Vec::len)
    }
    fn span_ids(&self, doc: usize, i: usize, kind: SpanKind, out: &mut Vec<u32>) {
        out.extend_from_slice(self[doc][i].get(kind));
    }
}

/// Which contextual span pairs with the anchor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataType {
    /// Uniformly one of random_sampled, nearby, overlap.
    Mixed,
    /// Always this kind.
    Kind(SpanKind),
    /// Uniformly one of these kinds.
    OneOf(Vec<SpanKind>),
}

impl FromStr for DataType {
    type Err = Error;

    /// `mixed`, a kind name (`random_sampled`, `nearby`, `overlap`, `anchor`), or `+`-joined
    /// names (`nearby+overlap`).
    fn from_str(s: &str) -> Result<DataType> {
        if s == "mixed" {
            return Ok(DataType::Mixed);
        }
        let kinds = s
            .split('+')
            .map(|name| {
                SpanKind::from_name(name.trim()).ok_or_else(|| {
                    Error::Config(format!(
                        "data_type {s:?}: unknown span kind {name:?} (expected mixed, anchor, \
                         random_sampled, nearby, overlap, or a +-joined list)"
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(match kinds.as_slice() {
            [k] => DataType::Kind(*k),
            _ => DataType::OneOf(kinds),
        })
    }
}

/// Collator settings (the paper's defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct CollatorConfig {
    pub max_seq_length: usize,
    pub encoder_mask_ratio: f64,
    pub decoder_mask_ratio: f64,
    pub data_type: DataType,
}

impl Default for CollatorConfig {
    fn default() -> Self {
        CollatorConfig {
            max_seq_length: 128,
            encoder_mask_ratio: 0.30,
            decoder_mask_ratio: 0.45,
            data_type: DataType::Mixed,
        }
    }
}

/// The collator's random state: save it with a checkpoint, restore it to resume exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollatorState {
    pub seed: u64,
    pub offset: u64,
}

/// One training batch; every tensor is i64 `[2B, max_seq_length]`.
#[derive(Debug)]
pub struct CotMaeBatch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub labels: Tensor,
    pub decoder_input_ids: Tensor,
    pub decoder_attention_mask: Tensor,
    pub decoder_labels: Tensor,
}

impl CotMaeBatch {
    /// The batch as the model on `device` reads it: the ids and attention masks uploaded, the
    /// labels kept on the host (the MLM loss reads them there, see
    /// `bert::BertLMPredictionHead::masked_lm`). On the CPU, the same tensors.
    pub fn to_device(&self, device: tensor::Device) -> tensor::Result<CotMaeBatch> {
        Ok(CotMaeBatch {
            input_ids: self.input_ids.to_device(device)?,
            attention_mask: self.attention_mask.to_device(device)?,
            labels: self.labels.clone(),
            decoder_input_ids: self.decoder_input_ids.to_device(device)?,
            decoder_attention_mask: self.decoder_attention_mask.to_device(device)?,
            decoder_labels: self.decoder_labels.clone(),
        })
    }

    /// Rows `rows` of every tensor (a data-parallel rank's shard: documents `a..b` are rows
    /// `2a..2b`, anchor and context side by side), copied out contiguous.
    pub fn rows(&self, rows: std::ops::Range<usize>) -> tensor::Result<CotMaeBatch> {
        let take = |t: &Tensor| t.narrow(0, rows.start, rows.len())?.copy();
        Ok(CotMaeBatch {
            input_ids: take(&self.input_ids)?,
            attention_mask: take(&self.attention_mask)?,
            labels: take(&self.labels)?,
            decoder_input_ids: take(&self.decoder_input_ids)?,
            decoder_attention_mask: take(&self.decoder_attention_mask)?,
            decoder_labels: take(&self.decoder_labels)?,
        })
    }
}

/// Positions of `labels` (i64) that carry a label (not -100): what an MLM loss averages over.
pub fn labelled(labels: &Tensor) -> tensor::Result<usize> {
    Ok(labels
        .to_vec::<i64>()?
        .iter()
        .filter(|&&t| t != -100)
        .count())
}

/// Rows of one masked batch, flattened row-major.
#[derive(Default)]
struct Rows {
    ids: Vec<i64>,
    mask: Vec<i64>,
    labels: Vec<i64>,
}

/// The whole-word-mask CoT-MAE collator (module doc).
pub struct CotMaeCollator {
    config: CollatorConfig,
    rng: Rng,
    cls: u32,
    sep: u32,
    pad: u32,
    mask: u32,
    /// `[PAD] [UNK] [CLS] [SEP] [MASK]`.
    special: [u32; 5],
    vocab_size: usize,
    /// Whether each id's token starts with `##`.
    subword: Vec<bool>,
}

/// `min(512, max(1, round_half_even(len * ratio)))`, as Python's `int(round(len * ratio))`.
pub fn num_to_predict(len: usize, ratio: f64) -> usize {
    let n = (len as f64 * ratio).round_ties_even();
    (n.max(1.0) as usize).min(MAX_PREDICTIONS)
}

impl CotMaeCollator {
    pub fn new(tokenizer: &Tokenizer, config: CollatorConfig, seed: u64) -> Result<Self> {
        if config.max_seq_length < 3 {
            return Err(Error::Config(format!(
                "collator: max_seq_length must be >= 3, got {}",
                config.max_seq_length
            )));
        }
        for (name, r) in [
            ("encoder_mask_ratio", config.encoder_mask_ratio),
            ("decoder_mask_ratio", config.decoder_mask_ratio),
        ] {
            if !(0.0..=1.0).contains(&r) {
                return Err(Error::Config(format!(
                    "collator: {name} must be in [0, 1], got {r}"
                )));
            }
        }
        if let DataType::OneOf(kinds) = &config.data_type {
            if kinds.is_empty() {
                return Err(Error::Config(
                    "collator: data_type lists no span kind".into(),
                ));
            }
        }
        let vocab_size = tokenizer.vocab_size();
        let subword = (0..vocab_size as u32)
            .map(|id| {
                tokenizer
                    .id_to_token(id)
                    .is_some_and(|t| t.starts_with("##"))
            })
            .collect();
        Ok(CotMaeCollator {
            config,
            rng: Rng::new(seed),
            cls: tokenizer.cls_id(),
            sep: tokenizer.sep_id(),
            pad: tokenizer.pad_id(),
            mask: tokenizer.mask_id(),
            special: [
                tokenizer.pad_id(),
                tokenizer.unk_id(),
                tokenizer.cls_id(),
                tokenizer.sep_id(),
                tokenizer.mask_id(),
            ],
            vocab_size,
            subword,
        })
    }

    pub fn config(&self) -> &CollatorConfig {
        &self.config
    }

    pub fn state(&self) -> CollatorState {
        CollatorState {
            seed: self.rng.seed,
            offset: self.rng.offset,
        }
    }

    pub fn set_state(&mut self, state: CollatorState) {
        self.rng = Rng {
            seed: state.seed,
            offset: state.offset,
        };
    }

    /// A batch of the documents `docs` of `source` (module doc).
    pub fn collate<S: SpanSource + ?Sized>(
        &mut self,
        source: &S,
        docs: &[usize],
    ) -> Result<CotMaeBatch> {
        let mut texts = Vec::with_capacity(2 * docs.len());
        for &doc in docs {
            let n = source.num_spans(doc);
            if n == 0 {
                return Err(Error::Config(format!(
                    "collator: document {doc} has no spans ({} documents)",
                    source.num_docs()
                )));
            }
            let i = draw::index(&mut self.rng, n);
            let kind = match &self.config.data_type {
                DataType::Mixed => SpanKind::CONTEXTUAL[draw::index(&mut self.rng, 3)],
                DataType::Kind(k) => *k,
                DataType::OneOf(kinds) => kinds[draw::index(&mut self.rng, kinds.len())],
            };
            let (mut anchor, mut ctx) = (Vec::new(), Vec::new());
            source.span_ids(doc, i, SpanKind::Anchor, &mut anchor);
            source.span_ids(doc, i, kind, &mut ctx);
            texts.push(anchor);
            texts.push(ctx);
        }
        self.collate_texts(&texts)
    }

    /// A batch of texts already laid out `[anchor_0, ctx_0, anchor_1, ctx_1, ...]` (an even
    /// count): crop, encoder masking, pairwise swap, decoder masking (module doc).
    pub fn collate_texts(&mut self, texts: &[Vec<u32>]) -> Result<CotMaeBatch> {
        if !texts.len().is_multiple_of(2) {
            return Err(Error::Config(format!(
                "collator: texts come in (anchor, context) pairs; got {}",
                texts.len()
            )));
        }
        let crops: Vec<&[u32]> = texts.iter().map(|t| self.crop(t)).collect();
        let enc = self.mask_rows(crops.iter().copied(), self.config.encoder_mask_ratio);
        let swapped = (0..crops.len()).map(|r| crops[r ^ 1]);
        let dec = self.mask_rows(swapped, self.config.decoder_mask_ratio);
        let shape = [texts.len(), self.config.max_seq_length];
        Ok(CotMaeBatch {
            input_ids: Tensor::from_vec(enc.ids, &shape)?,
            attention_mask: Tensor::from_vec(enc.mask, &shape)?,
            labels: Tensor::from_vec(enc.labels, &shape)?,
            decoder_input_ids: Tensor::from_vec(dec.ids, &shape)?,
            decoder_attention_mask: Tensor::from_vec(dec.mask, &shape)?,
            decoder_labels: Tensor::from_vec(dec.labels, &shape)?,
        })
    }

    /// A random contiguous window of `max_seq_length - 2` tokens when `text` is longer.
    fn crop<'a>(&mut self, text: &'a [u32]) -> &'a [u32] {
        let keep = self.config.max_seq_length - 2;
        if text.len() <= keep {
            return text;
        }
        let start = draw::range_inclusive(&mut self.rng, 0, text.len() - keep);
        &text[start..start + keep]
    }

    fn mask_rows<'a>(&mut self, crops: impl Iterator<Item = &'a [u32]>, ratio: f64) -> Rows {
        let mut rows = Rows::default();
        for crop in crops {
            self.mask_row(crop, ratio, &mut rows);
        }
        rows
    }

    /// Positions (in `crop`) chosen by whole-word masking, before the special-id filter.
    pub fn whole_word_positions(&mut self, crop: &[u32], ratio: f64) -> Vec<usize> {
        let mut words: Vec<Vec<usize>> = Vec::new();
        for (p, &id) in crop.iter().enumerate() {
            if id == self.cls || id == self.sep {
                continue;
            }
            let is_piece = self.subword.get(id as usize).copied().unwrap_or(false);
            match words.last_mut() {
                Some(word) if is_piece => word.push(p),
                _ => words.push(vec![p]),
            }
        }
        self.rng.shuffle(&mut words);
        let n = num_to_predict(crop.len(), ratio);
        let mut chosen = Vec::new();
        for word in words {
            if chosen.len() >= n {
                break;
            }
            if chosen.len() + word.len() > n {
                continue;
            }
            chosen.extend(word);
        }
        chosen
    }

    fn mask_row(&mut self, crop: &[u32], ratio: f64, rows: &mut Rows) {
        let len = self.config.max_seq_length;
        let base = rows.ids.len();
        rows.ids.push(self.cls as i64);
        rows.ids.extend(crop.iter().map(|&t| t as i64));
        rows.ids.push(self.sep as i64);
        rows.ids.resize(base + len, self.pad as i64);
        rows.mask.resize(base + crop.len() + 2, 1);
        rows.mask.resize(base + len, 0);
        rows.labels.resize(base + len, IGNORE_INDEX);

        let mut chosen = self.whole_word_positions(crop, ratio);
        chosen.retain(|&p| !self.special.contains(&crop[p]));
        chosen.sort_unstable();
        for p in chosen {
            let at = base + 1 + p;
            rows.labels[at] = crop[p] as i64;
            if draw::unit(&mut self.rng) < 0.8 {
                rows.ids[at] = self.mask as i64;
            } else if draw::unit(&mut self.rng) < 0.5 {
                rows.ids[at] = draw::index(&mut self.rng, self.vocab_size) as i64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/tokenizer/vocab.txt"
        );
        Tokenizer::from_vocab_file(path, true).unwrap()
    }

    /// Texts of real words with many multi-piece words.
    fn texts(tok: &Tokenizer, n: usize, seed: u64) -> Vec<Vec<u32>> {
        let docs = crate::synthetic::generate(n, 4..=14, seed);
        docs.iter().map(|d| tok.encode(d, false, None)).collect()
    }

    fn rows(t: &Tensor) -> Vec<Vec<i64>> {
        let l = t.shape()[1];
        t.to_vec::<i64>()
            .unwrap()
            .chunks(l)
            .map(<[i64]>::to_vec)
            .collect()
    }

    /// Original ids of a masked row: labels where set, ids elsewhere.
    fn unmasked(ids: &[i64], labels: &[i64]) -> Vec<i64> {
        ids.iter()
            .zip(labels)
            .map(|(&i, &l)| if l == IGNORE_INDEX { i } else { l })
            .collect()
    }

    #[test]
    fn rounding_is_half_even() {
        assert_eq!(num_to_predict(5, 0.3), 2); // 1.5
        assert_eq!(num_to_predict(15, 0.3), 4); // 4.5
        assert_eq!(num_to_predict(25, 0.3), 8); // 7.5
        assert_eq!(num_to_predict(126, 0.3), 38);
        assert_eq!(num_to_predict(126, 0.45), 57);
        assert_eq!(num_to_predict(1, 0.3), 1);
        assert_eq!(num_to_predict(0, 0.3), 1);
        assert_eq!(num_to_predict(100_000, 0.3), MAX_PREDICTIONS);
    }

    #[test]
    fn data_type_parsing() {
        assert_eq!("mixed".parse::<DataType>().unwrap(), DataType::Mixed);
        assert_eq!(
            "nearby".parse::<DataType>().unwrap(),
            DataType::Kind(SpanKind::Nearby)
        );
        assert_eq!(
            "nearby+overlap".parse::<DataType>().unwrap(),
            DataType::OneOf(vec![SpanKind::Nearby, SpanKind::Overlap])
        );
        let err = "nearby+bogus".parse::<DataType>().unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn layout_specials_padding_and_swap() {
        let tok = tokenizer();
        let mut c = CotMaeCollator::new(&tok, CollatorConfig::default(), 1).unwrap();
        let texts = texts(&tok, 8, 3);
        let b = c.collate_texts(&texts).unwrap();
        assert_eq!(b.input_ids.shape(), &[8, 128]);
        assert_eq!(b.decoder_labels.shape(), &[8, 128]);
        let (ids, att, lab) = (rows(&b.input_ids), rows(&b.attention_mask), rows(&b.labels));
        let (dids, datt, dlab) = (
            rows(&b.decoder_input_ids),
            rows(&b.decoder_attention_mask),
            rows(&b.decoder_labels),
        );
        for r in 0..8 {
            let n = texts[r].len().min(126);
            let orig = unmasked(&ids[r], &lab[r]);
            assert_eq!(orig[0], tok.cls_id() as i64);
            assert_eq!(orig[n + 1], tok.sep_id() as i64);
            assert!(orig[n + 2..].iter().all(|&t| t == tok.pad_id() as i64));
            assert!(att[r][..n + 2].iter().all(|&m| m == 1));
            assert!(att[r][n + 2..].iter().all(|&m| m == 0));
            // Never masked: [CLS], [SEP], padding.
            assert_eq!(lab[r][0], IGNORE_INDEX);
            assert!(lab[r][n + 1..].iter().all(|&l| l == IGNORE_INDEX));
            assert!(dlab[r][0] == IGNORE_INDEX);
            // Pairwise swap: decoder row r holds the text of encoder row r ^ 1.
            assert_eq!(
                unmasked(&dids[r], &dlab[r]),
                unmasked(&ids[r ^ 1], &lab[r ^ 1])
            );
            assert_eq!(datt[r], att[r ^ 1]);
            let m = texts[r ^ 1].len().min(126);
            assert!(dlab[r][m + 1..].iter().all(|&l| l == IGNORE_INDEX));
        }
        assert!(c.collate_texts(&texts[..3]).is_err());
    }

    #[test]
    fn masking_rates_whole_words_and_replacements() {
        let tok = tokenizer();
        let mut c = CotMaeCollator::new(&tok, CollatorConfig::default(), 2).unwrap();
        let texts = texts(&tok, 400, 5);
        let b = c.collate_texts(&texts).unwrap();
        let mask_id = tok.mask_id() as i64;
        for (ids_t, lab_t, ratio) in [
            (&b.input_ids, &b.labels, 0.30),
            (&b.decoder_input_ids, &b.decoder_labels, 0.45),
        ] {
            let (ids, lab) = (rows(ids_t), rows(lab_t));
            let (mut chosen, mut real) = (0usize, 0usize);
            let (mut masked, mut random, mut kept) = (0usize, 0usize, 0usize);
            for (row_ids, row_lab) in ids.iter().zip(&lab) {
                let orig = unmasked(row_ids, row_lab);
                let n = orig
                    .iter()
                    .skip(1)
                    .take_while(|&&t| t != tok.sep_id() as i64)
                    .count();
                real += n;
                let sel: Vec<bool> = row_lab.iter().map(|&l| l != IGNORE_INDEX).collect();
                let count = sel.iter().filter(|&&s| s).count();
                chosen += count;
                assert!(count <= num_to_predict(n, ratio));
                // Whole words: a selected piece's word is selected entirely.
                for p in 1..=n {
                    let piece = tok.id_to_token(orig[p] as u32).unwrap().starts_with("##");
                    if piece && p > 1 {
                        assert_eq!(sel[p], sel[p - 1], "word split at {p}");
                    }
                }
                for p in (0..sel.len()).filter(|&p| sel[p]) {
                    if row_ids[p] == mask_id {
                        masked += 1;
                    } else if row_ids[p] != orig[p] {
                        random += 1;
                    } else {
                        kept += 1;
                    }
                }
            }
            let rate = chosen as f64 / real as f64;
            assert!((rate - ratio).abs() < 0.02, "ratio {ratio}: rate {rate}");
            let f = |x: usize| x as f64 / chosen as f64;
            assert!((f(masked) - 0.8).abs() < 0.02, "mask {}", f(masked));
            assert!((f(random) - 0.1).abs() < 0.015, "random {}", f(random));
            assert!((f(kept) - 0.1).abs() < 0.015, "kept {}", f(kept));
        }
    }

    #[test]
    fn specials_in_text_are_never_predicted() {
        let tok = tokenizer();
        let mut c = CotMaeCollator::new(&tok, CollatorConfig::default(), 3).unwrap();
        let unk = tok.unk_id();
        let word = tok.token_to_id("house").unwrap();
        let text: Vec<u32> = (0..60)
            .map(|i| if i % 2 == 0 { unk } else { word })
            .collect();
        for _ in 0..20 {
            let b = c.collate_texts(&[text.clone(), text.clone()]).unwrap();
            for (lab, ids) in [
                (&b.labels, &b.input_ids),
                (&b.decoder_labels, &b.decoder_input_ids),
            ] {
                let (lab, ids) = (lab.to_vec::<i64>().unwrap(), ids.to_vec::<i64>().unwrap());
                for (l, i) in lab.iter().zip(&ids) {
                    assert_ne!(*l, unk as i64);
                    if *l != IGNORE_INDEX {
                        assert_eq!(*l, word as i64);
                    } else if *i != unk as i64 {
                        // Unselected positions keep their id.
                        assert!(
                            [word, tok.cls_id(), tok.sep_id(), tok.pad_id()].contains(&(*i as u32))
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn long_texts_get_one_crop() {
        let tok = tokenizer();
        let cfg = CollatorConfig {
            max_seq_length: 16,
            ..Default::default()
        };
        let mut c = CotMaeCollator::new(&tok, cfg, 4).unwrap();
        // Distinct, non-piece ids so a crop's position is recoverable.
        let long: Vec<u32> = (2000..2040).collect();
        let short: Vec<u32> = (3000..3010).collect();
        let mut starts = std::collections::BTreeSet::new();
        for _ in 0..300 {
            let b = c.collate_texts(&[long.clone(), short.clone()]).unwrap();
            let (ids, lab) = (rows(&b.input_ids), rows(&b.labels));
            let (dids, dlab) = (rows(&b.decoder_input_ids), rows(&b.decoder_labels));
            let enc = unmasked(&ids[0], &lab[0]);
            let dec = unmasked(&dids[1], &dlab[1]);
            assert_eq!(enc, dec, "encoder and decoder rows share the crop");
            assert_eq!(enc[15], tok.sep_id() as i64);
            let crop: Vec<u32> = enc[1..15].iter().map(|&t| t as u32).collect();
            let start = (crop[0] - 2000) as usize;
            assert_eq!(crop, long[start..start + 14]);
            starts.insert(start);
            // The short text is not cropped.
            let s = unmasked(&ids[1], &lab[1]);
            assert_eq!(
                s[1..11].iter().map(|&t| t as u32).collect::<Vec<_>>(),
                short
            );
        }
        assert_eq!(starts.len(), 27, "every offset 0..=26 occurs: {starts:?}");
    }

    #[test]
    fn documents_determinism_and_resume() {
        let tok = tokenizer();
        let docs: Vec<Vec<SpanSet>> = (0..6)
            .map(|d| {
                (0..3)
                    .map(|i| {
                        let t = |k: u32| vec![2000 + d * 100 + i * 10 + k; 5];
                        SpanSet {
                            anchor: t(0),
                            random_sampled: t(1),
                            nearby: t(2),
                            overlap: t(3),
                        }
                    })
                    .collect()
            })
            .collect();
        let src = docs.as_slice();
        let cfg = CollatorConfig {
            data_type: "nearby".parse().unwrap(),
            encoder_mask_ratio: 0.0,
            decoder_mask_ratio: 0.0,
            ..Default::default()
        };
        let mut c = CotMaeCollator::new(&tok, cfg, 9).unwrap();
        let b = c.collate(src, &[0, 5, 2]).unwrap();
        let ids = rows(&b.input_ids);
        let lab = rows(&b.labels);
        for (r, &doc) in [0u32, 5, 2].iter().enumerate() {
            let a = unmasked(&ids[2 * r], &lab[2 * r])[1];
            let x = unmasked(&ids[2 * r + 1], &lab[2 * r + 1])[1];
            assert_eq!((a - 2000) / 100, doc as i64);
            assert_eq!(a % 10, 0, "anchor first");
            assert_eq!(x, a + 2, "nearby of the same span");
        }
        assert!(c.collate(src, &[7]).is_err());

        let mut c = CotMaeCollator::new(&tok, CollatorConfig::default(), 11).unwrap();
        let state = c.state();
        let first = c.collate(src, &[1, 2, 3]).unwrap();
        let mid = c.state();
        let second = c.collate(src, &[1, 2, 3]).unwrap();
        let json = serde_json::to_string(&mid).unwrap();
        let mut d = CotMaeCollator::new(&tok, CollatorConfig::default(), 0).unwrap();
        d.set_state(serde_json::from_str(&json).unwrap());
        let again = d.collate(src, &[1, 2, 3]).unwrap();
        let same = |x: &CotMaeBatch, y: &CotMaeBatch| {
            x.input_ids.to_vec::<i64>().unwrap() == y.input_ids.to_vec::<i64>().unwrap()
                && x.labels.to_vec::<i64>().unwrap() == y.labels.to_vec::<i64>().unwrap()
                && x.decoder_input_ids.to_vec::<i64>().unwrap()
                    == y.decoder_input_ids.to_vec::<i64>().unwrap()
                && x.decoder_labels.to_vec::<i64>().unwrap()
                    == y.decoder_labels.to_vec::<i64>().unwrap()
        };
        assert!(same(&second, &again), "restored state resumes exactly");
        assert!(!same(&first, &second));
        d.set_state(state);
        assert!(same(&first, &d.collate(src, &[1, 2, 3]).unwrap()));
        // Mixed chooses every contextual kind.
        let mut kinds = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let b = c.collate(src, &[4]).unwrap();
            let v = unmasked(&rows(&b.input_ids)[1], &rows(&b.labels)[1]);
            kinds.insert(v[1] % 10);
        }
        assert_eq!(kinds, [1, 2, 3].into_iter().collect());
    }
}
