//! Fine-tuning data (REFERENCE §5-6): the training files, Tevatron's per-example passage sampling,
//! the per-epoch example order and the batches the model sees.
//!
//! Files: JSON lines of [`TrainExample`] (one file, or every `*.json` / `*.jsonl` of a directory in
//! name order). They are memory-mapped and indexed by line, and an example is parsed when a batch
//! needs it, so a 400k-query file with 128 negatives each costs its page cache, not a copy on the
//! heap (Tevatron reads them through an Arrow-backed `datasets` table). [`TrainDataset::validate`]
//! parses every line once up front so that a bad record fails before training, naming its line.
//!
//! Sampling of example `i` in epoch `e` (0-based), with `n = train_n_passages` and
//! `hashed_seed = seed + i` (Tevatron's `hash(item + seed)`; Python hashes an int to itself):
//! - the positive is `positives[(hashed_seed + e) % len]`: positives are cycled by epoch;
//! - `n - 1` negatives: when fewer exist, drawn uniformly with replacement (a fresh draw each
//!   epoch); else, when `n == 1`, none; else a fixed per-example shuffle of the negatives
//!   (seeded by `hashed_seed`), doubled, read from offset `(e * (n - 1)) % len`: consecutive epochs
//!   walk through the shuffled list.
//!
//! Tevatron shuffles with Python's `random.Random(hashed_seed)` (a Mersenne Twister) and draws the
//! with-replacement case from the process-global `random` state; here both come from our Philox
//! generator keyed by `hashed_seed`, so the rules are the same but the particular permutation
//! differs, and the with-replacement draws are reproducible. The example order of each epoch is a
//! Fisher-Yates shuffle from the stream [`ORDER_STREAM`] of `seed` (the HF Trainer's
//! `RandomSampler` draws from torch's generator).
//!
//! Batch of `B` examples: queries [B, q_max_len] and passages [B * n, p_max_len] (query i's
//! positive at row i * n, then its negatives), each `[CLS] ids[..max_len-2] [SEP]` padded to
//! max_len ([`TokenBatch`]).

use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rayon::prelude::*;
use tensor::rng::philox4x32_10;
use tensor::Rng;

use crate::dense::{PadTo, SpecialIds, TokenBatch};
use crate::formats::{jsonl_inputs, TrainExample};
use crate::{Error, Result};

/// Stream of `seed` that orders the examples of each epoch.
pub const ORDER_STREAM: u64 = 1;
/// Stream of `seed` that dropout draws from during training.
pub const DROPOUT_STREAM: u64 = 2;

/// A generator key for stream `stream` of `seed`: one Philox block of `seed` at a counter whose
/// third word no `Rng` draw uses, so it is independent of every draw made under `seed`.
pub fn stream_seed(seed: u64, stream: u64) -> u64 {
    let w = philox4x32_10(
        [stream as u32, (stream >> 32) as u32, 0x5eed_5eed, 0],
        [seed as u32, (seed >> 32) as u32],
    );
    (w[0] as u64) << 32 | w[1] as u64
}

/// Tevatron's `_hashed_seed = hash(item + seed)` for example `index`.
pub fn hashed_seed(seed: u64, index: usize) -> u64 {
    seed.wrapping_add(index as u64)
}

/// The order in which epoch `epoch` visits examples `0..n`.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = Rng {
        seed: stream_seed(seed, ORDER_STREAM),
        offset: epoch << 32,
    };
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    order
}

/// The `train_n_passages` passages of example `index` in epoch `epoch`: the positive, then the
/// negatives (module docs). The error says what the example lacks.
pub fn sample_passages(
    example: &TrainExample,
    index: usize,
    epoch: u64,
    train_n_passages: usize,
    seed: u64,
) -> std::result::Result<Vec<&[u32]>, String> {
    if train_n_passages == 0 {
        return Err("train_n_passages must be at least 1".into());
    }
    let (pos, neg) = (&example.positives, &example.negatives);
    if pos.is_empty() {
        return Err("the example has no positives".into());
    }
    let hashed = hashed_seed(seed, index);
    let mut out = Vec::with_capacity(train_n_passages);
    out.push(pos[(hashed.wrapping_add(epoch) % pos.len() as u64) as usize].as_slice());
    let negative_size = train_n_passages - 1;
    if neg.len() < negative_size {
        if neg.is_empty() {
            return Err(format!(
                "the example has no negatives; train_n_passages = {train_n_passages} needs {negative_size}"
            ));
        }
        // Per-epoch draws, clear of the blocks the fixed shuffle uses.
        let mut rng = Rng {
            seed: hashed,
            offset: (epoch + 1) << 32,
        };
        out.extend(
            (0..negative_size).map(|_| neg[rng.below(neg.len() as u64) as usize].as_slice()),
        );
    } else if negative_size > 0 {
        let mut order: Vec<usize> = (0..neg.len()).collect();
        Rng::new(hashed).shuffle(&mut order);
        let offset = (epoch.wrapping_mul(negative_size as u64) % neg.len() as u64) as usize;
        out.extend((offset..offset + negative_size).map(|k| neg[order[k % neg.len()]].as_slice()));
    }
    Ok(out)
}

