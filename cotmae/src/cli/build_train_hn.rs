//! `cotmae build-train-hn`: Tevatron training files with hard negatives mined from a ranking
//! (see [`retrieval::build_train`]); the shared flags are [`super::build_train::TrainFiles`].

use std::path::PathBuf;

use clap::Args;
use retrieval::NegativeSource;

use super::build_train::TrainFiles;
use super::CliResult;

#[derive(Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct BuildTrainHnArgs {
    #[command(flatten)]
    pub files: TrainFiles,
    /// The ranking of the training queries (`qid \t pid \t score`, best first), e.g. from
    /// `cotmae search` with the stage-1 model.
    #[arg(long, alias = "negative_file")]
    pub hn_file: PathBuf,
    /// Negatives kept per query (after shuffling the first `depth`).
    #[arg(long, default_value_t = 30)]
    pub n_sample: usize,
    /// Non-positive passages taken from the top of each query's ranking before shuffling.
    #[arg(long, default_value_t = 200)]
    pub depth: usize,
}

pub fn run(a: BuildTrainHnArgs) -> CliResult {
    a.files.build(
        NegativeSource::Ranking { depth: a.depth },
        a.hn_file,
        a.n_sample,
    )
}
