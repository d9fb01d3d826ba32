//! `bert`: BertConfig, WordPiece tokenizer, BertModel and BertForMaskedLM (issue: HF-compatible BERT).

pub mod tokenizer;

pub use tokenizer::{Tokenizer, TokenizerError};
