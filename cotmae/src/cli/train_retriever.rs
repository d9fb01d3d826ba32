//! `cotmae train-retriever`: Tevatron-style dense-retrieval fine-tuning (see
//! [`retrieval::train`]). Flags keep Tevatron's / HF `TrainingArguments` names.

use std::path::PathBuf;

use clap::Args;
use retrieval::train::{train_on, RANDOM_INIT_DIR};
use retrieval::{latest_checkpoint, GradCacheChunks, PadTo, TrainConfig};

use super::{with_threads, CliResult};
use crate::device::DeviceArgs;
use crate::launch::{rank_device, run_as_role, LaunchArgs};

#[derive(Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct TrainRetrieverArgs {
    /// HF model directory to fine-tune (e.g. the CoT-MAE pretrained encoder).
    #[arg(
        long,
        required_unless_present = "config_name",
        conflicts_with = "config_name"
    )]
    pub model_name_or_path: Option<PathBuf>,
    /// An HF config.json instead of a model: fine-tune a randomly initialised encoder (HF's
    /// initialisation drawn from --seed, the same draws as `pretrain --config_name`). Needs
    /// --tokenizer_name. The initialisation is saved to `<output_dir>/random-init`.
    #[arg(long)]
    pub config_name: Option<PathBuf>,
    /// Tokenizer directory (vocab.txt); default: the model directory.
    #[arg(long)]
    pub tokenizer_name: Option<PathBuf>,
    /// Load a checkpoint that lacks some of the encoder's weights, initialising those randomly
    /// (HF's initialisation; as `ignore_mismatched_sizes`). Without it a missing weight is an
    /// error naming the checkpoint file and the tensors.
    #[arg(long)]
    pub allow_random_init: bool,
    /// Where checkpoints, train_log.jsonl and the final model go.
    #[arg(long)]
    pub output_dir: PathBuf,
    /// Training examples: one JSON-lines file or a directory of *.json / *.jsonl files.
    #[arg(long)]
    pub train_dir: PathBuf,
    /// Queries per batch, per rank.
    #[arg(long, default_value_t = 8)]
    pub per_device_train_batch_size: usize,
    /// Micro-batches per optimizer step (their gradients summed, each loss divided by this).
    #[arg(long, default_value_t = 1)]
    pub gradient_accumulation_steps: usize,
    /// Passages per query: one positive and train_n_passages - 1 negatives.
    #[arg(long, default_value_t = 16)]
    pub train_n_passages: usize,
    #[arg(long, default_value_t = 32)]
    pub q_max_len: usize,
    #[arg(long, default_value_t = 128)]
    pub p_max_len: usize,
    #[arg(long, default_value_t = 2e-5)]
    pub learning_rate: f64,
    #[arg(long, default_value_t = 3.0)]
    pub num_train_epochs: f64,
    /// Total optimizer steps; > 0 overrides num_train_epochs.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub max_steps: i64,
    #[arg(long, default_value_t = 0.1)]
    pub warmup_ratio: f64,
    /// > 0 overrides warmup_ratio.
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: u64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// AdamW's epsilon.
    #[arg(long, default_value_t = 1e-8)]
    pub adam_epsilon: f64,
    /// Global gradient-norm clipping (0: none).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[arg(long, default_value_t = 500)]
    pub logging_steps: u64,
    #[arg(long, default_value_t = 500)]
    pub save_steps: u64,
    /// Keep only the newest N checkpoints.
    #[arg(long)]
    pub save_total_limit: Option<usize>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Train into a non-empty output_dir.
    #[arg(long)]
    pub overwrite_output_dir: bool,
    /// A checkpoint-N directory to continue from, or `latest` (the newest in output_dir).
    #[arg(long)]
    pub resume_from_checkpoint: Option<String>,
    /// Cross-device negatives (Tevatron): all-gather the query and passage vectors of every
    /// rank, so each query scores every rank's passages; the loss is over the global batch
    /// (scaled by the world size for backward, so that the averaged gradients are the global
    /// batch's). With one process every passage is already in the batch: no effect (a warning).
    #[arg(long)]
    pub negatives_x_device: bool,
    /// Gradient cache (Tevatron / GradCache): encode the batch in chunks without a graph, take
    /// the loss and its gradient with respect to the vectors, then re-encode chunk by chunk with
    /// the graph and back-propagate those gradients. The same loss and gradients as the whole
    /// batch (dropout draws the same masks), with the encoder's memory of one chunk, so a
    /// contrastive batch far larger than the device's memory fits.
    #[arg(long)]
    pub grad_cache: bool,
    /// Queries per encoder chunk with --grad_cache.
    #[arg(long, default_value_t = 4)]
    pub gc_q_chunk_size: usize,
    /// Passages per encoder chunk with --grad_cache.
    #[arg(long, default_value_t = 32)]
    pub gc_p_chunk_size: usize,
    /// `--device`, `--fp16` (dynamic loss scaling) / `--bf16`.
    #[command(flatten)]
    pub compute: DeviceArgs,
    /// Accepted for compatibility; batches are built in-process.
    #[arg(long, default_value_t = 0)]
    pub dataloader_num_workers: usize,
    /// Pad each batch to its longest text instead of q_max_len / p_max_len (same loss, faster).
    #[arg(long)]
    pub pad_to_longest: bool,
    /// Worker threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[command(flatten)]
    pub profile: super::profile::ProfileArgs,
    /// `--nproc_per_node`, `--nnodes`, ... (see [`crate::launch`]).
    #[command(flatten)]
    pub launch: LaunchArgs,
}

