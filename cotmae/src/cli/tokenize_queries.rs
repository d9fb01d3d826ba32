//! `cotmae tokenize-queries`: a query TSV -> one Tevatron encode file (see
//! [`retrieval::tokenize`]).

use std::path::PathBuf;

use clap::Args;

use super::{with_threads, CliResult};

/// Flags keep Tevatron's `tokenize_queries.py` names.
#[derive(Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct TokenizeQueriesArgs {
    /// Tokenizer directory (vocab.txt, optional tokenizer_config.json).
    #[arg(long)]
    pub tokenizer_name: PathBuf,
    /// `qid \t text` lines.
    #[arg(long)]
    pub query_file: PathBuf,
    /// Output file (JSON lines {"text_id", "text"}).
    #[arg(long)]
    pub save_to: PathBuf,
    /// Token ids kept per query (no special tokens).
    #[arg(long, default_value_t = 32)]
    pub truncate: usize,
    /// Worker threads (0: all cores). The output does not depend on it.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

pub fn run(a: TokenizeQueriesArgs) -> CliResult {
    let tokenizer = bert::Tokenizer::from_dir(&a.tokenizer_name)?;
    let report = with_threads(a.threads, || {
        retrieval::tokenize_queries(&a.query_file, &a.save_to, &tokenizer, a.truncate)
    })??;
    eprintln!(
        "tokenize-queries: {} queries into {}",
        report.records,
        a.save_to.display()
    );
    Ok(())
}
