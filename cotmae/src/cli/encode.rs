//! `cotmae encode`: tokenized texts -> `embeddings.safetensors` + `ids.txt` (see
//! [`retrieval::encode`]).

use std::path::PathBuf;

use clap::Args;
use retrieval::{encode, EncodeConfig, Pooling};

use super::{with_threads, CliResult};
use crate::device::DeviceArgs;

#[derive(Args, Debug)]
pub struct EncodeArgs {
    /// HF model directory, or a sentence-transformers one (pooling, normalisation and max
    /// length then default from its modules.json).
    #[arg(long)]
    pub model: PathBuf,
    /// JSON lines of {"text_id", "text": [ids]} (tokenize-corpus / tokenize-queries output): a
    /// file or a directory of *.json / *.jsonl files.
    #[arg(long)]
    pub input: PathBuf,
    /// The inputs are queries (default max length 32 instead of 128).
    #[arg(long)]
    pub is_query: bool,
    /// Tokens per text including [CLS] and [SEP] (longer texts are cut).
    #[arg(long)]
    pub max_len: Option<usize>,
    /// cls (Tevatron) or mean; default: the sentence-transformers config, else cls.
    #[arg(long, value_parser = ["cls", "mean"])]
    pub pooling: Option<String>,
    /// L2-normalise the vectors (`--normalize false` turns a sentence-transformers default off).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub normalize: Option<bool>,
    /// Output directory: embeddings.safetensors and ids.txt.
    #[arg(long)]
    pub output: PathBuf,
    /// `--device`, `--fp16` / `--bf16` (inference under autocast; the vectors are written as
    /// f32 either way).
    #[command(flatten)]
    pub compute: DeviceArgs,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Worker threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[command(flatten)]
    pub profile: super::profile::ProfileArgs,
    /// Load a checkpoint that lacks some of the encoder's weights, initialising those randomly
    /// (HF's initialisation; as `ignore_mismatched_sizes`). Without it a missing weight is an
    /// error naming the checkpoint file and the tensors.
    #[arg(long = "allow_random_init", alias = "allow-random-init")]
    pub allow_random_init: bool,
}

pub fn run(a: EncodeArgs) -> CliResult {
    let (device, precision) = a.compute.open()?;
    let cfg = EncodeConfig {
        model: a.model,
        input: a.input,
        is_query: a.is_query,
        max_len: a.max_len,
        pooling: a.pooling.as_deref().and_then(Pooling::from_name),
        normalize: a.normalize,
        output: a.output,
        batch_size: a.batch_size,
        verbose: true,
        device,
        precision,
        allow_random_init: a.allow_random_init,
    };
    a.profile.start()?;
    let r = with_threads(a.threads, || encode(&cfg))??;
    a.profile.finish()?;
    eprintln!(
        "encode: {} texts -> [{}, {}] in {} (max_len {}, {} truncated, pooling {}, normalize {}{})",
        r.count,
        r.count,
        r.dim,
        cfg.output.display(),
        r.max_len,
        r.truncated,
        r.pooling.name(),
        r.normalize,
        if r.sentence_transformers {
            ", sentence-transformers defaults"
        } else {
            ""
        }
    );
    Ok(())
}