pub fn run(a: TrainRetrieverArgs) -> CliResult {
    // The device is opened by the process that trains (a launcher only starts the ranks).
    let (device, precision) = a.compute.parse()?;
    if a.grad_cache && (a.gc_q_chunk_size == 0 || a.gc_p_chunk_size == 0) {
        return Err("--gc_q_chunk_size and --gc_p_chunk_size must be at least 1".into());
    }
    if a.dataloader_num_workers > 0 {
        eprintln!("note: --dataloader_num_workers is ignored; batches are built in-process");
    }
    let resume = match a.resume_from_checkpoint.as_deref() {
        None => None,
        Some("latest") => Some(latest_checkpoint(&a.output_dir)?.ok_or_else(|| {
            format!(
                "--resume_from_checkpoint latest: no checkpoint-N in {}",
                a.output_dir.display()
            )
        })?),
        Some(p) => Some(PathBuf::from(p)),
    };
    if let Some(ckpt) = &resume {
        eprintln!("train-retriever: resuming from {}", ckpt.display());
    }
    let init = a.config_name.clone().map(|config| RandomInit {
        config,
        tokenizer: a.tokenizer_name.clone(),
        output_dir: a.output_dir.clone(),
        seed: a.seed,
        overwrite_output_dir: a.overwrite_output_dir,
        resume: a.resume_from_checkpoint.is_some(),
    });
    let model_name_or_path = match (&a.model_name_or_path, &a.config_name) {
        (Some(dir), _) => dir.clone(),
        (None, Some(_)) => a.output_dir.join(RANDOM_INIT_DIR),
        (None, None) => unreachable!("clap requires one of them"),
    };
    let cfg = TrainConfig {
        model_name_or_path,
        tokenizer_name: a.tokenizer_name,
        output_dir: a.output_dir,
        train_dir: a.train_dir,
        per_device_train_batch_size: a.per_device_train_batch_size,
        gradient_accumulation_steps: a.gradient_accumulation_steps,
        train_n_passages: a.train_n_passages,
        q_max_len: a.q_max_len,
        p_max_len: a.p_max_len,
        learning_rate: a.learning_rate,
        num_train_epochs: a.num_train_epochs,
        max_steps: (a.max_steps > 0).then_some(a.max_steps as u64),
        warmup_ratio: a.warmup_ratio,
        warmup_steps: a.warmup_steps,
        weight_decay: a.weight_decay,
        adam_epsilon: a.adam_epsilon,
        max_grad_norm: a.max_grad_norm,
        logging_steps: a.logging_steps,
        save_steps: a.save_steps,
        save_total_limit: a.save_total_limit,
        seed: a.seed,
        overwrite_output_dir: a.overwrite_output_dir,
        resume_from_checkpoint: resume,
        pad_to: if a.pad_to_longest {
            PadTo::Longest
        } else {
            PadTo::MaxLen
        },
        verbose: true,
        device,
        precision,
        negatives_x_device: a.negatives_x_device,
        grad_cache: a.grad_cache.then_some(GradCacheChunks {
            gc_q_chunk_size: a.gc_q_chunk_size,
            gc_p_chunk_size: a.gc_p_chunk_size,
        }),
        allow_random_init: a.allow_random_init,
    };
    let ran = with_threads(a.threads, || {
        run_as_role(&a.launch, !device.is_cpu(), |comm, env| -> CliResult<_> {
            // Rank 0 alone prints and profiles (every rank computes the same ops).
            let rank0 = env.is_none_or(|e| e.rank == 0);
            let device = crate::device::open_device(&rank_device(&a.compute.device, env))?;
            let cfg = TrainConfig {
                verbose: rank0,
                device,
                ..cfg.clone()
            };
            if let Some(init) = &init {
                random_init_on(init, comm)?;
            }
            if rank0 {
                a.profile.start()?;
            }
            let report = train_on(&cfg, comm)?;
            if rank0 {
                a.profile.finish()?;
            }
            Ok(report)
        })
    })??;
    let Some(report) = ran else {
        return Ok(()); // the launcher: every rank finished
    };
    if nn::comm::DistEnv::from_env()?.is_some_and(|e| e.rank != 0) {
        return Ok(()); // rank 0 reports the run
    }
    eprintln!(
        "train-retriever: {} examples, {} of {} steps (warmup {}); model saved to {}",
        report.num_examples,
        report.global_step,
        report.total_steps,
        report.warmup_steps,
        cfg.output_dir.display()
    );
    if let Some(last) = report.log.last() {
        eprintln!(
            "last logged step {}: loss {:.4}, lr {:.3e}",
            last.step, last.loss, last.learning_rate
        );
    }
    Ok(())
}

