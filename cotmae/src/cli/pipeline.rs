//! `cotmae pipeline`: the two-stage fine-tuning and evaluation of REFERENCE §6-7 (what the
//! original's eval_msmarco.sh does), from a pretrained model directory and the MS MARCO files.
//!
//! Stages, each a subcommand printed before it runs, outputs under `output_dir`:
//! 1. `tokenize-corpus` (`corpus/`, `n_splits` files), `tokenize-queries` (train and dev);
//! 2. `build-train` with the BM25 negatives (`train-bm25/`);
//! 3. stage 1: `train-retriever` from the pretrained model on BM25 negatives (`retriever-s1/`);
//! 4. `encode` the corpus and the train queries with it, `search` (`run-s1.train.tsv`);
//! 5. `build-train-hn` from that ranking (`train-hn/`);
//! 6. stage 2: `train-retriever` from the *pretrained* model (not stage 1) on BM25 + mined
//!    negatives (`train-s2/` links both sets) (`retriever-s2/`);
//! 7. `encode` the corpus and the dev queries with it, `search`, `evaluate` (`run-s2.dev.tsv`,
//!    `metrics.json`).
//!
//! Resumable: a finished stage leaves `stages/<name>.done` and is skipped when the command is run
//! again; a training stage interrupted mid-way continues from its latest checkpoint.

use std::path::{Path, PathBuf};

use clap::Args;

use retrieval::formats::jsonl_inputs;

use super::{run_args, CliResult};
use crate::device::DeviceArgs;

#[derive(Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct PipelineArgs {
    /// The pretrained encoder (an HF BERT directory, e.g. `cotmae pretrain`'s output).
    #[arg(long)]
    pub model_name_or_path: PathBuf,
    /// Tokenizer directory (default: the model directory).
    #[arg(long)]
    pub tokenizer_name: Option<PathBuf>,
    /// Passed to the training stages: encoder weights missing from `model_name_or_path` are
    /// randomly initialised instead of an error.
    #[arg(long)]
    pub allow_random_init: bool,
    /// `pid \t title \t text` (MS MARCO corpus.tsv).
    #[arg(long)]
    pub corpus: PathBuf,
    /// Train queries `qid \t text`.
    #[arg(long)]
    pub train_queries: PathBuf,
    /// Train qrels (`qid 0 pid 1`).
    #[arg(long)]
    pub train_qrels: PathBuf,
    /// BM25 negatives: qidpidtriples.train.full.2.tsv (`qid \t pos \t neg`).
    #[arg(long)]
    pub bm25_negatives: PathBuf,
    /// Dev queries `qid \t text`.
    #[arg(long)]
    pub dev_queries: PathBuf,
    /// Dev qrels (`qid \t pid` or 4 columns).
    #[arg(long)]
    pub dev_qrels: PathBuf,
    /// Working directory for every stage.
    #[arg(long)]
    pub output_dir: PathBuf,
    #[arg(long, default_value_t = 8)]
    pub per_device_train_batch_size: usize,
    #[arg(long, default_value_t = 16)]
    pub train_n_passages: usize,
    #[arg(long, default_value_t = 32)]
    pub q_max_len: usize,
    #[arg(long, default_value_t = 128)]
    pub p_max_len: usize,
    #[arg(long, default_value_t = 2e-5)]
    pub learning_rate: f64,
    /// Epochs of stage 1 (BM25 negatives).
    #[arg(long, default_value_t = 3.0)]
    pub stage1_epochs: f64,
    /// Epochs of stage 2 (BM25 + mined negatives).
    #[arg(long, default_value_t = 2.0)]
    pub stage2_epochs: f64,
    #[arg(long, default_value_t = 0.1)]
    pub warmup_ratio: f64,
    /// Checkpoint interval of the training stages (what an interrupted stage resumes from).
    #[arg(long, default_value_t = 500)]
    pub save_steps: u64,
    #[arg(long, default_value_t = 100)]
    pub logging_steps: u64,
    /// Corpus files (and encoded shards).
    #[arg(long, default_value_t = 8)]
    pub n_splits: usize,
    /// Search depth (MS MARCO evaluation uses ranks 1..1000).
    #[arg(long, default_value_t = 1000)]
    pub depth: usize,
    /// Mined negatives: from the first `hn_depth` non-positive hits, keep `hn_sample`.
    #[arg(long, default_value_t = 200)]
    pub hn_depth: usize,
    #[arg(long, default_value_t = 30)]
    pub hn_sample: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// `--device`, `--fp16` / `--bf16` for the training and encoding stages (`search` gets the
    /// device alone).
    #[command(flatten)]
    pub compute: DeviceArgs,
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Builds an argument vector from flag/value pairs; a pair with an empty value is a bare flag.
fn argv(cmd: &str, pairs: &[(&str, String)]) -> Vec<String> {
    let mut v = vec![cmd.to_string()];
    for (flag, value) in pairs {
        v.push(format!("--{flag}"));
        if !value.is_empty() {
            v.push(value.clone());
        }
    }
    v
}

