//! `train-retriever`: fine-tunes a [`DenseModel`] on Tevatron training files (REFERENCE §6), on
//! one process, with the HF Trainer's optimisation.
//!
//! One step: a batch of `per_device_train_batch_size` examples in this epoch's order
//! ([`epoch_order`]) -> [`TrainDataset::batch`] -> the loss and its gradients
//! ([`loss_and_grads`], `train_step.rs`: the encoder with dropout on, the contrastive loss,
//! backward; with `negatives_x_device` across ranks, with `grad_cache` chunk by chunk) -> global-norm clipping to `max_grad_norm` -> AdamW (HF variant, weight decay except biases and
//! LayerNorm weights) at the schedule's lr -> the schedule advances (linear warmup over
//! `warmup_steps`, or `ceil(warmup_ratio * total)`, then linear decay to 0).
//!
//! Length: `max_steps` when positive, else `ceil(num_train_epochs * steps_per_epoch)` with
//! `steps_per_epoch = ceil(examples / batch size)` (the last batch of an epoch may be smaller,
//! as with the HF Trainer's default `dataloader_drop_last=False`).
//!
//! Output directory:
//! - `train_log.jsonl`: every `logging_steps` steps one [`LogEntry`] (mean loss since the last
//!   entry, the lr the step used, the gradient norm before clipping), also shown by the progress
//!   bar (or printed to stderr when it is hidden);
//! - `checkpoint-N/` every `save_steps` steps: the model (an HF directory with the tokenizer's
//!   files), `optimizer.safetensors` (AdamW moments and step counts) and `trainer_state.json`
//!   (global step, epoch and position in it, schedule, dropout generator, log history). It is
//!   written under a temporary name and renamed, and only the newest `save_total_limit` are kept;
//!   resuming from one continues bit for bit as if never interrupted;
//! - at the end the model itself (`config.json`, `model.safetensors`, tokenizer files).
//!
//! Device and precision: the model is moved to `device` after loading and each batch is uploaded
//! there; checkpoints are written from it (downloaded tensor by tensor). Mixed precision
//! ([`Precision`], CUDA only) runs the forward pass under its autocast with f32 master weights;
//! fp16 adds the dynamic loss scaler: the loss is multiplied by the scale before backward, the
//! gradients are unscaled before clipping, and a step whose gradients overflowed is skipped (no
//! AdamW update, no schedule step; it still counts as a step, as in the HF Trainer). The scaler's
//! state is saved in `trainer_state.json`.
//!
//! Gradient accumulation and data parallel ([`train_on`] with a communicator of `world` ranks):
//! one optimizer step takes a global batch of `per_device_train_batch_size x world x
//! gradient_accumulation_steps` examples of the epoch's order, cut into consecutive global
//! micro-batches of `per_device x world`; rank `r` takes the `r`-th of `world` equal parts of
//! each. A global micro-batch that does not split evenly (only ever the epoch's last) drops its
//! last `m % world` examples, as torch's `DistributedSampler(drop_last=True)` does: equal parts
//! keep every rank's tensors the same shape (the all-gather of cross-device negatives needs it)
//! and every rank's dropout generator at the same position. Each rank's micro-batch goes
//! through [`loss_and_grads`] with the run's communicator: without `negatives_x_device` its
//! queries score its own passages (in-batch negatives per rank, as Tevatron's), with it every
//! rank's passages (Tevatron's `world x loss` scaling). Each micro-batch's gradients are divided
//! by the number of micro-batches and summed; [`nn::all_reduce_grads`] averages the sums over
//! the ranks, then they are clipped, unscaled and applied identically on every rank. So N ranks
//! of batch `b` train as one rank of batch `b` with N accumulation steps, and with
//! `negatives_x_device` as one rank of batch `N x b`. Dropout draws by global row
//! (`train_step.rs`), so every rank's generator is where one process's would be. The logged loss
//! is the mean over the ranks of their losses, exchanged on logging steps only. Rank 0 alone
//! logs and writes checkpoints, after a collective in which every rank agrees (before the
//! rename). `trainer_state.json` records the world size; resuming under another one warns and
//! continues from the first batch boundary at or after the example reached.

use std::io::Write;
use std::path::{Path, PathBuf};

