//! Shared helpers of the retrieval integration tests: scratch directories and a tiny random BERT
//! saved as an HF directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use bert::{BertConfig, BertModel, Tokenizer};
use retrieval::{JsonlWriter, TrainExample};
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
    tiny_model_dir_init(dir, dropout, BertConfig::default().initializer_range)
}

/// As [`tiny_model_dir`], the weights drawn with standard deviation `initializer_range`.
pub fn tiny_model_dir_init(dir: &Path, dropout: f64, initializer_range: f64) -> PathBuf {
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
        initializer_range,
        ..BertConfig::default()
    };
    let model = BertModel::new(&config, true, &mut Rng::new(3)).unwrap();
    model.save_pretrained(dir, Some(&tok)).unwrap();
    dir.to_path_buf()
}

pub const TOPICS: u32 = 10;
pub const WORDS_PER_TOPIC: u32 = 4;
pub const FIRST_WORD: u32 = 5;

/// `n` random words of topic `t`.
pub fn words(rng: &mut Rng, t: u32, n: usize) -> Vec<u32> {
    (0..n)
        .map(|_| FIRST_WORD + t * WORDS_PER_TOPIC + rng.below(WORDS_PER_TOPIC as u64) as u32)
        .collect()
}

/// A random tiny BERT and `n` training examples: a query and its positives share a topic,
/// negatives come from other topics.
pub fn setup(dir: &Path, n: usize, dropout: f64) -> (PathBuf, PathBuf) {
    let model_dir = tiny_model_dir(&dir.join("init"), dropout);
    let mut rng = Rng::new(9);
    let train = dir.join("train.jsonl");
    let mut w = JsonlWriter::create(&train).unwrap();
    for i in 0..n {
        let t = i as u32 % TOPICS;
        let other = |rng: &mut Rng| (t + 1 + rng.below(TOPICS as u64 - 1) as u32) % TOPICS;
        let negatives = (0..4)
            .map(|_| {
                let o = other(&mut rng);
                words(&mut rng, o, 10)
            })
            .collect();
        w.write(&TrainExample {
            query: words(&mut rng, t, 4),
            positives: vec![words(&mut rng, t, 10), words(&mut rng, t, 7)],
            negatives,
        })
        .unwrap();
    }
    w.finish().unwrap();
    (model_dir, train)
}
