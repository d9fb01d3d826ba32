//! `cotmae demo`: the whole method on generated data, as a script of the same subcommands a user
//! runs on MS MARCO (each printed before it runs, so the demo doubles as a worked example).
//!
//! 1. Generate the task ([`data`]): documents about made-up people, 2-sentence passages, queries
//!    that name a person's town but not the person, a vocabulary and a tiny BERT config.
//! 2. `prepare` the documents into CoT-MAE spans.
//! 3. Pretrain three encoders from the same random initialisation: CoT-MAE (`pretrain`, with the
//!    decoder head), MLM only (`pretrain --use_decoder_head false`: the same steps without the
//!    contextual decoder), and none (the initialisation itself).
//! 4. `tokenize-corpus` / `tokenize-queries`, and `build-train` with negatives drawn from the
//!    positive's own document (same person, other facts) and from random documents.
//! 5. For each encoder: `train-retriever`, `encode` the corpus and the held-out queries,
//!    `search`, and the MS MARCO metrics on the held-out people.
//! 6. A table of MRR@10, R@1 and R@50 per encoder, and the time each stage took.
//!
//! Steps 2-6 are `cotmae ablation` ([`crate::ablation`]) on a spec the demo writes beside the
//! data (`spec.toml`: one seed, arms `cotmae`, `mlmonly`, `none`), so the demo and the ablation
//! are one code path; its cells are under `ablation/<arm>/seed-<s>/` and its report under
//! `ablation/`. Everything is seeded; the same seed and thread count give the same table.

pub mod data;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bert::{BertConfig, Tokenizer};
use tensor::Rng;

use crate::ablation::AblationOptions;
use crate::cli::CliResult;
use crate::device::DeviceArgs;
use data::DemoData;

/// Knobs of the demo (the defaults fit the 10-minute budget on 2 cores).
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Working directory (created; every stage's files are kept there).
    pub output_dir: PathBuf,
    pub seed: u64,
    pub n_docs: usize,
    pub pretrain_steps: usize,
    pub finetune_epochs: usize,
    /// `--device` / `--fp16` / `--bf16`, passed to every stage that runs a model (`search` gets
    /// the device alone).
    pub compute: DeviceArgs,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            output_dir: PathBuf::from("cotmae-demo"),
            seed: 42,
            n_docs: 300,
            pretrain_steps: 1500,
            finetune_epochs: 8,
            compute: DeviceArgs::default(),
        }
    }
}

/// One row of the result table.
#[derive(Clone, Debug)]
pub struct DemoRow {
    pub pretraining: &'static str,
    pub mrr_at_10: f64,
    pub recall_at_1: f64,
    pub recall_at_50: f64,
    /// Seconds: pretraining, fine-tuning, encoding + search.
    pub seconds: [f64; 3],
}

pub struct DemoReport {
    pub rows: Vec<DemoRow>,
    /// (stage, seconds) for the shared stages.
    pub shared: Vec<(String, f64)>,
    pub dev_queries: usize,
    pub passages: usize,
}

const VARIANTS: [&str; 3] = ["CoT-MAE", "MLM only", "none"];

/// Writes lines to `path`.
fn write_lines(path: &Path, lines: impl IntoIterator<Item = String>) -> CliResult {
    let mut out = String::new();
    for l in lines {
        out.push_str(&l);
        out.push('\n');
    }
    std::fs::write(path, out).map_err(|e| format!("{}: {e}", path.display()).into())
}

/// The tiny BERT every encoder starts from.
fn tiny_config(vocab_size: usize) -> BertConfig {
    BertConfig {
        vocab_size,
        hidden_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 512,
        max_position_embeddings: 64,
        ..BertConfig::default()
    }
}

