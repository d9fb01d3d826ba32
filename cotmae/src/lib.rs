//! `cotmae`: span preparation, whole-word-mask collator, BertForCotMAE and the pretraining trainer.
//!
//! Data side, in pipeline order:
//! - [`sentences`]: a rule-based sentence splitter (stands in for NLTK punkt);
//! - [`spans`]: sentences -> spans -> anchor / random_sampled / nearby / overlap (REFERENCE §1);
//! - [`mod@prepare`]: a streaming, parallel, deterministic `prepare` over an MS MARCO TSV or a
//!   one-document-a-line text file, writing `data.jsonl` and the token store;
//! - [`token_store`]: the memory-mapped u16 token store training reads;
//! - [`collator`]: the whole-word-mask CoT-MAE collator (REFERENCE §2);
//! - [`synthetic`]: a deterministic synthetic corpus for tests and demos.
//!
//! [`device`]: the `--device` / `--fp16` / `--bf16` flags every computing subcommand shares.
//! [`flops`]: the FLOPs of one pretraining step, counted from shapes. [`ablation`]: `cotmae
//! ablation`, arms x seeds with paired statistics and a report.
//!
//! Randomness: everything here draws from `tensor::Rng` (Philox, counter based) through the small
//! helpers below, so a stream is a pure function of (seed, counter) and can be saved and resumed.

pub mod ablation;
pub mod cli;
pub mod collator;
pub mod demo;
pub mod device;
pub mod error;
pub mod flops;
pub mod launch;
pub mod model;
pub mod prepare;
pub mod sentences;
pub mod spans;
pub mod synthetic;
pub mod token_store;
pub mod trainer;

pub use collator::{
    CollatorConfig, CollatorState, CotMaeBatch, CotMaeCollator, DataType, SpanSource,
};
pub use error::{Error, Result};
pub use model::{BertForCotMAE, CotMaeModelArgs, CotMaeOutput};
pub use prepare::{prepare, InputFormat, PrepareOptions, PrepareReport, SkippedLine};
pub use sentences::split_sentences;
pub use spans::{
    build_spans, contextual_spans, document_spans, DocumentSpans, Span, SpanKind, SpanSet,
};
pub use synthetic::{generate, generate_documents, SyntheticDoc, Topic};
pub use token_store::{TokenStore, TokenStoreWriter};

/// Small draws on top of `tensor::Rng` (one Philox block per draw).
pub(crate) mod draw {
    use tensor::Rng;

    /// A uniform float in [0, 1) with 53 random bits.
    pub fn unit(rng: &mut Rng) -> f64 {
        rng.below(1 << 53) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform integer in `lo..=hi` (Python's `random.randint(lo, hi)`); `lo` when `hi < lo`.
    pub fn range_inclusive(rng: &mut Rng, lo: usize, hi: usize) -> usize {
        if hi <= lo {
            return lo;
        }
        lo + rng.below((hi - lo + 1) as u64) as usize
    }

    /// A uniform index in `0..n` (`n > 0`).
    pub fn index(rng: &mut Rng, n: usize) -> usize {
        rng.below(n as u64) as usize
    }

    /// The generator of item `index` of a stream seeded with `seed`: item `index` owns the
    /// counter blocks `index * 2^32 ..`, so items draw disjoint numbers and an item's draws do
    /// not depend on which thread handles it or in which order.
    pub fn item_rng(seed: u64, index: u64) -> Rng {
        Rng {
            seed,
            offset: index << 32,
        }
    }
}