use autograd::{Gradients, Var};
use nn::comm::host::{all_ok, sum_f64};
use nn::loss_scale::LossScalerState;
use nn::{
    all_reduce_grads, step_params, unscale_and_clip, warmup_steps, AdamW, AdamWConfig,
    AdamWVariant, Communicator, Ctx, LossScaler, LrSchedule, Module, Precision, SingleProcess,
    StepDecision,
};
use serde::{Deserialize, Serialize};
use tensor::profiler::{self, Phase};
use tensor::{Device, Rng, Tensor};

use crate::dense::{DenseModel, PadTo, SpecialIds};
use crate::formats::JsonlWriter;
use crate::train_data::{
    epoch_order, stream_seed, BatchConfig, TrainBatch, TrainDataset, DROPOUT_STREAM,
};
use crate::train_step::{loss_and_grads, GradCacheChunks, MicroBatchGrads, StepOptions};
use crate::{Error, Result};

pub const LOG_FILE: &str = "train_log.jsonl";
pub const TRAINER_STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const CHECKPOINT_PREFIX: &str = "checkpoint-";

/// Everything `train` needs; names and defaults from Tevatron / HF `TrainingArguments`.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// HF model directory to start from (e.g. the CoT-MAE pretrained encoder).
    pub model_name_or_path: PathBuf,
    /// Tokenizer directory (`vocab.txt`); None: the model directory.
    pub tokenizer_name: Option<PathBuf>,
    pub output_dir: PathBuf,
    /// A JSON-lines file of training examples or a directory of them.
    pub train_dir: PathBuf,
    pub per_device_train_batch_size: usize,
    /// Micro-batches per optimizer step (module docs).
    pub gradient_accumulation_steps: usize,
    pub train_n_passages: usize,
    pub q_max_len: usize,
    pub p_max_len: usize,
    pub learning_rate: f64,
    pub num_train_epochs: f64,
    /// Total optimizer steps; overrides `num_train_epochs` when set.
    pub max_steps: Option<u64>,
    pub warmup_ratio: f64,
    /// Warmup length in steps; overrides `warmup_ratio` when positive.
    pub warmup_steps: u64,
    pub weight_decay: f64,
    /// AdamW's epsilon (HF's `adam_epsilon`).
    pub adam_epsilon: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    pub max_grad_norm: f64,
    /// 0: no logging.
    pub logging_steps: u64,
    /// 0: no checkpoints.
    pub save_steps: u64,
    /// Keep at most this many checkpoints (the oldest are deleted).
    pub save_total_limit: Option<usize>,
    pub seed: u64,
    /// Train into a non-empty `output_dir` anyway.
    pub overwrite_output_dir: bool,
    /// A `checkpoint-N` directory to continue from (see [`latest_checkpoint`]).
    pub resume_from_checkpoint: Option<PathBuf>,
    /// Rows padded to `q_max_len` / `p_max_len` (Tevatron) or to the batch's longest text.
    pub pad_to: PadTo,
    /// Progress bar, log lines and load warnings on stderr.
    pub verbose: bool,
    /// Where the model trains.
    pub device: Device,
    /// f32, or mixed precision (CUDA only; see the module docs).
    pub precision: Precision,
    /// Tevatron's `--negatives_x_device`: every query scores every rank's passages
    /// (`train_step.rs`); no effect with one rank.
    pub negatives_x_device: bool,
    /// Tevatron's `--grad_cache` with its chunk sizes (`train_step.rs`): the same loss and
    /// gradients, encoder memory bounded by a chunk.
    pub grad_cache: Option<GradCacheChunks>,
    /// Encoder weights missing from the checkpoint are randomly initialised instead of an error.
    pub allow_random_init: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model_name_or_path: PathBuf::new(),
            tokenizer_name: None,
            output_dir: PathBuf::new(),
            train_dir: PathBuf::new(),
            per_device_train_batch_size: 8,
            gradient_accumulation_steps: 1,
            train_n_passages: 16,
            q_max_len: 32,
            p_max_len: 128,
            learning_rate: 2e-5,
            num_train_epochs: 3.0,
            max_steps: None,
            warmup_ratio: 0.1,
            warmup_steps: 0,
            weight_decay: 0.0,
            adam_epsilon: 1e-8,
            max_grad_norm: 1.0,
            logging_steps: 500,
            save_steps: 500,
            save_total_limit: None,
            seed: 42,
            overwrite_output_dir: false,
            resume_from_checkpoint: None,
            pad_to: PadTo::MaxLen,
            verbose: false,
            device: Device::Cpu,
            precision: Precision::F32,
            negatives_x_device: false,
            grad_cache: None,
            allow_random_init: false,
        }
    }
}

