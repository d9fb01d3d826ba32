//! `encode`: tokenized texts (the `{"text_id", "text"}` JSON lines of `tokenize-corpus` /
//! `tokenize-queries`) -> one vector each, written as an [`EmbeddingSet`] (REFERENCE §7).
//!
//! Each text becomes `[CLS] ids[..max_len-2] [SEP]`; the encoder runs without gradients in eval
//! mode (no dropout); the vector is the [CLS] state (Tevatron) or the masked mean of the token
//! states (sentence-transformers), optionally L2-normalised. Texts are sorted by length (longest
//! first) and batched so that each batch is padded only to its own longest text; padding is
//! masked, so a text's vector does not depend on its batch, and rows are written back in input
//! order.
//!
//! A sentence-transformers model directory (`modules.json` with a Transformer, a Pooling and
//! optionally a Normalize module) supplies the defaults: the pooling from the Pooling module's
//! `config.json`, normalisation when a Normalize module is listed, `max_len` from
//! `sentence_bert_config.json`'s `max_seq_length`, and the weights from the Transformer module's
//! folder. Explicit options override them.
//!
//! Device: the model is moved to `EncodeConfig::device` and each batch is uploaded to the model's
//! device; with mixed precision (CUDA only) the forward pass runs under the precision's autocast
//! (half-precision matrix products, f32 everywhere else). The vectors always come back to the
//! host as f32.

use std::path::{Path, PathBuf};

use autograd::no_grad;
use indicatif::ProgressBar;
use nn::{Ctx, Precision};
use serde_json::Value;
use tensor::{DType, Device, Tensor};

use crate::dense::{l2_normalize, DenseModel, PadTo, Pooling, SpecialIds, TokenBatch};
use crate::embeddings::EmbeddingSet;
use crate::formats::{jsonl_inputs, read_jsonl, EncodeItem};
use crate::{Error, Result};

/// Tevatron's default `q_max_len` / `p_max_len`, used when neither the command nor a
/// sentence-transformers config gives a length.
pub const DEFAULT_QUERY_MAX_LEN: usize = 32;
pub const DEFAULT_PASSAGE_MAX_LEN: usize = 128;

/// What a sentence-transformers directory says about encoding.
#[derive(Clone, Debug, PartialEq)]
pub struct SentenceTransformersConfig {
    /// The Pooling module's mode, or why it is not one we compute.
    pub pooling: std::result::Result<Pooling, String>,
    pub normalize: bool,
    /// `sentence_bert_config.json`'s `max_seq_length`.
    pub max_seq_length: Option<usize>,
    /// The Transformer module's folder (the HF model).
    pub transformer_dir: PathBuf,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("invalid JSON: {e}")))
}

/// The Pooling module's mode from its `config.json`.
fn pooling_mode(path: &Path) -> Result<std::result::Result<Pooling, String>> {
    let v = read_json(path)?;
    let on = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    let modes: Vec<&str> = [
        "pooling_mode_cls_token",
        "pooling_mode_mean_tokens",
        "pooling_mode_max_tokens",
        "pooling_mode_mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens",
        "pooling_mode_lasttoken",
    ]
    .into_iter()
    .filter(|k| on(k))
    .collect();
    Ok(match modes.as_slice() {
        ["pooling_mode_cls_token"] => Ok(Pooling::Cls),
        ["pooling_mode_mean_tokens"] => Ok(Pooling::Mean),
        other => Err(format!(
            "{}: pooling {other:?} is not supported (only cls or mean tokens)",
            path.display()
        )),
    })
}

