//! `cotmae demo`: the whole method on generated data in one command (see [`crate::demo`]).

use std::path::PathBuf;

use clap::Args;

use super::{with_threads, CliResult};
use crate::demo::{self, DemoOptions};
use crate::device::DeviceArgs;

#[derive(Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct DemoArgs {
    /// Working directory; every stage's files are kept there.
    #[arg(long, default_value = "cotmae-demo")]
    pub output_dir: PathBuf,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Generated documents (one made-up person each).
    #[arg(long, default_value_t = 300)]
    pub n_docs: usize,
    /// Pretraining steps of each pretrained encoder.
    #[arg(long, default_value_t = 1500)]
    pub pretrain_steps: usize,
    /// Fine-tuning epochs of each retriever.
    #[arg(long, default_value_t = 8)]
    pub finetune_epochs: usize,
    /// Worker threads (0: all cores). The table depends on it only through float rounding.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// `--device`, `--fp16` / `--bf16` for every stage that runs a model.
    #[command(flatten)]
    pub compute: DeviceArgs,
}

pub fn run(a: DemoArgs) -> CliResult {
    let opts = DemoOptions {
        output_dir: a.output_dir,
        seed: a.seed,
        n_docs: a.n_docs,
        pretrain_steps: a.pretrain_steps,
        finetune_epochs: a.finetune_epochs,
        compute: a.compute,
    };
    let start = std::time::Instant::now();
    let report = with_threads(a.threads, || demo::run(&opts))??;
    println!("\n{}", report.table());
    println!("total: {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}
