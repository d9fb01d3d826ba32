//! The arguments of `cotmae pretrain`, split as the original script splits them (HF's
//! `ModelArguments`, `DataTrainingArguments`, `TrainingArguments`) and spelled as its flags.
//!
//! Defaults: the original's values where REFERENCE §2-4 names one (learning_rate 1e-4,
//! warmup_ratio 0.1, weight_decay 0.01, max_grad_norm 1.0, logging_steps 20, 64 documents per
//! device, max_seq_length 128, mask ratios 0.30 / 0.45, 2 head layers, head_mlm_coef 1.0), HF
//! `TrainingArguments`' otherwise (seed 42, no gradient accumulation, 3 epochs when max_steps is
//! not set, save_steps 500, no save_total_limit). Booleans take an optional value, as
//! `HfArgumentParser` does: `--fp16`, `--fp16 true`, `--use_decoder_head false`. `--device`,
//! `--fp16` and `--bf16` are the shared group of [`crate::device`] (they serialise as three flat
//! keys of `training`).
//!
//! All three serialise to the `training_args.json` a checkpoint carries, which a resumed run
//! compares with its own flags.

use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args};
use serde::{Deserialize, Serialize};

use crate::collator::{CollatorConfig, DataType};
use crate::device::DeviceArgs;
use crate::launch::LaunchArgs;
use crate::model::CotMaeModelArgs;
use crate::{Error, Result};

/// Where the encoder comes from, and the decoder head's switches.
#[derive(Args, Clone, Debug, Serialize, Deserialize)]
#[command(rename_all = "snake_case")]
pub struct ModelArguments {
    /// An HF BERT directory (config.json + model.safetensors, e.g. bert-base-uncased) to start
    /// from.
    #[arg(long)]
    pub model_name_or_path: Option<PathBuf>,
    /// Instead of model_name_or_path: a BERT config.json; the encoder is initialised randomly
    /// (HF's initialisation, drawn from --seed). Needs --tokenizer_name.
    #[arg(long)]
    pub config_name: Option<PathBuf>,
    /// Tokenizer directory (vocab.txt, tokenizer_config.json); default: model_name_or_path.
    #[arg(long)]
    pub tokenizer_name: Option<PathBuf>,
    /// Load a model_name_or_path that lacks some weights (encoder or MLM head), initialising
    /// those randomly (HF's initialisation; as `ignore_mismatched_sizes`). Without it a missing
    /// weight is an error naming the checkpoint file and the tensors.
    #[arg(long)]
    #[serde(default)]
    pub allow_random_init: bool,
    /// Build the decoder head (c_head).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true",
          action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub use_decoder_head: bool,
    /// Add the decoder head's MLM loss to the loss.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true",
          action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub enable_head_mlm: bool,
    /// Transformer layers in the decoder head.
    #[arg(long, default_value_t = 2)]
    pub n_head_layers: usize,
    /// Weight of the decoder head's MLM loss.
    #[arg(long, default_value_t = 1.0)]
    pub head_mlm_coef: f64,
}

/// The training data and how batches are made of it.
#[derive(Args, Clone, Debug, Serialize, Deserialize)]
#[command(rename_all = "snake_case")]
pub struct DataTrainingArguments {
    /// Output of `cotmae prepare`: its directory (tokens.bin, else data.jsonl), a token store
    /// file, or a JSON-lines file of `{"spans": [...]}` documents.
    #[arg(long)]
    pub train_path: PathBuf,
    /// Contextual span paired with the anchor: mixed, random_sampled, nearby, overlap, anchor,
    /// or a +-joined list (nearby+overlap).
    #[arg(long, default_value = "mixed")]
    pub data_type: String,
    /// Sequence length of every row ([CLS] + at most max_seq_length - 2 tokens + [SEP], padded).
    #[arg(long, default_value_t = 128)]
    pub max_seq_length: usize,
    /// Whole-word mask ratio of the encoder's input.
    #[arg(long, default_value_t = 0.30)]
    pub encoder_mask_ratio: f64,
    /// Whole-word mask ratio of the decoder head's input.
    #[arg(long, default_value_t = 0.45)]
    pub decoder_mask_ratio: f64,
}

