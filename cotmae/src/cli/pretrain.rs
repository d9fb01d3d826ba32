//! `cotmae pretrain`: CoT-MAE pretraining on the output of `prepare` (see [`crate::trainer`]).

use super::CliResult;
pub use crate::trainer::PretrainArgs;

pub fn run(args: PretrainArgs) -> CliResult {
    args.profile.start()?;
    let summary = crate::trainer::pretrain(&args)?;
    args.profile.finish()?;
    eprintln!(
        "pretrain: {} steps, train_loss {:.4}, {:.1} s; the encoder is in {}",
        summary.global_step,
        summary.train_loss,
        summary.train_runtime,
        summary.output_dir.display()
    );
    Ok(())
}