/// Runs subcommand `cmd` with `pairs` (as [`argv`]) followed by `extra` arguments.
fn run_with(cmd: &str, pairs: &[(&str, String)], extra: Vec<String>) -> CliResult {
    let mut args = argv(cmd, pairs);
    args.extend(extra);
    run_args(&args)
}

/// Runs `f` unless the stage's marker exists, then writes the marker.
fn stage(dir: &Path, name: &str, f: impl FnOnce() -> CliResult) -> CliResult {
    let marker = dir.join("stages").join(format!("{name}.done"));
    if marker.exists() {
        eprintln!(
            "pipeline: stage {name} already done ({}), skipped",
            marker.display()
        );
        return Ok(());
    }
    f()?;
    std::fs::create_dir_all(dir.join("stages"))?;
    std::fs::write(&marker, b"")?;
    Ok(())
}

pub fn run(a: PipelineArgs) -> CliResult {
    let out = &a.output_dir;
    a.compute.open()?;
    std::fs::create_dir_all(out)?;
    let tok = s(a.tokenizer_name.as_ref().unwrap_or(&a.model_name_or_path));
    let corpus = out.join("corpus");
    let (train_q, dev_q) = (out.join("queries.train.json"), out.join("queries.dev.json"));
    let (bm25, hn, s2) = (
        out.join("train-bm25"),
        out.join("train-hn"),
        out.join("train-s2"),
    );

    stage(out, "tokenize", || {
        run_args(&argv(
            "tokenize-corpus",
            &[
                ("tokenizer_name", tok.clone()),
                ("file", s(&a.corpus)),
                ("save_to", s(&corpus)),
                ("truncate", (a.p_max_len - 2).to_string()),
                ("n_splits", a.n_splits.to_string()),
            ],
        ))?;
        for (file, save_to) in [(&a.train_queries, &train_q), (&a.dev_queries, &dev_q)] {
            run_args(&argv(
                "tokenize-queries",
                &[
                    ("tokenizer_name", tok.clone()),
                    ("query_file", s(file)),
                    ("save_to", s(save_to)),
                    ("truncate", (a.q_max_len - 2).to_string()),
                ],
            ))?;
        }
        Ok(())
    })?;
    let train_files = |negative_file: &Path, save_to: &Path| {
        vec![
            ("tokenizer_name", tok.clone()),
            ("negative_file", s(negative_file)),
            ("qrels", s(&a.train_qrels)),
            ("queries", s(&a.train_queries)),
            ("collection", s(&a.corpus)),
            ("save_to", s(save_to)),
            ("seed", a.seed.to_string()),
        ]
    };
    stage(out, "build-train", || {
        run_args(&argv("build-train", &train_files(&a.bm25_negatives, &bm25)))
    })?;
    stage(out, "train-stage1", || {
        train(&a, &bm25, &out.join("retriever-s1"), a.stage1_epochs)
    })?;
    let run_s1 = out.join("run-s1.train.tsv");
    stage(out, "mine", || {
        encode_and_search(
            &a,
            &out.join("retriever-s1"),
            &corpus,
            &train_q,
            &out.join("emb-s1"),
            &run_s1,
        )
    })?;
    stage(out, "build-train-hn", || {
        let mut pairs = train_files(&run_s1, &hn);
        pairs.push(("depth", a.hn_depth.to_string()));
        pairs.push(("n_sample", a.hn_sample.to_string()));
        run_args(&argv("build-train-hn", &pairs))?;
        // Stage 2 reads both sets of negatives from one directory.
        std::fs::create_dir_all(&s2)?;
        for (prefix, dir) in [("bm25", &bm25), ("hn", &hn)] {
            for f in jsonl_inputs(dir)? {
                let name = f.file_name().expect("a file").to_string_lossy().to_string();
                let link = s2.join(format!("{prefix}-{name}"));
                let _ = std::fs::remove_file(&link);
                if std::fs::hard_link(&f, &link).is_err() {
                    std::fs::copy(&f, &link)?;
                }
            }
        }
        Ok(())
    })?;
    stage(out, "train-stage2", || {
        train(&a, &s2, &out.join("retriever-s2"), a.stage2_epochs)
    })?;
    let run_s2 = out.join("run-s2.dev.tsv");
    stage(out, "evaluate", || {
        encode_and_search(
            &a,
            &out.join("retriever-s2"),
            &corpus,
            &dev_q,
            &out.join("emb-s2"),
            &run_s2,
        )?;
        let m = retrieval::evaluate(
            &retrieval::Qrels::read(&a.dev_qrels)?,
            &retrieval::Run::read(&run_s2)?,
        )?;
        print!("{}", m.table());
        let metrics = out.join("metrics.json");
        tensor::fs::write_atomic(&metrics, format!("{}\n", m.to_json()).as_bytes())
            .map_err(|e| format!("{}: {e}", metrics.display()))?;
        Ok(())
    })?;
    eprintln!(
        "pipeline: done; metrics in {}",
        out.join("metrics.json").display()
    );
    Ok(())
}