/// The optimisation, logging and checkpointing (HF `TrainingArguments` names).
#[derive(Args, Clone, Debug, Serialize, Deserialize)]
#[command(rename_all = "snake_case")]
pub struct TrainingArguments {
    /// Directory for checkpoints, the log and the final model.
    #[arg(long)]
    pub output_dir: PathBuf,
    /// Allow writing into a non-empty output_dir (its old checkpoint-N directories are removed).
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true",
          action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub overwrite_output_dir: bool,
    /// Accepted for compatibility with the original scripts; pretraining always trains.
    #[arg(long, hide = true, default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = ArgAction::Set,
          value_parser = BoolishValueParser::new())]
    pub do_train: bool,
    /// Optimizer steps to run; <= 0: num_train_epochs decides.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub max_steps: i64,
    /// Epochs over the documents when max_steps is not set.
    #[arg(long, default_value_t = 3.0)]
    pub num_train_epochs: f64,
    /// Documents per micro-batch (each gives an anchor and a context row: twice the sequences).
    #[arg(long, default_value_t = 64)]
    pub per_device_train_batch_size: usize,
    /// Micro-batches per optimizer step; each micro-batch loss is divided by this.
    #[arg(long, default_value_t = 1)]
    pub gradient_accumulation_steps: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-4)]
    pub learning_rate: f64,
    /// Warmup length as a fraction of the steps (ceil), used when warmup_steps is 0.
    #[arg(long, default_value_t = 0.1)]
    pub warmup_ratio: f64,
    /// Warmup length in steps (overrides warmup_ratio when > 0).
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: u64,
    /// linear, constant or constant_with_warmup.
    #[arg(long, default_value = "linear")]
    pub lr_scheduler_type: String,
    /// Decoupled weight decay, on every parameter but biases and LayerNorm weights.
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    pub adam_beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    pub adam_beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    pub adam_epsilon: f64,
    /// Global gradient-norm clipping (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Log every this many optimizer steps.
    #[arg(long, default_value_t = 20)]
    pub logging_steps: u64,
    /// TensorBoard directory; default: output_dir/runs/<date>_<host> (a resumed run keeps its
    /// checkpoint's).
    #[arg(long)]
    pub logging_dir: Option<PathBuf>,
    /// Write output_dir/checkpoint-N every this many optimizer steps.
    #[arg(long, default_value_t = 500)]
    pub save_steps: u64,
    /// Keep at most this many checkpoints (the oldest are removed); default: all.
    #[arg(long)]
    pub save_total_limit: Option<usize>,
    /// Seeds everything: the random initialisation, the document order, the masks, dropout.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// A checkpoint-N directory to resume from, or `latest` (the highest in output_dir).
    #[arg(long)]
    pub resume_from_checkpoint: Option<String>,
    /// 0: batches are made on the training thread; N > 0: one background thread makes them
    /// ahead, up to 2N buffered (the batches are the same).
    #[arg(long, default_value_t = 0)]
    pub dataloader_num_workers: usize,
    /// `--device`, `--fp16`, `--bf16` (see [`crate::device`]).
    #[command(flatten)]
    #[serde(flatten)]
    pub compute: DeviceArgs,
    /// Test hook, not for users: after this step (its log and checkpoint written) the process
    /// stops working and waits to be killed, so a test can kill it at a known point.
    #[arg(long, hide = true)]
    pub debug_hang_after_step: Option<u64>,
    /// `--nproc_per_node`, `--nnodes`, ... (see [`crate::launch`]); not part of a run's
    /// arguments (a resumed run may change them).
    #[command(flatten)]
    #[serde(skip)]
    pub launch: LaunchArgs,
}

/// Everything `cotmae pretrain` takes.
#[derive(Args, Clone, Debug, Serialize, Deserialize)]
pub struct PretrainArgs {
    #[command(flatten)]
    pub model: ModelArguments,
    #[command(flatten)]
    pub data: DataTrainingArguments,
    #[command(flatten)]
    pub training: TrainingArguments,
    /// `--profile`, `--profile_steps`, `--profile_trace` (not saved with the run).
    #[command(flatten)]
    #[serde(skip)]
    pub profile: crate::cli::profile::ProfileArgs,
}

/// The largest `--per_device_train_batch_size` and `--gradient_accumulation_steps` accepted
/// (2^20: far beyond any real run, small enough that a step's bookkeeping always fits).
pub const MAX_BATCH_COUNT: usize = 1 << 20;

