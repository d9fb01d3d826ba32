//! The CoT-MAE pretraining trainer (`cotmae pretrain`): the HF Trainer's loop and bookkeeping
//! (REFERENCE §4) around [`BertForCotMAE`](crate::BertForCotMAE), on the CPU or a GPU
//! (`--device`), in f32 or mixed precision (`--fp16` with loss scaling, `--bf16`).
//!
//! Reading order: [`args`] (the flags), [`data`] (`--train_path` as documents), [`sampler`]
//! (a seeded permutation per epoch), [`loader`] (batches, their position, prefetching),
//! [`step`] (one optimizer step: accumulation, clipping, AdamW, schedule), [`state`] (what a
//! checkpoint records), [`checkpoint`] (atomic checkpoint directories, rotation, resume),
//! [`tensorboard`] (event files by hand), [`log`] (terminal, JSON lines, TensorBoard), and
//! [`run`] (a whole run: [`pretrain`]).
//!
//! Randomness: one seed (`--seed`) and disjoint Philox streams of it ([`streams`]): model
//! initialisation, dropout, the collator, the sampler. Each stream's position is saved with a
//! checkpoint, so a resumed run draws exactly what the uninterrupted one would have.

pub mod args;
pub mod checkpoint;
pub mod data;
pub mod loader;
pub mod log;
pub mod run;
pub mod sampler;
pub mod state;
pub mod step;
pub mod tensorboard;

pub use args::{DataTrainingArguments, ModelArguments, PretrainArgs, TrainingArguments};
pub use data::TrainData;
pub use run::{pretrain, pretrain_on, TrainSummary};
pub use state::TrainerState;

/// The counter-block offsets where each random stream of a run starts under `--seed` (2^56
/// blocks apart: no stream can run into the next).
pub mod streams {
    /// Model initialisation (the random encoder of `--config_name`, the decoder head).
    pub const INIT: u64 = 0;
    /// Dropout (`Ctx::rng`).
    pub const DROPOUT: u64 = 1 << 56;
    /// The collator: spans, kinds, crops, masks.
    pub const COLLATOR: u64 = 2 << 56;
    /// The sampler: epoch `e`'s permutation starts at `SAMPLER + e * 2^32`.
    pub const SAMPLER: u64 = 3 << 56;
}