/// Step 1: the generated files (module doc): `vocab/`, `config.json`, `documents.txt`,
/// `corpus.tsv`, `queries.{train,dev}.tsv`, `qrels.{train,dev}.tsv` and `triples.train.tsv` in
/// `dir`; returns the vocabulary directory.
pub fn write_task(data: &DemoData, dir: &Path, seed: u64) -> CliResult<PathBuf> {
    let vocab_dir = dir.join("vocab");
    std::fs::create_dir_all(&vocab_dir)?;
    write_lines(&vocab_dir.join("vocab.txt"), data.vocab())?;
    std::fs::write(
        vocab_dir.join("tokenizer_config.json"),
        "{\"do_lower_case\": true}\n",
    )?;
    let tok = Tokenizer::from_dir(&vocab_dir)?;
    std::fs::write(
        dir.join("config.json"),
        tiny_config(tok.vocab_size()).to_json_string("BertForMaskedLM"),
    )?;
    write_lines(
        &dir.join("documents.txt"),
        data.docs.iter().map(|d| d.text()),
    )?;
    write_lines(
        &dir.join("corpus.tsv"),
        data.passages
            .iter()
            .map(|p| format!("{}\t{}\t{}", p.pid, p.title, p.text)),
    )?;
    for (name, queries) in [("train", &data.train_queries), ("dev", &data.dev_queries)] {
        write_lines(
            &dir.join(format!("queries.{name}.tsv")),
            queries.iter().map(|q| format!("{}\t{}", q.qid, q.text)),
        )?;
        write_lines(
            &dir.join(format!("qrels.{name}.tsv")),
            queries
                .iter()
                .flat_map(|q| q.relevant.iter().map(|p| format!("{}\t0\t{p}\t1", q.qid))),
        )?;
    }
    // Negatives in the qidpidtriples layout: each positive against the other passages of its
    // document (same person, other facts) and as many passages of random documents.
    let mut rng = Rng::new(seed ^ 0x7e57);
    let mut triples = Vec::new();
    for q in &data.train_queries {
        let doc = data
            .passages
            .iter()
            .find(|p| p.pid == q.relevant[0])
            .map(|p| p.doc);
        let same: Vec<&str> = data
            .passages
            .iter()
            .filter(|p| Some(p.doc) == doc && !q.relevant.contains(&p.pid))
            .map(|p| p.pid.as_str())
            .collect();
        let random = (0..same.len().max(4))
            .map(|_| {
                data.passages[rng.below(data.passages.len() as u64) as usize]
                    .pid
                    .as_str()
            })
            .filter(|pid| !q.relevant.iter().any(|r| r == pid));
        for neg in same.iter().copied().chain(random) {
            triples.push(format!("{}\t{}\t{neg}", q.qid, q.relevant[0]));
        }
    }
    write_lines(&dir.join("triples.train.tsv"), triples)?;
    Ok(vocab_dir)
}

/// The demo as an ablation spec over the files of [`write_task`] (one seed, three arms).
fn spec_text(opts: &DemoOptions) -> String {
    let steps = opts.pretrain_steps;
    format!(
        r#"# Written by `cotmae demo`: the demo is this ablation on its generated task.
seeds = [{seed}]
baseline = "mlmonly"
[data]
pretrain_file = "documents.txt"
corpus = "corpus.tsv"
train_queries = "queries.train.tsv"
train_qrels = "qrels.train.tsv"
dev_queries = "queries.dev.tsv"
dev_qrels = "qrels.dev.tsv"
negatives = "triples.train.tsv"
[model]
config_name = "config.json"
tokenizer_name = "vocab"
[prepare]
maxlen = 32
[pretrain]
max_steps = {steps}
per_device_train_batch_size = 16
max_seq_length = 48
learning_rate = 1e-3
warmup_ratio = 0.05
logging_steps = 100
save_steps = {steps}
[finetune]
per_device_train_batch_size = 16
train_n_passages = 4
q_max_len = 32
p_max_len = 48
learning_rate = 5e-4
num_train_epochs = {epochs}
logging_steps = 50
save_steps = 0
n_sample = 128
depth = 100
[arms.cotmae]
[arms.mlmonly]
pretrain.use_decoder_head = false
[arms.none]
pretrain = false
"#,
        seed = opts.seed,
        epochs = opts.finetune_epochs,
    )
}