/// Fields that may differ between a checkpoint's run and the run resuming it without changing
/// the computation.
pub const RESUME_NEUTRAL: [&str; 13] = [
    "model_name_or_path",
    "config_name",
    "allow_random_init",
    "output_dir",
    "overwrite_output_dir",
    "do_train",
    "logging_steps",
    "logging_dir",
    "save_steps",
    "save_total_limit",
    "resume_from_checkpoint",
    "dataloader_num_workers",
    "debug_hang_after_step",
];

impl ModelArguments {
    pub fn cotmae_args(&self) -> CotMaeModelArgs {
        CotMaeModelArgs {
            use_decoder_head: self.use_decoder_head,
            enable_head_mlm: self.enable_head_mlm,
            n_head_layers: self.n_head_layers,
            head_mlm_coef: self.head_mlm_coef,
        }
    }

    /// The tokenizer directory: tokenizer_name, else model_name_or_path.
    pub fn tokenizer_dir(&self) -> Result<&PathBuf> {
        self.tokenizer_name
            .as_ref()
            .or(self.model_name_or_path.as_ref())
            .ok_or_else(|| {
                Error::Config(
                    "--config_name needs --tokenizer_name (a directory with vocab.txt)".into(),
                )
            })
    }
}

impl DataTrainingArguments {
    pub fn collator_config(&self) -> Result<CollatorConfig> {
        Ok(CollatorConfig {
            max_seq_length: self.max_seq_length,
            encoder_mask_ratio: self.encoder_mask_ratio,
            decoder_mask_ratio: self.decoder_mask_ratio,
            data_type: self.data_type.parse::<DataType>()?,
        })
    }
}

fn check(ok: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Config(msg()))
    }
}

impl PretrainArgs {
    /// Rejects inconsistent or out-of-range flags before anything is read or written.
    pub fn validate(&self) -> Result<()> {
        let (m, d, t) = (&self.model, &self.data, &self.training);
        t.compute.parse()?;
        match (&m.model_name_or_path, &m.config_name) {
            (None, None) => {
                return Err(Error::Config(
                    "give --model_name_or_path (an HF BERT directory) or --config_name (a \
                     config.json for a random initialisation)"
                        .into(),
                ))
            }
            (Some(_), Some(_)) => {
                return Err(Error::Config(
                    "give only one of --model_name_or_path and --config_name".into(),
                ))
            }
            _ => {}
        }
        m.tokenizer_dir()?;
        check(!m.use_decoder_head || m.n_head_layers > 0, || {
            "--n_head_layers must be > 0 with the decoder head".into()
        })?;
        check(m.head_mlm_coef.is_finite(), || {
            format!("--head_mlm_coef must be finite, got {}", m.head_mlm_coef)
        })?;
        d.collator_config()?;
        check(d.max_seq_length >= 3, || {
            format!("--max_seq_length must be >= 3, got {}", d.max_seq_length)
        })?;
        for (name, r) in [
            ("encoder_mask_ratio", d.encoder_mask_ratio),
            ("decoder_mask_ratio", d.decoder_mask_ratio),
        ] {
            check((0.0..=1.0).contains(&r), || {
                format!("--{name} must be in [0, 1], got {r}")
            })?;
        }
        for (name, v) in [
            (
                "per_device_train_batch_size",
                t.per_device_train_batch_size as u64,
            ),
            (
                "gradient_accumulation_steps",
                t.gradient_accumulation_steps as u64,
            ),
            ("logging_steps", t.logging_steps),
            ("save_steps", t.save_steps),
        ] {
            check(v > 0, || format!("--{name} must be > 0"))?;
        }
        // A step's micro-batches are held in memory together: a count no run could reach is an
        // error here, not an allocation failure (abort) in the first step.
        for (name, v) in [
            ("per_device_train_batch_size", t.per_device_train_batch_size),
            ("gradient_accumulation_steps", t.gradient_accumulation_steps),
        ] {
            check(v <= MAX_BATCH_COUNT, || {
                format!("--{name} {v} is above the limit of {MAX_BATCH_COUNT}")
            })?;
        }
        check(t.save_total_limit != Some(0), || {
            "--save_total_limit must be > 0 (leave it out to keep every checkpoint)".into()
        })?;
        check(
            t.max_steps > 0 || (t.num_train_epochs.is_finite() && t.num_train_epochs > 0.0),
            || "give --max_steps > 0 or --num_train_epochs > 0".into(),
        )?;
        check((0.0..=1.0).contains(&t.warmup_ratio), || {
            format!("--warmup_ratio must be in [0, 1], got {}", t.warmup_ratio)
        })?;
        check(
            nn::ScheduleKind::from_name(&t.lr_scheduler_type).is_some(),
            || {
                format!(
                    "--lr_scheduler_type {:?}: expected linear, constant or constant_with_warmup",
                    t.lr_scheduler_type
                )
            },
        )?;
        check(t.max_grad_norm >= 0.0, || {
            format!("--max_grad_norm must be >= 0, got {}", t.max_grad_norm)
        })?;
        self.adamw_config().validate()?;
        Ok(())
    }

