//! `cotmae build-train`: Tevatron training files with BM25 negatives from MS MARCO's
//! `qidpidtriples` (see [`retrieval::build_train`]). The flags shared with `build-train-hn` are
//! [`TrainFiles`].

use std::path::PathBuf;

use clap::Args;
use retrieval::{BuildTrainOptions, BuildTrainReport, NegativeSource};

use super::{with_threads, CliResult};

/// The inputs, output and knobs both training-file builders take (Tevatron's flag names).
#[derive(Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct TrainFiles {
    /// Tokenizer directory (vocab.txt, optional tokenizer_config.json).
    #[arg(long)]
    pub tokenizer_name: PathBuf,
    /// Qrels: `qid 0 pid 1` (or `qid \t pid`); the positives.
    #[arg(long)]
    pub qrels: PathBuf,
    /// `qid \t text` lines.
    #[arg(long)]
    pub queries: PathBuf,
    /// `pid \t title \t text` (or `pid \t text`) lines.
    #[arg(long)]
    pub collection: PathBuf,
    /// Output directory (created): split00.json, split01.json, ...
    #[arg(long)]
    pub save_to: PathBuf,
    /// Token ids kept per query and passage (no special tokens).
    #[arg(long, default_value_t = 128)]
    pub truncate: usize,
    /// Shuffle seed (our Philox generator; not Python's random).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Examples per output file.
    #[arg(long, default_value_t = 45000)]
    pub shard_size: usize,
    /// Worker threads (0: all cores). The output does not depend on it.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

impl TrainFiles {
    /// Builds with `source` negatives from `negative_file`, keeping `n_sample`, and reports.
    pub fn build(
        &self,
        source: NegativeSource,
        negative_file: PathBuf,
        n_sample: usize,
    ) -> CliResult {
        let tokenizer = bert::Tokenizer::from_dir(&self.tokenizer_name)?;
        let opts = BuildTrainOptions {
            source,
            negative_file,
            qrels: self.qrels.clone(),
            queries: self.queries.clone(),
            collection: self.collection.clone(),
            save_to: self.save_to.clone(),
            truncate: self.truncate,
            n_sample,
            seed: self.seed,
            shard_size: self.shard_size,
        };
        let r: BuildTrainReport =
            with_threads(self.threads, || retrieval::build_train(&tokenizer, &opts))??;
        eprintln!(
            "wrote {} examples ({} positives, {} negatives; {} with fewer than {n_sample} \
             negatives) into {} files in {}",
            r.examples,
            r.positives,
            r.negatives,
            r.short,
            r.files.len(),
            self.save_to.display()
        );
        if r.positives_removed > 0 {
            eprintln!(
                "note: {} positive passage(s) listed among their own query's negatives were \
                 removed from the negatives",
                r.positives_removed
            );
        }
        if r.skipped_no_negatives > 0 {
            eprintln!(
                "warning: {} quer{} left without a negative got no example",
                r.skipped_no_negatives,
                if r.skipped_no_negatives == 1 {
                    "y"
                } else {
                    "ies"
                }
            );
        }
        Ok(())
    }
}

#[derive(Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct BuildTrainArgs {
    #[command(flatten)]
    pub files: TrainFiles,
    /// `qid \t pos_pid \t neg_pid` (qidpidtriples.train.full.2.tsv) or `qid \t pid,pid,...`.
    #[arg(long)]
    pub negative_file: PathBuf,
    /// Negatives kept per query (after dropping repeats and shuffling).
    #[arg(long, default_value_t = 128)]
    pub n_sample: usize,
}

pub fn run(a: BuildTrainArgs) -> CliResult {
    a.files
        .build(NegativeSource::Bm25, a.negative_file, a.n_sample)
}
