//! `cotmae ablation`: arms x seeds from a TOML spec, paired statistics, a report with figures
//! (see [`crate::ablation`]).

use std::path::PathBuf;

use clap::Args;

use super::{with_threads, CliResult};
use crate::ablation::{self, AblationOptions};
use crate::device::DeviceArgs;

#[derive(Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct AblationArgs {
    /// The spec (TOML): data, starting model, shared stage flags, arms, seeds, baseline.
    #[arg(long)]
    pub spec: PathBuf,
    /// Where the cells (`<arm>/seed-<s>/`), the shared stages and the report go. Rerunning
    /// into the same directory reuses finished cells and stages.
    #[arg(long)]
    pub output_dir: PathBuf,
    /// Worker threads (0: all cores). The numbers depend on it only through float rounding.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// `--device`, `--fp16` / `--bf16` for every stage that runs a model.
    #[command(flatten)]
    pub compute: DeviceArgs,
}

pub fn run(a: AblationArgs) -> CliResult {
    let opts = AblationOptions {
        spec: a.spec,
        output_dir: a.output_dir,
        compute: a.compute,
    };
    let run = with_threads(a.threads, || ablation::run(&opts))??;
    println!("{}", run.report.markdown());
    Ok(())
}
