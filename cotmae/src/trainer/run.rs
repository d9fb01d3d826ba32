//! A whole pretraining run: set up (output directory, resume, tokenizer, data, model, optimizer,
//! schedule, loader, log), the loop of optimizer steps with logging every `logging_steps` and a
//! checkpoint every `save_steps`, then the final model in `output_dir`.
//!
//! Logged keys, in order: `loss`, `encoder_mlm_loss`, `head_mlm_loss` (each the mean over the
//! steps since the last log, as HF's `loss`), `learning_rate` (the schedule's value for the next
//! step, as HF logs `get_last_lr()`), `grad_norm` (the last step's, before clipping),
//! `sequences_per_second` (since the last log, wall clock), `epoch` (fractional). The end of the
//! run logs `train_runtime`, `train_steps_per_second`, `train_sequences_per_second` (this
//! process) and `train_loss` (mean over every step of the run, resumed parts included).
//!
//! The final `output_dir` holds the encoder as an HF `BertForMaskedLM` directory, the head as
//! `c_head.safetensors`, `training_args.json` and `trainer_state.json`.
//!
//! Data parallel ([`pretrain_on`] with a communicator of `world` ranks, one replica each): the
//! sampler cuts the document order into global micro-batches of `world x
//! per_device_train_batch_size` documents, which every rank collates whole (the same crops and
//! masks whatever the world size) and shards ([`super::step`]); the global batch of an optimizer
//! step is `per_device x world x gradient_accumulation_steps`. Each rank draws its rows of the
//! global batch's dropout masks, so the whole run (dropout included) does not depend on the world
//! size, and every rank's dropout generator is at the same position after each step (the one a
//! checkpoint records). Rank 0 alone prepares `output_dir`, logs and writes checkpoints; every
//! rank joins a collective before a checkpoint is renamed into place, so a checkpoint exists
//! only when every rank finished its step. The losses stay on each rank's device until a logging
//! or saving step, where one small all-reduce sums them ([`super::step::read_losses`]).
//! `trainer_state.json` records the world size; resuming with another one continues (the data
//! position is in documents) with a warning.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bert::{BertConfig, BertForMaskedLM, Tokenizer};
use nn::comm::host::all_ok;
use nn::{
    warmup_steps, AdamW, Communicator, Ctx, LrSchedule, Precision, ScheduleKind, SingleProcess,
};
use tensor::{Rng, Tensor};

use super::args::PretrainArgs;
use super::checkpoint::{
    latest_checkpoint, list_checkpoints, load_model, remove_stale, rotate, save_checkpoint,
    write_run_files, Checkpoint, ARGS_FILE, OPTIMIZER_FILE,
};
use super::data::TrainData;
use super::loader::{with_batches, DataLoader, LoaderState};
use super::log::{default_logging_dir, MetricsLog};
use super::sampler::RandomSampler;
use super::state::{LossSums, TrainerState, STATE_FILE};
use super::step::{check_norms, read_losses, train_step, unique_params, Optimization};
use super::streams;
use crate::collator::{CollatorState, CotMaeCollator, SpanSource};
use crate::model::BertForCotMAE;
use crate::{Error, Result};

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub global_step: u64,
    /// Mean loss over every step of the run.
    pub train_loss: f64,
    /// Seconds this process trained.
    pub train_runtime: f64,
    /// Where the final model is.
    pub output_dir: PathBuf,
}

