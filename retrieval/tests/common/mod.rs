//! Shared helpers of the retrieval integration tests: scratch directories and a tiny random BERT
//! saved as an HF directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use bert::{BertConfig, BertModel, Tokenizer};
use tensor::Rng;

/// A fresh empty directory under the system temp dir (`<name>-<pid>`), removed on drop.
#[allow(unused_imports)]
pub use tensor::testing::TempDir as Scratch;

/// The 128-token test vocabulary (`[PAD] [UNK] [CLS] [SEP] [MASK] w0 .. w122`).
pub fn tiny_tokenizer() -> Tokenizer {
    let dir = tensor::testing::fixtures_dir().join("bert/tiny");
    Tokenizer::from_dir(dir).unwrap()
}

/// A random BERT (2 layers, hidden 32, 2 heads, 32 positions, with a pooler) saved with the test
/// vocabulary into `dir`; returns `dir`.
pub fn tiny_model_dir(dir: &Path, dropout: f64) -> PathBuf {
    let tok = tiny_tokenizer();
    let config = BertConfig {
        vocab_size: tok.vocab_size(),
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 64,
        max_position_embeddings: 32,
        hidden_dropout_prob: dropout,
        attention_probs_dropout_prob: dropout,
        ..BertConfig::default()
    };
    let model = BertModel::new(&config, true, &mut Rng::new(3)).unwrap();
    model.save_pretrained(dir, Some(&tok)).unwrap();
    dir.to_path_buf()
}