/// One line of `train_log.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub step: u64,
    /// Fractional epoch at the end of the step (HF's `state.epoch`).
    pub epoch: f64,
    /// Mean loss over the steps since the previous entry.
    pub loss: f64,
    /// The lr this step used.
    pub learning_rate: f64,
    /// Global gradient norm of this step, before clipping.
    pub grad_norm: f64,
}

/// What identifies the sequence of batches; a checkpoint resumes only under the same values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct DataKey {
    seed: u64,
    per_device_train_batch_size: usize,
    train_n_passages: usize,
    num_examples: usize,
    #[serde(default = "one")]
    gradient_accumulation_steps: usize,
    /// Data-parallel ranks (may change on resume, with a warning).
    #[serde(default = "one")]
    world_size: usize,
}

fn one() -> usize {
    1
}

impl DataKey {
    /// Examples per optimizer step.
    fn global_batch(&self) -> usize {
        self.per_device_train_batch_size * self.world_size * self.gradient_accumulation_steps
    }
}

/// `trainer_state.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct TrainerState {
    global_step: u64,
    /// 0-based epoch of the next batch, and the batches of it already taken.
    epoch: u64,
    step_in_epoch: u64,
    schedule: LrSchedule,
    dropout_seed: u64,
    dropout_offset: u64,
    data: DataKey,
    log_history: Vec<LogEntry>,
    /// An fp16 run's loss scaler (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    loss_scaler: Option<LossScalerState>,
}

/// What a finished `train` did.
#[derive(Clone, Debug)]
pub struct TrainReport {
    pub global_step: u64,
    pub total_steps: u64,
    pub warmup_steps: u64,
    pub num_examples: usize,
    pub log: Vec<LogEntry>,
    /// Checkpoints written by this run, in order.
    pub checkpoints: Vec<PathBuf>,
}