fn non_empty(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut it) => Ok(it.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// Cleans leftovers, resolves `--resume_from_checkpoint`, applies the non-empty rule, creates
/// `output_dir`; returns the checkpoint to resume from.
fn prepare_output_dir(args: &PretrainArgs) -> Result<Option<PathBuf>> {
    let t = &args.training;
    let out = &t.output_dir;
    if out.is_dir() {
        for stale in remove_stale(out)? {
            eprintln!("removed {}: an incomplete checkpoint", stale.display());
        }
    }
    let resume = resolve_resume(args)?;
    if resume.is_none() && non_empty(out)? {
        if !t.overwrite_output_dir {
            return Err(Error::Config(format!(
                "output directory {} already exists and is not empty; use --overwrite_output_dir \
                 to write into it, or --resume_from_checkpoint latest to continue its run",
                out.display()
            )));
        }
        for (_, dir) in list_checkpoints(out)? {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    Ok(resume)
}

/// The checkpoint `--resume_from_checkpoint` names (`latest`: the highest in `output_dir`).
fn resolve_resume(args: &PretrainArgs) -> Result<Option<PathBuf>> {
    let t = &args.training;
    let out = &t.output_dir;
    Ok(match t.resume_from_checkpoint.as_deref() {
        None => None,
        Some("latest") => Some(latest_checkpoint(out)?.ok_or_else(|| {
            Error::Config(format!(
                "--resume_from_checkpoint latest: no checkpoint-N directory in {}",
                out.display()
            ))
        })?),
        Some(p) => {
            let p = PathBuf::from(p);
            if !p.join(STATE_FILE).is_file() {
                return Err(Error::format(
                    &p,
                    format!(
                        "--resume_from_checkpoint: not a checkpoint directory (no {STATE_FILE})"
                    ),
                ));
            }
            Some(p)
        }
    })
}

/// A fresh model: pretrained encoder or random one from a config, plus a new head; the random
/// draws come from the run's seed.
fn build_model(args: &PretrainArgs) -> Result<BertForCotMAE> {
    let m = &args.model;
    let mut rng = Rng {
        seed: args.training.seed,
        offset: streams::INIT,
    };
    let model = match (&m.model_name_or_path, &m.config_name) {
        (Some(dir), _) => {
            let (lm, report) = BertForMaskedLM::from_pretrained(dir)?;
            // Pretraining uses the MLM head: any missing weight counts.
            report.require(&|_| true, m.allow_random_init)?;
            if !report.is_clean() {
                eprintln!("warning: {}: {report}", dir.display());
            }
            BertForCotMAE::new(lm, m.cotmae_args(), &mut rng)?
        }
        (None, Some(path)) => {
            let config = BertConfig::from_file(path)?;
            BertForCotMAE::from_config(&config, m.cotmae_args(), &mut rng)?
        }
        (None, None) => unreachable!("validate() requires one of them"),
    };
    Ok(model)
}

/// The model must cover the tokenizer's ids and the sequence length.
fn check_model_fits(
    config: &BertConfig,
    tokenizer: &Tokenizer,
    max_seq_length: usize,
) -> Result<()> {
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(Error::Config(format!(
            "the tokenizer has {} tokens but the model's vocab_size is {}",
            tokenizer.vocab_size(),
            config.vocab_size
        )));
    }
    if max_seq_length > config.max_position_embeddings {
        return Err(Error::Config(format!(
            "--max_seq_length {max_seq_length} exceeds the model's max_position_embeddings {}",
            config.max_position_embeddings
        )));
    }
    Ok(())
}

/// HF's step count when max_steps is not set: `ceil(epochs * max(batches // accumulation, 1))`.
fn resolve_max_steps(args: &PretrainArgs, sampler: &RandomSampler) -> u64 {
    let t = &args.training;
    if t.max_steps > 0 {
        return t.max_steps as u64;
    }
    let per_epoch = (sampler.batches_per_epoch() / t.gradient_accumulation_steps).max(1);
    (t.num_train_epochs * per_epoch as f64).ceil() as u64
}

fn schedule(args: &PretrainArgs, max_steps: u64) -> LrSchedule {
    let t = &args.training;
    let warm = warmup_steps(max_steps, t.warmup_steps, t.warmup_ratio);
    match ScheduleKind::from_name(&t.lr_scheduler_type) {
        Some(ScheduleKind::Constant) => LrSchedule::constant(t.learning_rate),
        Some(ScheduleKind::ConstantWithWarmup) => {
            LrSchedule::constant_with_warmup(t.learning_rate, warm)
        }
        _ => LrSchedule::linear(t.learning_rate, warm, max_steps),
    }
}

/// Warns about every computation-relevant flag that differs from the checkpoint's run.
fn warn_differences(args: &PretrainArgs, checkpoint: &Path) -> Result<()> {
    let path = checkpoint.join(ARGS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let saved: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::format(&path, format!("invalid JSON: {e}")))?;
    for (flag, ours, theirs) in args.differences(&saved) {
        eprintln!(
            "warning: resuming with --{flag} {ours}, the checkpoint's run had {theirs}; the run \
             will not continue exactly as it would have"
        );
    }
    Ok(())
}

/// Runs `cotmae pretrain` in this process alone (module doc).
pub fn pretrain(args: &PretrainArgs) -> Result<TrainSummary> {
    pretrain_on(args, &SingleProcess)
}

/// Runs `cotmae pretrain` as rank `comm.rank()` of `comm.world_size()` data-parallel replicas
/// (module doc); every rank calls it with the same arguments. The summary's `train_loss` is the
/// global one on every rank.
pub fn pretrain_on(args: &PretrainArgs, comm: &dyn Communicator) -> Result<TrainSummary> {
    args.validate()?;
    let (rank, world) = (comm.rank(), comm.world_size());
    let t = &args.training;
    let (device, precision) = t.compute.open()?;
    let out = t.output_dir.clone();
    // Rank 0 prepares the output directory; the others look for the checkpoint once it is done.
    let prepared = if rank == 0 {
        prepare_output_dir(args)
    } else {
        Ok(None)
    };
    let status = prepared.as_ref().map(|_| ()).map_err(to_tensor);
    if let Err(e) = all_ok(comm, "preparing the output directory", status) {
        return Err(prepared.err().unwrap_or(e.into()));
    }
    let resume = match rank {
        0 => prepared?,
        _ => resolve_resume(args)?,
    };
    let tokenizer = Tokenizer::from_dir(args.model.tokenizer_dir()?)?;
    let data = TrainData::open(&args.data.train_path)?;
    let sampler = RandomSampler::new(
        t.seed,
        data.num_docs(),
        t.per_device_train_batch_size * world,
    );
    let max_steps = resolve_max_steps(args, &sampler);

    let mut collator = CotMaeCollator::new(&tokenizer, args.data.collator_config()?, t.seed)?;
    collator.set_state(CollatorState {
        seed: t.seed,
        offset: streams::COLLATOR,
    });
    let mut opt = AdamW::new(args.adamw_config())?;
    let (model, state) = match &resume {
        Some(dir) => {
            eprintln!("resuming from {}", dir.display());
            warn_differences(args, dir)?;
            let model = load_model(dir, args.model.cotmae_args())?;
            opt.load_state(dir.join(OPTIMIZER_FILE))?;
            let mut state = TrainerState::load(dir)?;
            if let Some(ld) = &t.logging_dir {
                state.logging_dir = ld.clone();
            }
            if state.world_size != world as u64 && rank == 0 {
                eprintln!(
                    "warning: the checkpoint was written by {} ranks, this run has {world}: the \
                     global batch is now {} documents per micro-batch; the run continues from \
                     the same document",
                    state.world_size,
                    t.per_device_train_batch_size * world
                );
            }
            (model, state)
        }
        None => {
            let loader = LoaderState {
                epoch: 0,
                index: 0,
                collator: collator.state(),
            };
            let dropout = Rng {
                seed: t.seed,
                offset: streams::DROPOUT,
            };
            let logging_dir = t
                .logging_dir
                .clone()
                .unwrap_or_else(|| default_logging_dir(&out));
            // Absolute, so a run resumed from another working directory finds it.
            let logging_dir = std::path::absolute(&logging_dir).unwrap_or(logging_dir);
            let state = TrainerState::new(max_steps, loader, dropout, logging_dir);
            (build_model(args)?, state)
        }
    };
    check_model_fits(model.config(), &tokenizer, args.data.max_seq_length)?;
    nn::module::to_device(&model, device)?;
    let mut state = TrainerState {
        max_steps,
        world_size: world as u64,
        ..state
    };
    let mut sched = schedule(args, max_steps);
    sched.step = state.global_step - state.skipped_steps.min(state.global_step);
    let mut scaler = precision.loss_scaler()?;
    match (&state.loss_scaler, precision) {
        (Some(saved), Precision::F16) => scaler.load_state_dict(saved)?,
        (_, Precision::F16) => state.loss_scaler = Some(scaler.state_dict()),
        _ => state.loss_scaler = None,
    }
    let resumed_at = resume.as_ref().map(|_| state.global_step);
    let loader = DataLoader::new(
        &data,
        sampler.clone(),
        collator,
        resumed_at.map(|_| state.loader),
    )?;
    let mut ctx = Ctx::training(state.dropout_rng.into());
    let mut log = match rank {
        0 => Some(MetricsLog::open(
            &out,
            &state.logging_dir,
            resumed_at,
            max_steps,
        )?),
        _ => None,
    };
    let println = |log: &mut Option<MetricsLog>, line: &str| {
        if let Some(log) = log {
            log.println(line)
        }
    };
    let training_args = args.to_json();
    let params = unique_params(&model);
    let batch = t.per_device_train_batch_size;
    let ga = t.gradient_accumulation_steps;
    let tensorboard = log
        .as_ref()
        .map_or(PathBuf::new(), |l| l.tensorboard_file().to_path_buf());
    println(
        &mut log,
        &format!(
            "***** Running training *****\n  Num examples = {}\n  Num parameters = {}\n  Batch \
             size (documents) = {batch} per rank x {world} ranks, gradient accumulation steps = \
             {ga}, total = {}\n  Total optimization steps = {max_steps} (warmup {}), starting \
             after step {}\n  Device: {device}, precision: {}\n  Output: {}, TensorBoard: {}",
            data.describe(),
            nn::Module::num_params(&model),
            batch * world * ga,
            sched.warmup_steps,
            state.global_step,
            precision.flag().map_or("f32", |f| &f[2..]),
            out.display(),
            tensorboard.display(),
        ),
    );

    let o_device = device;
    let mut o = Optimization {
        opt,
        sched,
        max_grad_norm: t.max_grad_norm,
        accumulation: ga,
        device,
        precision,
        scaler,
    };
    let started = Instant::now();
    let steps_before = state.global_step;
    let mut run_sums = LossSums::default();
    // Steps whose losses and gradient norms are still on the device (step number, applied,
    // sums, device values), read together on the next logging or saving step (one download) and
    // added in step order: the sums are those of reading each step at once. Returns the last
    // step's gradient norm; a step that applied a non-finite one stops the run (diverged).
    type Pending = (u64, bool, LossSums, Tensor, Tensor);
    let mut pending: Vec<Pending> = Vec::new();
    let mut fold = |pending: &mut Vec<Pending>, state: &mut TrainerState| {
        let mut steps = std::mem::take(pending);
        let mut refs: Vec<(&mut LossSums, &Tensor, &Tensor)> = steps
            .iter_mut()
            .map(|(_, _, s, l, n)| (s, &*l, &*n))
            .collect();
        let norms = read_losses(&mut refs, comm)?;
        let checked: Vec<(u64, bool, &LossSums, f64)> = steps
            .iter()
            .zip(&norms)
            .map(|((step, applied, sums, _, _), &n)| (*step, *applied, sums, n))
            .collect();
        check_norms(&checked)?;
        for (_, _, sums, _, _) in &steps {
            state.since_log.add(sums);
            state.total.add(sums);
            run_sums.add(sums);
        }
        // Bad input the kernels found since the last fold (an id out of range) stops the run.
        o_device.check_status()?;
        Ok::<f64, Error>(norms.last().copied().unwrap_or(f64::NAN))
    };
    // Data parallel: bytes all-reduced and seconds in the all-reduce over this run's steps.
    let mut comm_totals = nn::CommTotals::default();
    let head_logged = model.args.use_decoder_head && model.args.enable_head_mlm;
    with_batches(loader, t.dataloader_num_workers, |next| -> Result<()> {
        let mut interval = Instant::now();
        while state.global_step < max_steps {
            let s = train_step(
                &model,
                &params,
                &mut ctx,
                next,
                &mut o,
                state.global_step + 1,
                comm,
            )?;
            state.global_step += 1;
            if s.skipped {
                state.skipped_steps += 1;
                println(
                    &mut log,
                    &format!(
                        "step {}: fp16 gradients overflowed; step skipped, loss scale now {}",
                        state.global_step,
                        o.scaler.scale()
                    ),
                );
            }
            if precision == Precision::F16 {
                state.loss_scaler = Some(o.scaler.state_dict());
            }
            state.loader = s.loader;
            state.dropout_rng = ctx.rng.into();
            comm_totals.add(&s.comm);
            pending.push((state.global_step, !s.skipped, s.sums, s.losses, s.grad_norm));
            let step = state.global_step;
            if let Some(log) = log.as_mut() {
                log.progress(step);
            }
            let last = state.global_step == max_steps;
            let mut grad_norm = f64::NAN;
            if step.is_multiple_of(t.logging_steps) || step.is_multiple_of(t.save_steps) || last {
                grad_norm = fold(&mut pending, &mut state)?;
            }
            if let (Some(log), true) = (log.as_mut(), step.is_multiple_of(t.logging_steps)) {
                let secs = interval.elapsed().as_secs_f64().max(1e-9);
                let (loss, enc, head) = state.since_log.means();
                let mut values = vec![("loss", loss), ("encoder_mlm_loss", enc)];
                if head_logged {
                    values.push(("head_mlm_loss", head));
                }
                values.extend([
                    ("learning_rate", o.sched.lr()),
                    ("grad_norm", grad_norm),
                    (
                        "sequences_per_second",
                        state.since_log.sequences as f64 / secs,
                    ),
                    ("epoch", state.loader.epoch_float(data.num_docs())),
                ]);
                log.log(step, &values)?;
            }
            if step.is_multiple_of(t.logging_steps) {
                state.since_log = LossSums::default();
                interval = Instant::now();
            }
            if step.is_multiple_of(t.save_steps) {
                let what = format!("saving checkpoint-{step}");
                if let Some(log) = log.as_mut() {
                    let ck = Checkpoint::of(&model, &tokenizer, &o.opt, &state, &training_args);
                    let dir = save_checkpoint(&out, &ck, &mut |written| {
                        Ok(all_ok(comm, &what, written.map_err(|e| to_tensor(&e)))?)
                    })?;
                    log.println(&format!("saved {}", dir.display()));
                    for old in rotate(&out, t.save_total_limit)? {
                        log.println(&format!("removed {} (save_total_limit)", old.display()));
                    }
                } else {
                    all_ok(comm, &what, Ok(()))?;
                }
            }
            if t.debug_hang_after_step == Some(step) {
                println(
                    &mut log,
                    &format!("debug_hang_after_step: step {step} is done; waiting to be killed"),
                );
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
        }
        Ok(())
    })?;

    let runtime = started.elapsed().as_secs_f64().max(1e-9);
    let (train_loss, _, _) = state.total.means();
    if world > 1 {
        println(&mut log, &comm_totals.line(world, runtime));
    }
    let ck = Checkpoint::of(&model, &tokenizer, &o.opt, &state, &training_args);
    let written = match rank {
        0 => write_run_files(&out, &ck).map_err(|e| to_tensor(&e)),
        _ => Ok(()),
    };
    all_ok(comm, "writing the final model", written)?;
    let Some(mut log) = log else {
        return Ok(TrainSummary {
            global_step: state.global_step,
            train_loss,
            train_runtime: runtime,
            output_dir: out,
        });
    };
    log.log(
        state.global_step,
        &[
            ("train_runtime", runtime),
            (
                "train_steps_per_second",
                (state.global_step - steps_before) as f64 / runtime,
            ),
            (
                "train_sequences_per_second",
                run_sums.sequences as f64 / runtime,
            ),
            ("train_loss", train_loss),
        ],
    )?;
    log.finish();
    eprintln!("saved the model to {}", out.display());
    Ok(TrainSummary {
        global_step: state.global_step,
        train_loss,
        train_runtime: runtime,
        output_dir: out,
    })
}

/// A trainer error as a communicator error (for [`all_ok`]), keeping its message.
fn to_tensor(e: &Error) -> tensor::Error {
    tensor::Error::op("pretrain", e.to_string())
}