/// One fine-tuning stage from the pretrained model; resumes from its latest checkpoint.
fn train(a: &PipelineArgs, train_dir: &Path, output_dir: &Path, epochs: f64) -> CliResult {
    let resume = retrieval::train::latest_checkpoint(output_dir)?;
    let mut pairs = vec![
        ("model_name_or_path", s(&a.model_name_or_path)),
        ("train_dir", s(train_dir)),
        ("output_dir", s(output_dir)),
        (
            "per_device_train_batch_size",
            a.per_device_train_batch_size.to_string(),
        ),
        ("train_n_passages", a.train_n_passages.to_string()),
        ("q_max_len", a.q_max_len.to_string()),
        ("p_max_len", a.p_max_len.to_string()),
        ("learning_rate", a.learning_rate.to_string()),
        ("num_train_epochs", epochs.to_string()),
        ("warmup_ratio", a.warmup_ratio.to_string()),
        ("logging_steps", a.logging_steps.to_string()),
        ("save_steps", a.save_steps.to_string()),
        ("seed", a.seed.to_string()),
    ];
    if let Some(t) = &a.tokenizer_name {
        pairs.push(("tokenizer_name", s(t)));
    }
    if a.allow_random_init {
        pairs.push(("allow_random_init", String::new()));
    }
    match resume {
        Some(ckpt) => pairs.push(("resume_from_checkpoint", s(&ckpt))),
        None => pairs.push(("overwrite_output_dir", String::new())),
    }
    run_with("train-retriever", &pairs, a.compute.argv())
}

/// Encodes the corpus (one shard per split file) and `queries` with `model`, then searches.
fn encode_and_search(
    a: &PipelineArgs,
    model: &Path,
    corpus: &Path,
    queries: &Path,
    emb: &Path,
    ranking: &Path,
) -> CliResult {
    let mut shards = Vec::new();
    for (i, split) in jsonl_inputs(corpus)?.iter().enumerate() {
        let shard = emb.join(format!("corpus-{i:02}"));
        run_with(
            "encode",
            &[
                ("model", s(model)),
                ("input", s(split)),
                ("output", s(&shard)),
                ("max-len", a.p_max_len.to_string()),
            ],
            a.compute.argv(),
        )?;
        shards.push(s(&shard));
    }
    let q = emb.join("queries");
    run_with(
        "encode",
        &[
            ("is-query", String::new()),
            ("model", s(model)),
            ("input", s(queries)),
            ("output", s(&q)),
            ("max-len", a.q_max_len.to_string()),
        ],
        a.compute.argv(),
    )?;
    let mut args = argv(
        "search",
        &[
            ("queries", s(&q)),
            ("output", s(ranking)),
            ("depth", a.depth.to_string()),
        ],
    );
    args.extend(a.compute.device_argv());
    args.push("--corpus".into());
    args.extend(shards);
    run_args(&args)
}