/// `checkpoint-N` directories of `dir` with their N, by N.
fn checkpoints(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let n = name
            .to_str()
            .and_then(|s| s.strip_prefix(CHECKPOINT_PREFIX))
            .and_then(|s| s.parse::<u64>().ok());
        if let (Some(n), true) = (n, entry.path().is_dir()) {
            out.push((n, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The newest `checkpoint-N` of `output_dir` that can be resumed from, if any, and the newer
/// ones passed over (empty, incomplete or corrupt), each with why ([`crate::resume`]).
pub fn find_latest_checkpoint(
    output_dir: impl AsRef<Path>,
) -> Result<(Option<PathBuf>, crate::resume::Skipped)> {
    let all = checkpoints(output_dir.as_ref())?;
    Ok(crate::resume::newest_resumable(all, TRAINER_STATE_FILE))
}

/// [`find_latest_checkpoint`], saying on stderr which newer directories it passed over and why.
pub fn latest_checkpoint(output_dir: impl AsRef<Path>) -> Result<Option<PathBuf>> {
    let (chosen, skipped) = find_latest_checkpoint(output_dir)?;
    crate::resume::warn_skipped(&skipped, chosen.as_deref());
    Ok(chosen)
}

/// The most passages one step may hold (`per_device_train_batch_size x train_n_passages`):
/// 2^24, far beyond any real run.
pub const MAX_STEP_PASSAGES: usize = 1 << 24;

fn check_config(c: &TrainConfig) -> Result<()> {
    let bad = |what: &str| Err(Error::Config(format!("train-retriever: {what}")));
    if c.per_device_train_batch_size == 0 {
        return bad("per_device_train_batch_size must be at least 1");
    }
    if c.gradient_accumulation_steps == 0 {
        return bad("gradient_accumulation_steps must be at least 1");
    }
    if c.train_n_passages == 0 {
        return bad("train_n_passages must be at least 1");
    }
    // A step's passages are held together: a count no run could reach is an error here, not
    // an allocation failure (abort) in the first step.
    let passages = c
        .per_device_train_batch_size
        .checked_mul(c.train_n_passages)
        .filter(|&n| n <= MAX_STEP_PASSAGES);
    if passages.is_none() {
        return bad(&format!(
            "per_device_train_batch_size {} x train_n_passages {} is above the limit of \
             {MAX_STEP_PASSAGES} passages a step",
            c.per_device_train_batch_size, c.train_n_passages
        ));
    }
    if c.q_max_len < 2 || c.p_max_len < 2 {
        return bad("q_max_len and p_max_len must leave room for [CLS] and [SEP] (>= 2)");
    }
    if !(c.learning_rate.is_finite() && c.learning_rate >= 0.0) {
        return bad("learning_rate must be a finite number >= 0");
    }
    if !(c.num_train_epochs.is_finite() && c.num_train_epochs >= 0.0) {
        return bad("num_train_epochs must be a finite number >= 0");
    }
    if !(0.0..=1.0).contains(&c.warmup_ratio) {
        return bad("warmup_ratio must be in [0, 1]");
    }
    if !(c.max_grad_norm.is_finite() && c.max_grad_norm >= 0.0) {
        return bad("max_grad_norm must be a finite number >= 0");
    }
    if c.save_total_limit == Some(0) {
        return bad("save_total_limit must be at least 1 (or unset)");
    }
    Ok(())
}

/// How long the run is: `(total steps, epochs, steps per epoch)` for `n` examples in global
/// batches of `global`.
fn plan(cfg: &TrainConfig, n: usize, global: usize) -> (u64, u64, u64) {
    let steps_per_epoch = n.div_ceil(global) as u64;
    match cfg.max_steps {
        Some(m) if m > 0 => (m, m.div_ceil(steps_per_epoch), steps_per_epoch),
        _ => (
            (cfg.num_train_epochs * steps_per_epoch as f64).ceil() as u64,
            cfg.num_train_epochs.ceil() as u64,
            steps_per_epoch,
        ),
    }
}

/// What one step reports.
struct StepStats {
    loss: f64,
    grad_norm: f64,
    lr: f64,
}

/// Rank `rank`'s examples of a global micro-batch of `m` examples over `world` ranks: equal
/// parts of its first `m - m % world` (module docs; empty when `m < world`).
fn shard(m: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    let per = m / world;
    rank * per..(rank + 1) * per
}

/// The training run's mutable parts, saved in a checkpoint.
struct Run<'c> {
    comm: &'c dyn Communicator,
    model: DenseModel,
    tokenizer: bert::Tokenizer,
    params: Vec<(String, nn::Param)>,
    opt: AdamW,
    state: TrainerState,
    ctx: Ctx,
    device: Device,
    precision: Precision,
    scaler: LossScaler,
    /// How a micro-batch's loss and gradients are computed.
    options: StepOptions,
}

impl<'c> Run<'c> {
    /// The model, tokenizer, optimizer and state at the start: fresh from
    /// `model_name_or_path`, or as saved in `resume_from_checkpoint`.
    fn start(
        cfg: &TrainConfig,
        data: DataKey,
        total: u64,
        comm: &'c dyn Communicator,
    ) -> Result<Run<'c>> {
        let resume = cfg.resume_from_checkpoint.as_deref();
        let model_dir = resume.unwrap_or(&cfg.model_name_or_path);
        let (model, report) = DenseModel::from_pretrained(model_dir, cfg.allow_random_init)?;
        if cfg.verbose && !report.is_clean() {
            eprintln!("loading {}: {report}", model_dir.display());
        }
        let tok_dir = match (resume, &cfg.tokenizer_name) {
            (Some(ckpt), _) => ckpt,
            (None, Some(t)) => t.as_path(),
            (None, None) => model_dir,
        };
        let tokenizer = bert::Tokenizer::from_dir(tok_dir)?;
        let mut opt = AdamW::new(AdamWConfig {
            lr: cfg.learning_rate,
            weight_decay: cfg.weight_decay,
            eps: cfg.adam_epsilon,
            variant: AdamWVariant::Hf,
            ..AdamWConfig::default()
        })?;
        let warmup = warmup_steps(total, cfg.warmup_steps, cfg.warmup_ratio);
        let schedule = LrSchedule::linear(cfg.learning_rate, warmup, total);
        let state = match resume {
            None => TrainerState {
                global_step: 0,
                epoch: 0,
                step_in_epoch: 0,
                schedule,
                dropout_seed: stream_seed(cfg.seed, DROPOUT_STREAM),
                dropout_offset: 0,
                data,
                log_history: Vec::new(),
                loss_scaler: None,
            },
            Some(ckpt) => {
                let mut saved = read_state(ckpt)?;
                let old = saved.data.clone();
                if old.world_size != data.world_size {
                    // Continue at the first batch boundary at or after the example reached.
                    let done = saved.step_in_epoch as usize * old.global_batch();
                    saved.step_in_epoch = done.div_ceil(data.global_batch()) as u64;
                    if comm.rank() == 0 {
                        eprintln!(
                            "warning: {} was written by {} ranks, this run has {}: the global \
                             batch is now {} examples, the epoch continues at example {} (was \
                             {done}) and dropout draws differ",
                            ckpt.display(),
                            old.world_size,
                            data.world_size,
                            data.global_batch(),
                            saved.step_in_epoch as usize * data.global_batch()
                        );
                    }
                    saved.data.world_size = data.world_size;
                }
                if saved.data != data {
                    return Err(Error::format(
                        &ckpt.join(TRAINER_STATE_FILE),
                        format!(
                            "the checkpoint was trained with {:?}; this run has {data:?} (the \
                             batches would differ)",
                            saved.data
                        ),
                    ));
                }
                opt.load_state(ckpt.join(OPTIMIZER_FILE))?;
                // The schedule's shape follows this run's arguments; its position the checkpoint.
                let step = saved.schedule.step;
                TrainerState {
                    schedule: LrSchedule { step, ..schedule },
                    ..saved
                }
            }
        };
        let ctx = Ctx::training(Rng {
            seed: state.dropout_seed,
            offset: state.dropout_offset,
        });
        nn::module::to_device(&model.encoder, cfg.device)?;
        let mut scaler = cfg.precision.loss_scaler()?;
        if let (Some(saved), Precision::F16) = (&state.loss_scaler, cfg.precision) {
            scaler.load_state_dict(saved)?;
        }
        Ok(Run {
            comm,
            params: model.encoder.named_params(),
            model,
            tokenizer,
            opt,
            state,
            ctx,
            device: cfg.device,
            precision: cfg.precision,
            scaler,
            options: StepOptions {
                negatives_x_device: cfg.negatives_x_device,
                grad_cache: cfg.grad_cache,
                precision: cfg.precision,
            },
        })
    }

    /// The loss and gradients of this rank's part of one global micro-batch
    /// ([`loss_and_grads`]), the gradients multiplied by `weight` (and by the loss scale).
    fn micro_batch(&mut self, batch: &TrainBatch, weight: f64) -> Result<MicroBatchGrads> {
        let _data = profiler::phase(Phase::Data);
        let (query, passages) = (
            batch.query.to_device(self.device)?,
            batch.passages.to_device(self.device)?,
        );
        drop(_data);
        profiler::in_phase(Phase::Forward, || {
            loss_and_grads(
                &self.model,
                &query,
                &passages,
                &mut self.ctx,
                &self.options,
                self.comm,
                self.scaler.scale() as f64 * weight,
            )
        })
    }

    /// This rank's parts of the global micro-batches of one optimizer step, their gradients
    /// summed (each micro-batch's divided by their number) and averaged over the ranks,
    /// unscaling and clipping, AdamW, schedule (module docs). Returns this rank's mean loss
    /// over the micro-batches (the global one with cross-device negatives).
    fn step(&mut self, micro: &[TrainBatch], max_grad_norm: f64) -> Result<StepStats> {
        let _profiled = profiler::step(self.state.global_step + 1);
        let k = micro.len().max(1) as f64;
        let mut loss = 0f64;
        let mut grads = Gradients::default();
        for batch in micro {
            let m = self.micro_batch(batch, 1.0 / k)?;
            loss += m.loss / k;
            for (_, p) in &self.params {
                let v = p.var();
                if let Some(g) = m.grads.get(&v) {
                    let sum = match grads.remove(&v) {
                        None => g.clone(),
                        Some(acc) => acc.add(g)?,
                    };
                    grads.insert(&v, sum);
                }
            }
        }
        all_reduce_grads(self.comm, &self.params, &mut grads)?;
        // Take the gradients out to clip them in place, then hand them back to the optimizer.
        let mut taken: Vec<(Var, Tensor)> = Vec::new();
        for (_, p) in &self.params {
            let v = p.var();
            if let Some(g) = grads.remove(&v) {
                taken.push((v, g));
            }
        }
        let mut refs: Vec<&mut Tensor> = taken.iter_mut().map(|(_, g)| g).collect();
        let (grad_norm, decision) = unscale_and_clip(&mut self.scaler, &mut refs, max_grad_norm)?;
        if self.precision == Precision::F16 {
            self.state.loss_scaler = Some(self.scaler.state_dict());
        }
        let lr = self.state.schedule.lr();
        let applied = decision == StepDecision::Apply;
        if applied && !(loss.is_finite() && grad_norm.is_finite()) {
            return Err(Error::Config(format!(
                "step {}: loss {loss} / gradient norm {grad_norm} is not finite",
                self.state.global_step + 1
            )));
        }
        if applied {
            for (v, g) in taken {
                grads.insert(&v, g);
            }
            step_params(&mut self.opt, lr, &self.params, &grads)?;
            self.state.schedule.advance();
        }
        self.state.global_step += 1;
        self.state.step_in_epoch += 1;
        Ok(StepStats {
            loss,
            grad_norm,
            lr,
        })
    }

    /// Rank 0 writes the checkpoint; every rank agrees before it is renamed into place.
    fn save_checkpoint(&mut self, cfg: &TrainConfig) -> Result<Option<PathBuf>> {
        let _phase = profiler::phase(Phase::Checkpoint);
        // Every rank's generator is at the same position (module docs): rank 0's is the run's.
        self.state.dropout_seed = self.ctx.rng.seed;
        self.state.dropout_offset = self.ctx.rng.offset;
        let what = format!("saving {CHECKPOINT_PREFIX}{}", self.state.global_step);
        if self.comm.rank() != 0 {
            all_ok(self.comm, &what, Ok(()))?;
            return Ok(None);
        }
        let written = self.write_checkpoint(cfg);
        let status = written
            .as_ref()
            .map(|_| ())
            .map_err(|e| tensor::Error::op("train-retriever", e.to_string()));
        if let Err(e) = all_ok(self.comm, &what, status) {
            if let Ok(tmp) = &written {
                let _ = std::fs::remove_dir_all(tmp);
            }
            return Err(written.err().unwrap_or(e.into()));
        }
        self.rename_checkpoint(cfg, written?).map(Some)
    }

    /// The checkpoint's files, in a temporary directory (returned).
    fn write_checkpoint(&mut self, cfg: &TrainConfig) -> Result<PathBuf> {
        let name = format!("{CHECKPOINT_PREFIX}{}", self.state.global_step);
        let tmp = cfg
            .output_dir
            .join(format!(".tmp-{name}-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        self.model.save_pretrained(&tmp, Some(&self.tokenizer))?;
        self.opt.save_state(tmp.join(OPTIMIZER_FILE))?;
        let state = serde_json::to_string_pretty(&self.state)
            .map_err(|e| Error::Config(format!("trainer state: {e}")))?;
        let state_path = tmp.join(TRAINER_STATE_FILE);
        std::fs::File::create(&state_path)
            .and_then(|mut f| f.write_all(state.as_bytes()).and_then(|_| f.sync_all()))
            .map_err(|e| Error::io(&state_path, e))?;
        Ok(tmp)
    }

    /// Renames the temporary directory `tmp` to `checkpoint-N` and rotates old checkpoints.
    fn rename_checkpoint(&mut self, cfg: &TrainConfig, tmp: PathBuf) -> Result<PathBuf> {
        let dir = cfg
            .output_dir
            .join(format!("{CHECKPOINT_PREFIX}{}", self.state.global_step));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
        if let Some(limit) = cfg.save_total_limit {
            let all = checkpoints(&cfg.output_dir)?;
            for (_, old) in all.iter().take(all.len().saturating_sub(limit)) {
                std::fs::remove_dir_all(old).map_err(|e| Error::io(old, e))?;
            }
        }
        Ok(dir)
    }
}

fn read_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(TRAINER_STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let state: TrainerState = serde_json::from_str(&text)
        .map_err(|e| Error::format(&path, format!("invalid trainer state: {e}")))?;
    // Numbers a resumed run adds to or shifts: out of range, they would overflow later.
    let g = state.global_step;
    for (field, v, max) in [
        ("schedule.step", state.schedule.step, g),
        ("epoch", state.epoch, 1 << 31),
        ("dropout_offset", state.dropout_offset, 1 << 62),
    ] {
        if v > max {
            return Err(Error::format(
                &path,
                format!("{field}: {v} is larger than {max}"),
            ));
        }
    }
    Ok(state)
}

/// `train_log.jsonl` holding `history` (rewritten atomically), opened for appending.
fn open_log(path: &Path, history: &[LogEntry]) -> Result<std::fs::File> {
    let mut w = JsonlWriter::create(path)?;
    for e in history {
        w.write(e)?;
    }
    w.finish()?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

/// Fine-tunes (or resumes fine-tuning) in this process alone, as the module docs describe.
pub fn train(cfg: &TrainConfig) -> Result<TrainReport> {
    train_on(cfg, &SingleProcess)
}

/// The folder of the output directory where `train-retriever --config_name` writes the random
/// initialisation the run starts from.
pub const RANDOM_INIT_DIR: &str = "random-init";

/// Rank 0's check and creation of the output directory.
fn prepare_output_dir(cfg: &TrainConfig) -> Result<()> {
    let out = &cfg.output_dir;
    let tmp_prefix = format!(".tmp-{CHECKPOINT_PREFIX}");
    let stale = crate::resume::remove_stale(out, |n| n.starts_with(&tmp_prefix))
        .map_err(|(p, e)| Error::io(&p, e))?;
    for dir in stale {
        eprintln!("removed {}: an incomplete checkpoint", dir.display());
    }
    // `train-retriever --config_name` writes the random initialisation it starts from there
    // first (after the same check).
    let non_empty = std::fs::read_dir(out)
        .is_ok_and(|mut d| d.any(|e| e.map_or(true, |e| e.file_name() != RANDOM_INIT_DIR)));
    if non_empty && !cfg.overwrite_output_dir && cfg.resume_from_checkpoint.is_none() {
        return Err(Error::Config(format!(
            "output directory {} already exists and is not empty; use overwrite_output_dir to \
             train into it or resume_from_checkpoint to continue",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))
}

/// Fine-tunes as rank `comm.rank()` of `comm.world_size()` data-parallel replicas (module docs);
/// every rank calls it with the same configuration. Rank 0's report holds the log; the other
/// ranks' report the same steps with an empty log.
pub fn train_on(cfg: &TrainConfig, comm: &dyn Communicator) -> Result<TrainReport> {
    check_config(cfg)?;
    let (rank, world) = (comm.rank(), comm.world_size());
    let out = &cfg.output_dir;
    let prepared = match rank {
        0 => prepare_output_dir(cfg),
        _ => Ok(()),
    };
    let status = prepared
        .as_ref()
        .map(|_| ())
        .map_err(|e| tensor::Error::op("train-retriever", e.to_string()));
    if let Err(e) = all_ok(comm, "preparing the output directory", status) {
        return Err(prepared.err().unwrap_or(e.into()));
    }

    let data = TrainDataset::open(&cfg.train_dir)?;
    if data.is_empty() {
        return Err(Error::Config(format!(
            "no training examples in {}",
            cfg.train_dir.display()
        )));
    }
    let n = data.len();
    let key = DataKey {
        seed: cfg.seed,
        per_device_train_batch_size: cfg.per_device_train_batch_size,
        train_n_passages: cfg.train_n_passages,
        num_examples: n,
        gradient_accumulation_steps: cfg.gradient_accumulation_steps,
        world_size: world,
    };
    let (global, micro) = (key.global_batch(), cfg.per_device_train_batch_size * world);
    let (total, epochs, steps_per_epoch) = plan(cfg, n, global);
    if total == 0 {
        return Err(Error::Config("nothing to train: 0 steps".into()));
    }
    let mut run = Run::start(cfg, key, total, comm)?;
    let mc = &run.model.encoder.config;
    if cfg.q_max_len.max(cfg.p_max_len) > mc.max_position_embeddings {
        return Err(Error::Config(format!(
            "q_max_len {} / p_max_len {} exceed the model's max_position_embeddings {}",
            cfg.q_max_len, cfg.p_max_len, mc.max_position_embeddings
        )));
    }
    data.validate(cfg.train_n_passages, mc.vocab_size)?;
    let bcfg = BatchConfig {
        train_n_passages: cfg.train_n_passages,
        q_max_len: cfg.q_max_len,
        p_max_len: cfg.p_max_len,
        seed: cfg.seed,
        special: SpecialIds::from_tokenizer(&run.tokenizer),
        pad_to: cfg.pad_to,
    };
    let log_path = out.join(LOG_FILE);
    let mut log_file = match rank {
        0 => Some(open_log(&log_path, &run.state.log_history)?),
        _ => None,
    };
    let bar = crate::progress_bar(
        total,
        cfg.verbose && rank == 0,
        "train [{elapsed_precise}] {wide_bar} {pos}/{len} steps (eta {eta}) {msg}",
    );
    bar.set_position(run.state.global_step);
    let mut written = Vec::new();
    let (mut window_loss, mut window_steps) = (0f64, 0u64);

    'epochs: while run.state.epoch < epochs {
        let order = epoch_order(n, cfg.seed, run.state.epoch);
        let batches: Vec<&[usize]> = order.chunks(global).collect();
        while let Some(&indices) = batches.get(run.state.step_in_epoch as usize) {
            if run.state.global_step >= total {
                break 'epochs;
            }
            let mut shards = Vec::with_capacity(cfg.gradient_accumulation_steps);
            for m in indices.chunks(micro) {
                let mine = &m[shard(m.len(), rank, world)];
                if !mine.is_empty() {
                    shards.push(data.batch(mine, run.state.epoch, &bcfg)?);
                }
            }
            let stats = run.step(&shards, cfg.max_grad_norm)?;
            (window_loss, window_steps) = (window_loss + stats.loss, window_steps + 1);
            bar.inc(1);
            let step = run.state.global_step;
            if cfg.logging_steps > 0 && step.is_multiple_of(cfg.logging_steps) {
                // Each rank's window of losses; their mean over the ranks is logged (one small
                // exchange on logging steps only).
                let window = sum_f64(comm, &[window_loss])?[0] / world as f64;
                let entry = LogEntry {
                    step,
                    epoch: run.state.epoch as f64
                        + run.state.step_in_epoch as f64 / steps_per_epoch as f64,
                    loss: window / window_steps as f64,
                    learning_rate: stats.lr,
                    grad_norm: stats.grad_norm,
                };
                (window_loss, window_steps) = (0.0, 0);
                let line = serde_json::to_string(&entry).expect("a LogEntry serialises") + "\n";
                if let Some(f) = log_file.as_mut() {
                    f.write_all(line.as_bytes())
                        .and_then(|_| f.flush())
                        .map_err(|e| Error::io(&log_path, e))?;
                }
                bar.set_message(format!(
                    "loss {:.4} lr {:.3e}",
                    entry.loss, entry.learning_rate
                ));
                if cfg.verbose && bar.is_hidden() && rank == 0 {
                    eprint!("{line}");
                }
                run.state.log_history.push(entry);
            }
            if cfg.save_steps > 0 && step.is_multiple_of(cfg.save_steps) {
                written.extend(run.save_checkpoint(cfg)?);
            }
        }
        run.state.epoch += 1;
        run.state.step_in_epoch = 0;
    }
    bar.finish_and_clear();
    let saved = match rank {
        0 => run
            .model
            .save_pretrained(out, Some(&run.tokenizer))
            .map_err(|e| tensor::Error::op("train-retriever", e.to_string())),
        _ => Ok(()),
    };
    all_ok(comm, "writing the final model", saved)?;
    if rank != 0 {
        run.state.log_history.clear();
    }
    Ok(TrainReport {
        global_step: run.state.global_step,
        total_steps: total,
        warmup_steps: run.state.schedule.warmup_steps,
        num_examples: n,
        log: run.state.log_history,
        checkpoints: written,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state at global step 10 with the given schedule step, epoch and dropout offset.
    fn state(step: u64, epoch: u64, offset: u64) -> TrainerState {
        TrainerState {
            global_step: 10,
            epoch,
            step_in_epoch: 0,
            schedule: LrSchedule {
                step,
                ..LrSchedule::linear(1e-3, 1, 20)
            },
            dropout_seed: 1,
            dropout_offset: offset,
            data: DataKey {
                seed: 1,
                per_device_train_batch_size: 2,
                train_n_passages: 2,
                num_examples: 4,
                gradient_accumulation_steps: 1,
                world_size: 1,
            },
            log_history: Vec::new(),
            loss_scaler: None,
        }
    }

    /// trainer_state.json numbers that a resume would overflow on are errors naming the field.
    #[test]
    fn hostile_state_numbers_are_errors_naming_the_field() {
        let dir = std::env::temp_dir().join(format!("retrieval-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(TRAINER_STATE_FILE);
        for (s, field) in [
            (state(u64::MAX, 1, 5), "schedule.step"),
            (state(10, 1 << 40, 5), "epoch"),
            (state(10, 1, u64::MAX), "dropout_offset"),
        ] {
            std::fs::write(&path, serde_json::to_string(&s).unwrap()).unwrap();
            let msg = read_state(&dir).unwrap_err().to_string();
            assert!(
                msg.contains(field) && msg.contains(TRAINER_STATE_FILE),
                "{msg}"
            );
        }
        std::fs::write(&path, serde_json::to_string(&state(10, 1, 5)).unwrap()).unwrap();
        assert_eq!(read_state(&dir).unwrap().epoch, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
