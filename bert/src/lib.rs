//! `bert`: BertConfig, WordPiece tokenizer, BertModel and BertForMaskedLM (issue: HF-compatible BERT).
//!
//! Reading order: [`config`] (HF `config.json`), [`embeddings`] (word + position + token type,
//! LayerNorm, dropout), [`attention`] (multi-head self-attention with the additive padding mask),
//! [`layer`] (attention + feed-forward block), [`encoder`] (the stack), [`model`] (`BertModel`
//! with the pooler), [`mlm`] (the tied MLM head and `BertForMaskedLM`, whose loss runs the head
//! only at labelled positions), [`init`] (HF's weight initialisation), [`checkpoint`] (loading and saving HF model directories).
//! Every module implements `nn::Module` with HF's parameter names in HF's order.

pub mod attention;
pub mod checkpoint;
pub mod config;
pub mod embeddings;
pub mod encoder;
pub mod error;
pub mod init;
pub mod layer;
pub mod mlm;
pub mod model;
pub mod tokenizer;

pub use attention::{extended_attention_mask, BertAttention, BertSelfAttention, BertSelfOutput};
pub use checkpoint::{is_head_param, load_weights, LoadReport, ALLOW_RANDOM_INIT_FLAG};
pub use config::BertConfig;
pub use embeddings::BertEmbeddings;
pub use encoder::BertEncoder;
pub use error::{BertError, Result};
pub use init::{reinit, Init};
pub use layer::{BertIntermediate, BertLayer, BertOutput};
pub use mlm::{
    BertForMaskedLM, BertLMPredictionHead, BertOnlyMLMHead, BertPredictionHeadTransform,
    MaskedLmOutput, MlmLoss, IGNORE_INDEX,
};
pub use model::{BertModel, BertModelOutput, BertPooler};
pub use tokenizer::{Tokenizer, TokenizerError};