    /// The optimizer's hyper-parameters (HF variant, HF's no-decay groups).
    pub fn adamw_config(&self) -> nn::AdamWConfig {
        let t = &self.training;
        nn::AdamWConfig {
            lr: t.learning_rate,
            betas: (t.adam_beta1, t.adam_beta2),
            eps: t.adam_epsilon,
            weight_decay: t.weight_decay,
            ..nn::AdamWConfig::default()
        }
    }

    /// The flags as one flat JSON object (what `training_args.json` holds).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("arguments serialise")
    }

    /// `(flag, ours, checkpoint's)` for every flag that changes the computation and differs
    /// from the checkpoint's `training_args.json` (a resumed run warns about each).
    pub fn differences(&self, saved: &serde_json::Value) -> Vec<(String, String, String)> {
        let ours = self.to_json();
        let mut out = Vec::new();
        for group in ["model", "data", "training"] {
            let (Some(a), Some(b)) = (
                ours.get(group).and_then(|v| v.as_object()),
                saved.get(group).and_then(|v| v.as_object()),
            ) else {
                continue;
            };
            for (k, v) in a {
                if RESUME_NEUTRAL.contains(&k.as_str()) {
                    continue;
                }
                let theirs = b.get(k).cloned().unwrap_or(serde_json::Value::Null);
                if *v != theirs {
                    out.push((k.clone(), v.to_string(), theirs.to_string()));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        args: PretrainArgs,
    }

    const BASE: [&str; 9] = [
        "pretrain",
        "--train_path",
        "data",
        "--output_dir",
        "out",
        "--config_name",
        "config.json",
        "--tokenizer_name",
        "tok",
    ];

    fn parse(extra: &[&str]) -> PretrainArgs {
        Flags::try_parse_from(BASE.iter().chain(extra))
            .unwrap()
            .args
    }

    #[test]
    fn defaults_and_hf_style_booleans() {
        let a = parse(&[]);
        assert!(a.model.use_decoder_head && a.model.enable_head_mlm && !a.training.compute.fp16);
        assert_eq!(
            (
                a.training.learning_rate,
                a.training.logging_steps,
                a.training.max_steps
            ),
            (1e-4, 20, -1)
        );
        assert_eq!(
            (a.data.encoder_mask_ratio, a.data.decoder_mask_ratio),
            (0.30, 0.45)
        );
        a.validate().unwrap();
        let b = parse(&[
            "--use_decoder_head",
            "false",
            "--fp16",
            "--overwrite_output_dir",
            "yes",
        ]);
        assert!(
            !b.model.use_decoder_head && b.training.compute.fp16 && b.training.overwrite_output_dir
        );
        let err = b.validate().unwrap_err().to_string();
        assert!(
            err.starts_with("--fp16: ") && err.contains("--device cuda"),
            "{err}"
        );
        let json = b.to_json();
        let flat = &json["training"];
        assert_eq!(
            (&flat["device"], &flat["fp16"], &flat["bf16"]),
            (&"cpu".into(), &true.into(), &false.into())
        );
        let c = parse(&["--max_steps", "-1", "--num_train_epochs", "0"]);
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--max_steps"));
    }

    #[test]
    fn resume_differences_skip_neutral_flags() {
        let saved = parse(&[]).to_json();
        let b = parse(&[
            "--learning_rate",
            "1e-3",
            "--logging_steps",
            "5",
            "--dataloader_num_workers",
            "2",
            "--resume_from_checkpoint",
            "latest",
        ]);
        let d = b.differences(&saved);
        assert_eq!(
            d,
            [(
                "learning_rate".to_string(),
                "0.001".to_string(),
                "0.0001".to_string()
            )]
        );
    }
}
