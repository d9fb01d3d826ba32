//! `cotmae pretrain`: CoT-MAE pretraining on the output of `prepare` (see [`crate::trainer`]).

use super::CliResult;
pub use crate::trainer::PretrainArgs;

pub fn run(args: PretrainArgs) -> CliResult {
    let gpu = !args.training.compute.parse()?.0.is_cpu();
    let ran = crate::launch::run_as_role(&args.training.launch, gpu, |comm, env| {
        // One profile per run: rank 0's (every rank computes the same ops).
        let profiled = env.is_none_or(|e| e.rank == 0);
        if profiled {
            args.profile.start()?;
        }
        let mut args = args.clone();
        let compute = &mut args.training.compute;
        compute.device = crate::launch::rank_device(&compute.device, env);
        let summary = crate::trainer::pretrain_on(&args, comm)?;
        if profiled {
            args.profile.finish()?;
        }
        Ok::<_, crate::Error>(summary)
    })?;
    let Some(summary) = ran else {
        return Ok(()); // the launcher: every rank finished
    };
    if nn::comm::DistEnv::from_env()?.is_some_and(|e| e.rank != 0) {
        return Ok(()); // rank 0 reports the run
    }
    eprintln!(
        "pretrain: {} steps, train_loss {:.4}, {:.1} s; the encoder is in {}",
        summary.global_step,
        summary.train_loss,
        summary.train_runtime,
        summary.output_dir.display()
    );
    Ok(())
}