/// What `--config_name` needs to write the random initialisation a run starts from.
struct RandomInit {
    config: PathBuf,
    tokenizer: Option<PathBuf>,
    output_dir: PathBuf,
    seed: u64,
    overwrite_output_dir: bool,
    resume: bool,
}

/// Rank 0 writes the random initialisation of `--config_name` ([`random_init`]) while the other
/// ranks wait for it; every rank then fails if rank 0 could not write it.
fn random_init_on(init: &RandomInit, comm: &dyn nn::Communicator) -> CliResult {
    let written = if comm.rank() == 0 {
        random_init(init)
    } else {
        Ok(())
    };
    if comm.world_size() > 1 {
        let outcome = comm.all_gather_host(vec![written.is_ok() as u64])?;
        if written.is_ok() && outcome[0] != [1] {
            return Err(format!(
                "rank 0 could not write the random initialisation to {} (its error is above)",
                init.output_dir.join(RANDOM_INIT_DIR).display()
            )
            .into());
        }
    }
    written
}

/// Writes the random encoder of `--config_name` (drawn from `--seed` on the same stream as
/// `pretrain --config_name`, so both start from the same weights) to
/// `<output_dir>/random-init` with the tokenizer; the trainer then starts from that directory.
/// Skipped when it is already there (a resume).
fn random_init(init: &RandomInit) -> CliResult {
    let tok_dir = init
        .tokenizer
        .as_deref()
        .ok_or("--config_name needs --tokenizer_name (a directory with vocab.txt)")?;
    let dir = init.output_dir.join(RANDOM_INIT_DIR);
    if init.resume && dir.join("config.json").exists() {
        return Ok(());
    }
    let non_empty = std::fs::read_dir(&init.output_dir).is_ok_and(|mut d| d.next().is_some());
    if non_empty && !init.overwrite_output_dir && !init.resume {
        return Err(format!(
            "output directory {} already exists and is not empty; use overwrite_output_dir to \
             train into it or resume_from_checkpoint to continue",
            init.output_dir.display()
        )
        .into());
    }
    let config = bert::BertConfig::from_file(&init.config)?;
    let tok = bert::Tokenizer::from_dir(tok_dir)?;
    let mut rng = tensor::Rng {
        seed: init.seed,
        offset: crate::trainer::streams::INIT,
    };
    let model = bert::BertForMaskedLM::new(&config, &mut rng)?;
    model.save_pretrained(&dir, Some(&tok))?;
    eprintln!(
        "train-retriever: random initialisation (seed {}) saved to {}",
        init.seed,
        dir.display()
    );
    Ok(())
}
