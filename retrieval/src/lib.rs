//! `retrieval`: Tevatron-style dense retrieval (REFERENCE §5-7).
//!
//! Reading order: [`formats`] (the JSON-lines files every stage exchanges), [`embeddings`] (an
//! encoded corpus or query set on disk), then the stages.

pub mod embeddings;
pub mod error;
pub mod formats;

pub use embeddings::EmbeddingSet;
pub use error::{Error, Result};
pub use formats::{read_jsonl, EncodeItem, JsonlWriter, TrainExample};
