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
//! Everything is seeded; the same seed and thread count give the same table.

pub mod data;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bert::{BertConfig, BertForMaskedLM, Tokenizer};
use tensor::Rng;

use crate::cli::{run_args as cotmae, CliResult};
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

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|a| a.to_string()).collect()
}

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

/// Elapsed seconds since `t`.
fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// Runs the demo (module doc) and returns its table.
pub fn run(opts: &DemoOptions) -> CliResult<DemoReport> {
    let dir = &opts.output_dir;
    opts.compute.open()?;
    let (compute, device) = (opts.compute.argv(), opts.compute.device_argv());
    std::fs::create_dir_all(dir)?;
    let seed = opts.seed.to_string();
    let mut shared = Vec::new();

    let t = Instant::now();
    let data = data::generate(opts.n_docs, 0.7, opts.seed);
    let vocab = write_task(&data, dir, opts.seed)?;
    eprintln!(
        "demo: {} documents, {} passages, {} training and {} held-out queries in {}",
        data.docs.len(),
        data.passages.len(),
        data.train_queries.len(),
        data.dev_queries.len(),
        dir.display()
    );
    let prep = dir.join("pretrain-data");
    cotmae(
        &[
            args(&["prepare", "--file"]),
            vec![s(&dir.join("documents.txt")), "--save_to".into(), s(&prep)],
            args(&["--tokenizer"]),
            vec![s(&vocab)],
            args(&["--maxlen", "32", "--seed"]),
            vec![seed.clone()],
        ]
        .concat(),
    )?;
    shared.push(("generate + prepare".to_string(), secs(t)));

    // Step 3: three encoders from one initialisation.
    let mut pretrain_secs = Vec::new();
    let mut encoders = Vec::new();
    for variant in VARIANTS {
        let t = Instant::now();
        let out = dir.join(format!("pretrained-{}", slug(variant)));
        if variant == "none" {
            let tok = Tokenizer::from_dir(&vocab)?;
            let config = tiny_config(tok.vocab_size());
            let model = BertForMaskedLM::new(&config, &mut Rng::new(opts.seed))?;
            model.save_pretrained(&out, Some(&tok))?;
            eprintln!(
                "(no pretraining: the random initialisation saved to {})",
                out.display()
            );
        } else {
            let head = if variant == "CoT-MAE" {
                "true"
            } else {
                "false"
            };
            cotmae(
                &[
                    args(&["pretrain", "--config_name"]),
                    vec![
                        s(&dir.join("config.json")),
                        "--tokenizer_name".into(),
                        s(&vocab),
                    ],
                    args(&["--train_path"]),
                    vec![s(&prep), "--output_dir".into(), s(&out)],
                    args(&["--overwrite_output_dir", "--max_steps"]),
                    vec![opts.pretrain_steps.to_string()],
                    args(&[
                        "--per_device_train_batch_size",
                        "16",
                        "--max_seq_length",
                        "48",
                        "--learning_rate",
                        "1e-3",
                        "--warmup_ratio",
                        "0.05",
                        "--logging_steps",
                        "100",
                        "--use_decoder_head",
                        head,
                        "--seed",
                    ]),
                    // One checkpoint, at the end (pretrain needs save_steps > 0).
                    vec![
                        seed.clone(),
                        "--save_steps".into(),
                        opts.pretrain_steps.to_string(),
                    ],
                    compute.clone(),
                ]
                .concat(),
            )?;
        }
        pretrain_secs.push(secs(t));
        encoders.push(out);
    }

    // Step 4: the retrieval data.
    let t = Instant::now();
    let (corpus, train) = (dir.join("corpus"), dir.join("train"));
    let tok_args = |cmd: &str| [args(&[cmd, "--tokenizer_name"]), vec![s(&vocab)]].concat();
    cotmae(
        &[
            tok_args("tokenize-corpus"),
            vec![
                "--file".into(),
                s(&dir.join("corpus.tsv")),
                "--save_to".into(),
                s(&corpus),
            ],
            args(&["--truncate", "46", "--n_splits", "2"]),
        ]
        .concat(),
    )?;
    let dev_queries = dir.join("queries.dev.json");
    cotmae(
        &[
            tok_args("tokenize-queries"),
            vec!["--query_file".into(), s(&dir.join("queries.dev.tsv"))],
            vec!["--save_to".into(), s(&dev_queries)],
            args(&["--truncate", "30"]),
        ]
        .concat(),
    )?;
    cotmae(
        &[
            tok_args("build-train"),
            vec!["--qrels".into(), s(&dir.join("qrels.train.tsv"))],
            vec!["--queries".into(), s(&dir.join("queries.train.tsv"))],
            vec!["--collection".into(), s(&dir.join("corpus.tsv"))],
            vec!["--negative_file".into(), s(&dir.join("triples.train.tsv"))],
            vec!["--save_to".into(), s(&train)],
            args(&["--truncate", "46", "--seed"]),
            vec![seed.clone()],
        ]
        .concat(),
    )?;
    shared.push(("tokenize + build-train".to_string(), secs(t)));

    // Step 5: fine-tune, encode, search, evaluate each encoder.
    let qrels = retrieval::Qrels::read(dir.join("qrels.dev.tsv"))?;
    let mut rows = Vec::new();
    for (i, variant) in VARIANTS.iter().enumerate() {
        let name = slug(variant);
        let t = Instant::now();
        let model = dir.join(format!("retriever-{name}"));
        cotmae(
            &[
                args(&["train-retriever", "--model_name_or_path"]),
                vec![s(&encoders[i]), "--tokenizer_name".into(), s(&vocab)],
                vec![
                    "--train_dir".into(),
                    s(&train),
                    "--output_dir".into(),
                    s(&model),
                ],
                args(&[
                    "--overwrite_output_dir",
                    "--per_device_train_batch_size",
                    "16",
                    "--train_n_passages",
                    "4",
                    "--q_max_len",
                    "32",
                    "--p_max_len",
                    "48",
                    "--learning_rate",
                    "5e-4",
                    "--num_train_epochs",
                ]),
                vec![opts.finetune_epochs.to_string()],
                args(&["--logging_steps", "50", "--save_steps", "0", "--seed"]),
                vec![seed.clone()],
                compute.clone(),
            ]
            .concat(),
        )?;
        let finetune = secs(t);
        let t = Instant::now();
        let (p_emb, q_emb) = (
            dir.join(format!("emb-{name}-corpus")),
            dir.join(format!("emb-{name}-dev")),
        );
        cotmae(
            &[
                args(&["encode", "--model"]),
                vec![
                    s(&model),
                    "--input".into(),
                    s(&corpus),
                    "--output".into(),
                    s(&p_emb),
                ],
                args(&["--max-len", "48"]),
                compute.clone(),
            ]
            .concat(),
        )?;
        cotmae(
            &[
                args(&["encode", "--is-query", "--model"]),
                vec![
                    s(&model),
                    "--input".into(),
                    s(&dev_queries),
                    "--output".into(),
                    s(&q_emb),
                ],
                args(&["--max-len", "32"]),
                compute.clone(),
            ]
            .concat(),
        )?;
        let ranking = dir.join(format!("run-{name}.dev.tsv"));
        cotmae(
            &[
                args(&["search", "--queries"]),
                vec![
                    s(&q_emb),
                    "--corpus".into(),
                    s(&p_emb),
                    "--output".into(),
                    s(&ranking),
                ],
                args(&["--depth", "100"]),
                device.clone(),
            ]
            .concat(),
        )?;
        let m = retrieval::evaluate(&qrels, &retrieval::Run::read(&ranking)?)?;
        rows.push(DemoRow {
            pretraining: variant,
            mrr_at_10: m.mrr_at_10,
            recall_at_1: m.recall[0],
            recall_at_50: m.recall[1],
            seconds: [pretrain_secs[i], finetune, secs(t)],
        });
    }
    Ok(DemoReport {
        rows,
        shared,
        dev_queries: data.dev_queries.len(),
        passages: data.passages.len(),
    })
}

fn slug(variant: &str) -> String {
    variant.to_lowercase().replace([' ', '-'], "")
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