/// What a batch is made of besides the examples.
#[derive(Clone, Debug)]
pub struct BatchConfig {
    pub train_n_passages: usize,
    pub q_max_len: usize,
    pub p_max_len: usize,
    pub seed: u64,
    pub special: SpecialIds,
    /// [`PadTo::MaxLen`] as Tevatron; [`PadTo::Longest`] computes the same loss on shorter rows.
    pub pad_to: PadTo,
}

/// One training batch: queries [B, q_len] and passages [B * n, p_len].
#[derive(Clone, Debug)]
pub struct TrainBatch {
    pub query: TokenBatch,
    pub passages: TokenBatch,
}

/// One non-blank line of a training file.
struct Record {
    file: u32,
    /// 1-based.
    line: u64,
    start: usize,
    end: usize,
}

/// Training examples indexed by line over memory-mapped files (module docs).
pub struct TrainDataset {
    files: Vec<(PathBuf, Option<Mmap>)>,
    records: Vec<Record>,
}

impl TrainDataset {
    /// Maps `path` (a JSON-lines file or a directory of them) and indexes its non-blank lines.
    pub fn open(path: impl AsRef<Path>) -> Result<TrainDataset> {
        let mut files = Vec::new();
        let mut records = Vec::new();
        for (fi, p) in jsonl_inputs(path)?.into_iter().enumerate() {
            let file = std::fs::File::open(&p).map_err(|e| Error::io(&p, e))?;
            let len = file.metadata().map_err(|e| Error::io(&p, e))?.len();
            // SAFETY: read-only mapping of a file we treat as immutable during training.
            let map = (len > 0)
                .then(|| unsafe { Mmap::map(&file) })
                .transpose()
                .map_err(|e| Error::io(&p, e))?;
            let bytes: &[u8] = map.as_deref().unwrap_or_default();
            let mut start = 0;
            for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
                let end = start + line.len();
                if !line.trim_ascii().is_empty() {
                    records.push(Record {
                        file: fi as u32,
                        line: i as u64 + 1,
                        start,
                        end,
                    });
                }
                start = end + 1;
            }
            files.push((p, map));
        }
        Ok(TrainDataset { files, records })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The file and 1-based line of example `index`.
    pub fn location(&self, index: usize) -> (&Path, u64) {
        let r = &self.records[index];
        (&self.files[r.file as usize].0, r.line)
    }

    fn line_error(&self, index: usize, msg: impl Into<String>) -> Error {
        let (path, line) = self.location(index);
        Error::line(path, line as usize, msg)
    }

    /// Parses example `index`.
    pub fn get(&self, index: usize) -> Result<TrainExample> {
        let r = &self.records[index];
        let bytes = self.files[r.file as usize].1.as_deref().unwrap_or_default();
        serde_json::from_slice(&bytes[r.start..r.end])
            .map_err(|e| self.line_error(index, format!("invalid record: {e}")))
    }

    /// Parses every example (in parallel) and checks that it can be sampled with
    /// `train_n_passages` and that its token ids are below `vocab_size`. Returns the error of the
    /// first bad line.
    pub fn validate(&self, train_n_passages: usize, vocab_size: usize) -> Result<()> {
        let check = |i: usize| -> Result<()> {
            let ex = self.get(i)?;
            sample_passages(&ex, i, 0, train_n_passages, 0).map_err(|m| self.line_error(i, m))?;
            let texts = std::iter::once(("query".to_string(), &ex.query))
                .chain(
                    ex.positives
                        .iter()
                        .enumerate()
                        .map(|(k, p)| (format!("positives[{k}]"), p)),
                )
                .chain(
                    ex.negatives
                        .iter()
                        .enumerate()
                        .map(|(k, p)| (format!("negatives[{k}]"), p)),
                );
            for (field, ids) in texts {
                if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab_size) {
                    return Err(self.line_error(
                        i,
                        format!(
                            "{field}: token id {bad} is outside the vocabulary ({vocab_size} ids)"
                        ),
                    ));
                }
            }
            Ok(())
        };
        match (0..self.len())
            .into_par_iter()
            .filter_map(|i| check(i).err())
            .find_first(|_| true)
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The batch of examples `indices` in epoch `epoch` (module docs).
    pub fn batch(&self, indices: &[usize], epoch: u64, cfg: &BatchConfig) -> Result<TrainBatch> {
        let examples = indices
            .iter()
            .map(|&i| self.get(i))
            .collect::<Result<Vec<_>>>()?;
        let mut passages: Vec<&[u32]> = Vec::with_capacity(indices.len() * cfg.train_n_passages);
        for (&i, ex) in indices.iter().zip(&examples) {
            let sampled = sample_passages(ex, i, epoch, cfg.train_n_passages, cfg.seed)
                .map_err(|m| self.line_error(i, m))?;
            passages.extend(sampled);
        }
        let queries: Vec<&[u32]> = examples.iter().map(|e| e.query.as_slice()).collect();
        Ok(TrainBatch {
            query: TokenBatch::new(&queries, cfg.q_max_len, cfg.pad_to, cfg.special)?,
            passages: TokenBatch::new(&passages, cfg.p_max_len, cfg.pad_to, cfg.special)?,
        })
    }
}
