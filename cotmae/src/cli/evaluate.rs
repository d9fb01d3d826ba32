//! `cotmae evaluate`: MS MARCO metrics of a ranking file against qrels (see
//! [`retrieval::metrics`]): the eval script's table, or one JSON object with `--json`.

use std::path::PathBuf;

use clap::Args;
use retrieval::{evaluate, Qrels, Run};

use super::CliResult;

#[derive(Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct EvaluateArgs {
    /// Qrels: `qid \t pid` or `qid 0 pid relevance`.
    #[arg(long)]
    pub qrels: PathBuf,
    /// Ranking: `qid \t pid \t score` (or `qid \t pid \t rank`), each query's lines best first.
    #[arg(long)]
    pub run: PathBuf,
    /// Print one JSON object (MRR@10, recall@1, recall@50, recall@1000, QueriesRanked, nDCG@10, depth).
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: EvaluateArgs) -> CliResult {
    let qrels = Qrels::read(&a.qrels)?;
    let run = Run::read(&a.run)?;
    let m = evaluate(&qrels, &run)?;
    if let Some(w) = m.depth_warning() {
        eprintln!("{w}");
    }
    if a.json {
        println!("{}", m.to_json());
    } else {
        print!("{}", m.table());
    }
    Ok(())
}
