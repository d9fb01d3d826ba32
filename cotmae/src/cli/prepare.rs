//! `cotmae prepare`: a corpus file -> `data.jsonl` + `tokens.bin` (see [`crate::prepare`]).

use std::path::PathBuf;

use clap::Args;

use super::{with_threads, CliResult};
use crate::prepare::{prepare, InputFormat, PrepareOptions};

/// Flags keep the original script's snake_case names (`--save_to`).
#[derive(Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct PrepareArgs {
    /// Input: MS MARCO documents TSV (docid \t url \t title \t body) or plain text, one
    /// document a line.
    #[arg(long)]
    pub file: PathBuf,
    /// Output directory (created): data.jsonl and tokens.bin.
    #[arg(long)]
    pub save_to: PathBuf,
    /// Directory with vocab.txt (and tokenizer_config.json), e.g. a bert-base-uncased download.
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Span target length in tokens.
    #[arg(long, default_value_t = 128)]
    pub maxlen: usize,
    /// random_sampled spans are drawn within this many spans on each side of the anchor.
    #[arg(long, default_value_t = 100)]
    pub window_size: usize,
    /// Probability that a span's target length is uniform in [2, maxlen] instead of maxlen.
    #[arg(long, default_value_t = 0.15)]
    pub short_sentence_prob: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Input format: auto (3+ tabs on the first line: TSV), tsv or text.
    #[arg(long, default_value = "auto", value_parser = ["auto", "tsv", "text"])]
    pub format: String,
    /// Worker threads (0: all cores). The output does not depend on it.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

pub fn run(a: PrepareArgs) -> CliResult {
    let tokenizer = bert::Tokenizer::from_dir(&a.tokenizer)?;
    let format = match a.format.as_str() {
        "tsv" => InputFormat::MsMarcoTsv,
        "text" => InputFormat::PlainText,
        _ => InputFormat::Auto,
    };
    let opts = PrepareOptions {
        maxlen: a.maxlen,
        window_size: a.window_size,
        short_sentence_prob: a.short_sentence_prob,
        seed: a.seed,
        format,
        ..PrepareOptions::default()
    };
    let report = with_threads(a.threads, || prepare(&a.file, &a.save_to, &tokenizer, opts))??;
    eprintln!(
        "prepare: {} lines read, {} documents written ({} spans, {} tokens), {} dropped (< 2 \
         spans), {} skipped as malformed",
        report.lines, report.documents, report.spans, report.tokens, report.dropped, report.skipped
    );
    for s in report.skipped_lines.iter().take(5) {
        eprintln!("  skipped {}:{}: {}", a.file.display(), s.line, s.reason);
    }
    eprintln!(
        "wrote {} and {}",
        report.data_path.display(),
        report.store_path.display()
    );
    Ok(())
}