/// Reads `dir/modules.json` and what it points to; None when `dir` is a plain HF model.
pub fn sentence_transformers_config(
    dir: impl AsRef<Path>,
) -> Result<Option<SentenceTransformersConfig>> {
    let dir = dir.as_ref();
    let modules_path = dir.join("modules.json");
    if !modules_path.is_file() {
        return Ok(None);
    }
    let modules = read_json(&modules_path)?;
    let Some(list) = modules.as_array() else {
        return Err(Error::format(
            &modules_path,
            "expected a JSON list of modules",
        ));
    };
    let (mut transformer, mut pooling, mut normalize) = (None, None, false);
    for (i, m) in list.iter().enumerate() {
        let field = |k: &str| m.get(k).and_then(Value::as_str);
        let (Some(kind), Some(path)) = (field("type"), field("path")) else {
            return Err(Error::format(
                &modules_path,
                format!("module {i} lacks a string \"type\" or \"path\""),
            ));
        };
        match kind.rsplit('.').next().unwrap_or(kind) {
            "Transformer" => transformer = Some(dir.join(path)),
            "Pooling" => pooling = Some(pooling_mode(&dir.join(path).join("config.json"))?),
            "Normalize" => normalize = true,
            other => {
                return Err(Error::format(
                    &modules_path,
                    format!("module {i} of type {other:?} is not supported"),
                ))
            }
        }
    }
    let Some(transformer_dir) = transformer else {
        return Err(Error::format(&modules_path, "no Transformer module"));
    };
    let st_config = transformer_dir.join("sentence_bert_config.json");
    let max_seq_length = if st_config.is_file() {
        read_json(&st_config)?
            .get("max_seq_length")
            .and_then(Value::as_u64)
            .map(|n| n as usize)
    } else {
        None
    };
    Ok(Some(SentenceTransformersConfig {
        // sentence-transformers uses mean pooling when no Pooling module is listed.
        pooling: pooling.unwrap_or(Ok(Pooling::Mean)),
        normalize,
        max_seq_length,
        transformer_dir,
    }))
}

/// How [`encode_texts`] turns texts into vectors.
#[derive(Clone, Copy, Debug)]
pub struct EncodeOptions {
    pub max_len: usize,
    pub pooling: Pooling,
    pub normalize: bool,
    pub batch_size: usize,
    pub special: SpecialIds,
    /// f32, or the autocast of mixed precision (a GPU model only).
    pub precision: Precision,
}

/// The vectors [N, H] (f32, on the host) of `texts`, row i for text i (module docs), computed on
/// the model's device. `bar` advances by one per text.
pub fn encode_texts(
    model: &DenseModel,
    texts: &[&[u32]],
    opts: &EncodeOptions,
    bar: &ProgressBar,
) -> Result<Tensor> {
    if opts.batch_size == 0 {
        return Err(Error::Config(
            "encode: batch size must be at least 1".into(),
        ));
    }
    let dim = model.dim();
    let content = opts.max_len.saturating_sub(2);
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(texts[i].len().min(content)));
    let mut out = vec![0f32; texts.len() * dim];
    let mut ctx = Ctx::eval();
    let device = model.device();
    for (step, chunk) in order.chunks(opts.batch_size).enumerate() {
        let _profiled = tensor::profiler::step(step as u64 + 1);
        let batch_texts: Vec<&[u32]> = chunk.iter().map(|&i| texts[i]).collect();
        let batch = TokenBatch::new(&batch_texts, opts.max_len, PadTo::Longest, opts.special)?
            .to_device(device)?;
        let reps = tensor::profiler::in_phase(tensor::profiler::Phase::Forward, || {
            no_grad(|| {
                (opts.precision).autocast(|| model.encode_pooled(&batch, opts.pooling, &mut ctx))
            })
        })?
        .into_value();
        let reps = if opts.normalize {
            l2_normalize(&reps)?
        } else {
            reps
        };
        let rows = reps.to_dtype(DType::F32)?.to_vec::<f32>()?;
        for (r, &i) in chunk.iter().enumerate() {
            out[i * dim..(i + 1) * dim].copy_from_slice(&rows[r * dim..(r + 1) * dim]);
        }
        bar.inc(chunk.len() as u64);
    }
    Ok(Tensor::from_vec(out, &[texts.len(), dim])?)
}

/// The `encode` command's inputs.
#[derive(Clone, Debug)]
pub struct EncodeConfig {
    /// HF model directory (or a sentence-transformers one).
    pub model: PathBuf,
    /// A JSON-lines file of [`EncodeItem`]s or a directory of them.
    pub input: PathBuf,
    /// Queries: only changes the default `max_len` (the encoder is shared).
    pub is_query: bool,
    /// None: the sentence-transformers `max_seq_length`, else 32 (queries) / 128 (passages), at
    /// most the model's `max_position_embeddings`.
    pub max_len: Option<usize>,
    /// None: the sentence-transformers pooling, else [CLS].
    pub pooling: Option<Pooling>,
    /// None: as the sentence-transformers config says, else no.
    pub normalize: Option<bool>,
    /// Directory for `embeddings.safetensors` + `ids.txt`.
    pub output: PathBuf,
    pub batch_size: usize,
    /// Progress bar and load warnings on stderr.
    pub verbose: bool,
    /// Where the model runs.
    pub device: Device,
    /// f32, or mixed precision (CUDA only).
    pub precision: Precision,
    /// Encoder weights missing from the checkpoint are randomly initialised instead of an error.
    pub allow_random_init: bool,
}

