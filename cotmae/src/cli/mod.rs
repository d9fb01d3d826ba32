//! The `cotmae` command line: one subcommand per pipeline stage, each in its own file here with
//! its clap `Args` struct (flag names from the original scripts) and a `run` function.
//!
//! `main.rs` only parses and calls [`run`]; errors come back as [`CliError`] and are printed as
//! one `error: ...` line (the chain of causes included) with exit status 1, never as a panic.

use clap::{Parser, Subcommand};

pub mod ablation;
pub mod build_train;
pub mod build_train_hn;
pub mod demo;
pub mod encode;
pub mod evaluate;
pub mod pipeline;
pub mod prepare;
pub mod pretrain;
pub mod profile;
pub mod search;
pub mod tokenize_corpus;
pub mod tokenize_queries;
pub mod train_retriever;

/// Any error a subcommand returns; its `Display` names the file, line or flag at fault.
pub type CliError = Box<dyn std::error::Error + Send + Sync>;
pub type CliResult<T = ()> = std::result::Result<T, CliError>;

#[derive(Parser, Debug)]
#[command(
    name = "cotmae",
    version,
    about = "CoT-MAE (ConTextual Masked Auto-Encoder) pretraining and dense passage retrieval, \
             on a Rust ML stack with no framework",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Split documents into sentences and spans; write data.jsonl and the token store.
    Prepare(prepare::PrepareArgs),
    /// Pretrain a CoT-MAE encoder (HF Trainer flags); checkpoints, logs, TensorBoard.
    Pretrain(Box<pretrain::PretrainArgs>),
    /// Tokenize a passage TSV into Tevatron encode files (split00.json ..).
    TokenizeCorpus(tokenize_corpus::TokenizeCorpusArgs),
    /// Tokenize a query TSV into one Tevatron encode file.
    TokenizeQueries(tokenize_queries::TokenizeQueriesArgs),
    /// Build training files with BM25 negatives (qidpidtriples).
    BuildTrain(build_train::BuildTrainArgs),
    /// Build training files with hard negatives mined from a ranking.
    BuildTrainHn(build_train_hn::BuildTrainHnArgs),
    /// Fine-tune a dense retriever (Tevatron's DenseModel: shared BERT, [CLS], dot product).
    TrainRetriever(Box<train_retriever::TrainRetrieverArgs>),
    /// Encode tokenized texts into embeddings.safetensors + ids.txt.
    Encode(encode::EncodeArgs),
    /// Exact inner-product search of encoded queries against an encoded corpus.
    Search(search::SearchArgs),
    /// MS MARCO metrics (MRR@10, recall@1/50/1000, nDCG@10) of a ranking against qrels.
    Evaluate(evaluate::EvaluateArgs),
    /// Two-stage fine-tuning (BM25, then BM25 + mined negatives) and MS MARCO evaluation,
    /// each stage resumable.
    Pipeline(Box<pipeline::PipelineArgs>),
    /// The whole method on generated data: pretrain three ways, fine-tune, evaluate, compare.
    Demo(demo::DemoArgs),
    /// The paper's comparisons on any corpus: arms x seeds from a TOML spec, paired
    /// statistics, report.md / report.json / SVG figures.
    Ablation(Box<ablation::AblationArgs>),
    /// The profiler's tables from a trace written by --profile_trace, or two traces side by
    /// side with per-op ratios.
    Profile(profile::ProfileCmdArgs),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> CliResult {
    match cli.command {
        Command::Prepare(a) => prepare::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Ablation(a) => ablation::run(*a),
        Command::Pipeline(a) => pipeline::run(*a),
        Command::Pretrain(a) => pretrain::run(*a),
        Command::TrainRetriever(a) => train_retriever::run(*a),
        Command::Encode(a) => encode::run(a),
        Command::TokenizeCorpus(a) => tokenize_corpus::run(a),
        Command::TokenizeQueries(a) => tokenize_queries::run(a),
        Command::BuildTrain(a) => build_train::run(a),
        Command::BuildTrainHn(a) => build_train_hn::run(a),
        Command::Search(a) => search::run(a),
        Command::Evaluate(a) => evaluate::run(a),
        Command::Profile(a) => profile::run(a),
    }
}

/// Runs one subcommand in this process, printing it first as a shell line (`$ cotmae ...`):
/// how `demo` and `pipeline` chain the stages.
pub fn run_args(args: &[String]) -> CliResult {
    let quoted: Vec<String> = args
        .iter()
        .map(|a| {
            if a.contains(char::is_whitespace) {
                format!("'{a}'")
            } else {
                a.clone()
            }
        })
        .collect();
    eprintln!("\n$ cotmae {}", quoted.join(" "));
    let argv = std::iter::once("cotmae".to_string()).chain(args.iter().cloned());
    run(Cli::try_parse_from(argv)?)
}

/// Upper bound on `--threads`: a larger pool only spawns idle OS threads (issue 14).
pub const MAX_THREADS: usize = 1024;

/// The `rayon` pool for `--threads`-style flags: `0` means the default (all cores).
pub fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> CliResult<T> {
    if threads == 0 {
        return Ok(f());
    }
    if threads > MAX_THREADS {
        return Err(format!(
            "--threads {threads} is above the limit of {MAX_THREADS} (use 0 for all cores)"
        )
        .into());
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    Ok(pool.install(f))
}

#[cfg(test)]
mod thread_cap_tests {
    use super::*;

    #[test]
    fn threads_above_cap_is_a_clear_error() {
        let err = with_threads(100_000, || ()).unwrap_err().to_string();
        assert!(err.contains("--threads 100000"), "{err}");
        assert!(with_threads(2, || 7).unwrap() == 7);
    }
}