/// Runs the demo (module doc) and returns its table.
pub fn run(opts: &DemoOptions) -> CliResult<DemoReport> {
    let dir = &opts.output_dir;
    // The device flags first, before anything is written.
    opts.compute.open()?;
    std::fs::create_dir_all(dir)?;
    let t = Instant::now();
    let data = data::generate(opts.n_docs, 0.7, opts.seed);
    write_task(&data, dir, opts.seed)?;
    eprintln!(
        "demo: {} documents, {} passages, {} training and {} held-out queries in {}",
        data.docs.len(),
        data.passages.len(),
        data.train_queries.len(),
        data.dev_queries.len(),
        dir.display()
    );
    let spec = dir.join("spec.toml");
    std::fs::write(&spec, spec_text(opts))?;
    let generate = t.elapsed().as_secs_f64();
    let run = crate::ablation::run(&AblationOptions {
        spec,
        output_dir: dir.join("ablation"),
        compute: opts.compute.clone(),
    })?;
    let rows = run
        .report
        .arms
        .iter()
        .zip(VARIANTS)
        .map(|(arm, variant)| {
            let metric = |name: &str| {
                arm.metrics
                    .iter()
                    .find(|m| m.metric == name)
                    .map_or(0.0, |m| m.mean)
            };
            let stage = |cell: &serde_json::Value, prefix: &str| -> f64 {
                cell["stage_seconds"]
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .filter(|(k, _)| k.starts_with(prefix))
                            .filter_map(|(_, v)| v.as_f64())
                            .fold(0.0, |a, b| a + b) // 0.0, not Sum's -0.0, for no stage
                    })
                    .unwrap_or(0.0)
            };
            let cell = read_metrics(&dir.join("ablation").join(&arm.arm), opts.seed);
            DemoRow {
                pretraining: variant,
                mrr_at_10: metric("MRR@10"),
                recall_at_1: metric("recall@1"),
                recall_at_50: metric("recall@50"),
                seconds: [
                    stage(&cell, "pretrain"),
                    stage(&cell, "train-retriever"),
                    stage(&cell, "encode-search"),
                ],
            }
        })
        .collect();
    Ok(DemoReport {
        rows,
        shared: vec![
            ("generate".to_string(), generate),
            (
                "shared stages (prepare, tokenize, build-train)".to_string(),
                marker_seconds(&dir.join("ablation").join("shared").join("stages")),
            ),
        ],
        dev_queries: data.dev_queries.len(),
        passages: data.passages.len(),
    })
}

/// The seconds recorded in a directory of stage markers, added up.
fn marker_seconds(markers: &Path) -> f64 {
    std::fs::read_dir(markers)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| t.trim().parse::<f64>().ok())
        .sum()
}

/// A finished cell's metrics.json (`Null` if unreadable).
fn read_metrics(arm_dir: &Path, seed: u64) -> serde_json::Value {
    std::fs::read_to_string(arm_dir.join(format!("seed-{seed}")).join("metrics.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null)
}

impl DemoReport {
    /// The result table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "held-out queries: {}, passages: {}",
            self.dev_queries, self.passages
        );
        let _ = writeln!(
            t,
            "{:<16} {:>7} {:>6} {:>6}   {:>9} {:>9} {:>13}",
            "pretraining", "MRR@10", "R@1", "R@50", "pretrain", "fine-tune", "encode+search"
        );
        for r in &self.rows {
            let _ = writeln!(
                t,
                "{:<16} {:>7.3} {:>6.3} {:>6.3}   {:>8.1}s {:>8.1}s {:>12.1}s",
                r.pretraining,
                r.mrr_at_10,
                r.recall_at_1,
                r.recall_at_50,
                r.seconds[0],
                r.seconds[1],
                r.seconds[2]
            );
        }
        for (stage, secs) in &self.shared {
            let _ = writeln!(t, "{stage}: {secs:.1}s");
        }
        t
    }
}
