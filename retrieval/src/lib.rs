//! `retrieval`: Tevatron-style dense retrieval (REFERENCE §5-7).
//!
//! Reading order: [`formats`] (the JSON-lines files every stage exchanges), [`embeddings`] (an
//! encoded corpus or query set on disk), then the stages: [`tokenize`] (texts to token ids),
//! [`build_train`] (training files with BM25 or mined negatives, over [`collection`], [`qrels`]
//! and [`run`]), [`dense`] (the shared-encoder model, its input batches and loss), [`train_data`]
//! (Tevatron's passage sampling and the training batches), [`mod@train`] (the fine-tuning loop and
//! its checkpoints), [`mod@encode`] (texts to vectors), [`mod@search`] (exact top-k with the
//! running [`topk`]), [`metrics`] (MS MARCO evaluation), [`mod@bm25`] (BM25 negatives for a
//! corpus that ships none). Helpers: [`ids`] (the one rule for an id), [`lines`] (streamed text
//! inputs), [`atomic`] (files renamed into place), [`resume`] (which checkpoint to resume from,
//! the leftovers of killed runs), [`progress`].

pub mod atomic;
pub mod bm25;
pub mod build_train;
pub mod collection;
pub mod dense;
pub mod embeddings;
pub mod encode;
pub mod error;
pub mod formats;
pub mod ids;
pub mod lines;
pub mod metrics;
pub mod progress;
pub mod qrels;
pub mod resume;
pub mod run;
pub mod search;
pub mod tokenize;
pub mod topk;
pub mod train;
pub mod train_data;
pub mod train_step;

pub use build_train::{build_train, BuildTrainOptions, BuildTrainReport, NegativeSource};
pub use dense::{
    contrastive_loss, DenseModel, DenseOutput, PadTo, Pooling, SpecialIds, TokenBatch,
};
pub use embeddings::EmbeddingSet;
pub use encode::{encode, EncodeConfig, EncodeReport};
pub use error::{Error, Result};
pub use formats::{jsonl_inputs, read_jsonl, EncodeItem, JsonlWriter, TrainExample};
pub use metrics::{evaluate, Metrics};
pub use qrels::Qrels;
pub use run::{Run, RunWriter};
pub use search::{search, search_blocks, SearchOptions};
pub use tokenize::{tokenize_corpus, tokenize_queries, TokenizeReport};
pub use topk::{rank_order, Hit, TopK};
pub use train::{latest_checkpoint, train, TrainConfig, TrainReport};
pub use train_data::{sample_passages, TrainDataset};
pub use train_step::{loss_and_grads, GradCacheChunks, MicroBatchBackward, StepOptions};

/// A progress bar of `len` steps with `template`, hidden unless `verbose` and stderr is a
/// terminal.
pub(crate) fn progress_bar(len: u64, verbose: bool, template: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !verbose || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template(template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}