/// What [`encode`] did and with which settings.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodeReport {
    pub count: usize,
    pub dim: usize,
    pub max_len: usize,
    pub pooling: Pooling,
    pub normalize: bool,
    pub sentence_transformers: bool,
    /// Texts longer than `max_len - 2` tokens (cut).
    pub truncated: usize,
}

/// 1-based line of the `k`-th (0-based) non-blank line of `path` (for error messages).
fn record_line(path: &Path, k: usize) -> usize {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .nth(k)
                .map(|(i, _)| i + 1)
        })
        .unwrap_or(0)
}

/// Reads the items of every input file, checking token ids against `vocab_size`.
fn read_items(input: &Path, vocab_size: usize) -> Result<Vec<EncodeItem>> {
    let mut items = Vec::new();
    for path in jsonl_inputs(input)? {
        let file_items: Vec<EncodeItem> = read_jsonl(&path)?;
        for (k, item) in file_items.iter().enumerate() {
            if let Some(&bad) = item.text.iter().find(|&&id| id as usize >= vocab_size) {
                return Err(Error::line(
                    &path,
                    record_line(&path, k),
                    format!("text: token id {bad} is outside the vocabulary ({vocab_size} ids)"),
                ));
            }
        }
        items.extend(file_items);
    }
    Ok(items)
}

/// Encodes `cfg.input` with `cfg.model` into `cfg.output` (module docs).
pub fn encode(cfg: &EncodeConfig) -> Result<EncodeReport> {
    let st = sentence_transformers_config(&cfg.model)?;
    let model_dir = st
        .as_ref()
        .map_or(cfg.model.as_path(), |s| &s.transformer_dir);
    let pooling = match (cfg.pooling, &st) {
        (Some(p), _) => p,
        (None, Some(s)) => s.pooling.clone().map_err(Error::Config)?,
        (None, None) => Pooling::Cls,
    };
    let normalize = cfg
        .normalize
        .unwrap_or(st.as_ref().is_some_and(|s| s.normalize));
    let (model, report) = DenseModel::from_pretrained(model_dir, cfg.allow_random_init)?;
    if cfg.verbose && !report.is_clean() {
        eprintln!("loading {}: {report}", model_dir.display());
    }
    nn::module::to_device(&model.encoder, cfg.device)?;
    let positions = model.encoder.config.max_position_embeddings;
    let max_len = cfg
        .max_len
        .or(st.as_ref().and_then(|s| s.max_seq_length))
        .unwrap_or(if cfg.is_query {
            DEFAULT_QUERY_MAX_LEN.min(positions)
        } else {
            DEFAULT_PASSAGE_MAX_LEN.min(positions)
        });
    if max_len < 2 || max_len > positions {
        return Err(Error::Config(format!(
            "encode: max_len {max_len} must be in 2..={positions} (the model's \
             max_position_embeddings)"
        )));
    }
    let special = SpecialIds::from_tokenizer(&bert::Tokenizer::from_dir(model_dir)?);
    let items = read_items(&cfg.input, model.encoder.config.vocab_size)?;
    let texts: Vec<&[u32]> = items.iter().map(|it| it.text.as_slice()).collect();
    let opts = EncodeOptions {
        max_len,
        pooling,
        normalize,
        batch_size: cfg.batch_size,
        special,
        precision: cfg.precision,
    };
    let bar = crate::progress_bar(
        texts.len() as u64,
        cfg.verbose,
        "encode [{elapsed_precise}] {wide_bar} {pos}/{len} texts ({per_sec}, eta {eta})",
    );
    let vectors = encode_texts(&model, &texts, &opts, &bar)?;
    bar.finish_and_clear();
    let truncated = texts.iter().filter(|t| t.len() > max_len - 2).count();
    let dim = model.dim();
    let count = items.len();
    let ids = items.into_iter().map(|it| it.text_id).collect();
    EmbeddingSet::new(ids, vectors)?.write(&cfg.output)?;
    Ok(EncodeReport {
        count,
        dim,
        max_len,
        pooling,
        normalize,
        sentence_transformers: st.is_some(),
        truncated,
    })
}
