//! `cotmae tokenize-corpus`: a passage TSV -> Tevatron encode files `split00.json ..` (see
//! [`retrieval::tokenize`]).

use std::path::PathBuf;

use clap::Args;

use super::{with_threads, CliResult};

/// Flags keep Tevatron's `tokenize_passages.py` names.
#[derive(Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct TokenizeCorpusArgs {
    /// Tokenizer directory (vocab.txt, optional tokenizer_config.json).
    #[arg(long)]
    pub tokenizer_name: PathBuf,
    /// `pid \t title \t text` (or `pid \t text`) lines; fields after the pid joined with [SEP].
    #[arg(long)]
    pub file: PathBuf,
    /// Output directory (created): split00.json .. split{n_splits-1}.json.
    #[arg(long)]
    pub save_to: PathBuf,
    /// Token ids kept per passage (no special tokens).
    #[arg(long, default_value_t = 128)]
    pub truncate: usize,
    /// Number of output files (contiguous runs of passages, for parallel encoding).
    #[arg(long, default_value_t = 8)]
    pub n_splits: usize,
    /// Worker threads (0: all cores). The output does not depend on it.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

pub fn run(a: TokenizeCorpusArgs) -> CliResult {
    let tokenizer = bert::Tokenizer::from_dir(&a.tokenizer_name)?;
    let report = with_threads(a.threads, || {
        retrieval::tokenize_corpus(&a.file, &a.save_to, &tokenizer, a.truncate, a.n_splits)
    })??;
    eprintln!(
        "tokenize-corpus: {} passages into {} files in {}",
        report.records,
        report.files.len(),
        a.save_to.display()
    );
    Ok(())
}
