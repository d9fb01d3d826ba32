//! `nn`: Module, layers, AdamW, schedules, safetensors checkpoints (issue: HF-compatible BERT).
//!
//! Modules: [`Param`] (a shared trainable tensor), [`Module`] (parameters listed with HF's dotted
//! names in state_dict order), [`Ctx`] (train/eval, the dropout RNG, and [`BatchRows`]: dropout
//! keyed by batch row for a batch computed in parts), and the layers
//! [`Linear`], [`Embedding`], [`LayerNorm`], [`Dropout`].
//!
//! Optimisation, in the order a training step uses it (all on plain `tensor::Tensor`s, f32):
//! [`loss_scale`] (fp16 dynamic loss scaling: unscale the gradients, detect inf/NaN, decide whether
//! the step is taken), [`clip`] (global L2-norm gradient clipping), [`schedule`] (the learning rate
//! of the step: linear warmup then linear decay, as HF `get_linear_schedule_with_warmup`) and
//! [`optim`] (AdamW, in the HF 4.17 and the torch variants, with HF's no-decay parameter groups and
//! a safetensors state file for bit-exact resume). [`Precision`] is the run's f32 / fp16 / bf16
//! choice (autocast dtype and loss scaler); [`module::to_device`] moves a model to a device.
//!
//! Data parallelism: [`comm`] (the [`Communicator`] trait: one process, CPU threads, or NCCL
//! across GPUs with the `cuda` feature), [`data_parallel`] (averaging gradients across replicas,
//! in buckets, and the recipe for a data-parallel training step), [`overlap`] (that average
//! overlapped with the backward pass) and [`step_grads`] (a step's gradient sums and their
//! average, as the trainers take them); [`all_gather()`] is the differentiable all-gather of rows
//! across replicas (cross-device negatives).

pub mod all_gather;
pub mod clip;
pub mod comm;
pub mod data_parallel;
mod fused_half;
pub mod layers;
pub mod loss_scale;
pub mod module;
pub mod optim;
pub mod overlap;
mod param;
pub mod precision;
pub mod rows;
pub mod schedule;
pub mod step_grads;

pub use all_gather::all_gather;
pub use clip::{clip_grad_norm, clip_grad_norm_deferred, total_norm};
pub use comm::{Communicator, SingleProcess, ThreadGroup};
pub use data_parallel::{all_reduce_grads, shard_range};
pub use fused_half::fused_half;
pub use layers::{
    autocast_half, half_copy_product, half_input, Dropout, Embedding, LayerNorm, Linear,
};
pub use loss_scale::{LossScaler, LossScalerConfig, StepDecision};
pub use module::{join, to_device, Ctx, Module};
pub use optim::{step_params, AdamW, AdamWConfig, AdamWVariant, ParamUpdate};
pub use overlap::{backward_and_all_reduce, NotOverlapped, OverlapStats};
pub use param::Param;
pub use precision::{unscale_and_clip, Precision};
pub use rows::BatchRows;
pub use schedule::{warmup_steps, LrSchedule, ScheduleKind};
pub use step_grads::{CommTotals, StepGrads};
