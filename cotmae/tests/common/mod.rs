//! Shared helpers of the `cotmae pretrain` integration tests: a prepared synthetic corpus with a
//! cut-down vocabulary and a tiny BERT config, the flags that train on it, and log readers.
#![allow(dead_code)]

pub mod retriever;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::mpsc;

use bert::Tokenizer;
use clap::Parser;
use cotmae::cli::{Cli, Command as Sub};
use cotmae::synthetic::generate_documents;
use cotmae::{prepare, PrepareOptions};
use serde_json::Value;

use tensor::testing::TempDir;

pub fn temp_dir(name: &str) -> TempDir {
    TempDir::new(&format!("cotmae-pretrain-{name}"))
}

/// A prepared corpus, its tokenizer directory and a tiny BERT config.
pub struct Fixture {
    pub dir: TempDir,
    pub data: PathBuf,
    pub tok: PathBuf,
    pub config: PathBuf,
}

pub const SPECIALS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

pub fn fixture(name: &str, n_docs: usize) -> Fixture {
    let dir = temp_dir(name);
    let full = Tokenizer::from_vocab_file(
        tensor::testing::fixtures_dir().join("tokenizer/vocab.txt"),
        true,
    )
    .unwrap();
    let docs = generate_documents(n_docs, 6..=14, 11);
    let corpus = dir.0.join("corpus.txt");
    cotmae::synthetic::write_plain_text(&corpus, &docs).unwrap();
    let used: BTreeSet<String> = docs.iter().flat_map(|d| full.tokenize(&d.text())).collect();
    let vocab: Vec<&str> = SPECIALS
        .iter()
        .copied()
        .chain(
            used.iter()
                .map(String::as_str)
                .filter(|t| !SPECIALS.contains(t)),
        )
        .collect();
    let tok = dir.0.join("tok");
    std::fs::create_dir_all(&tok).unwrap();
    std::fs::write(tok.join("vocab.txt"), vocab.join("\n") + "\n").unwrap();
    let small = Tokenizer::from_dir(&tok).unwrap();
    for d in docs.iter().take(5) {
        let a: Vec<String> = full.tokenize(&d.text());
        assert_eq!(
            small.tokenize(&d.text()),
            a,
            "the cut vocabulary splits words alike"
        );
    }
    let data = dir.0.join("data");
    let opts = PrepareOptions {
        maxlen: 24,
        progress: false,
        ..PrepareOptions::default()
    };
    prepare(&corpus, &data, &small, opts).unwrap();
    let config = dir.0.join("config.json");
    let json = serde_json::json!({
        "vocab_size": vocab.len(),
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 40,
    });
    std::fs::write(&config, json.to_string()).unwrap();
    Fixture {
        dir,
        data,
        tok,
        config,
    }
}

impl Fixture {
    /// `pretrain` flags for a random init from the fixture's config, writing to `out`.
    pub fn args(&self, out: &Path, extra: &[&str]) -> Vec<String> {
        let p = |x: &Path| x.display().to_string();
        let mut v: Vec<String> = [
            "--config_name",
            &p(&self.config),
            "--tokenizer_name",
            &p(&self.tok),
            "--train_path",
            &p(&self.data),
            "--output_dir",
            &p(out),
            "--max_seq_length",
            "32",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }
}

/// Replaces the value of `flag` in `args`.
pub fn set(args: &mut [String], flag: &str, value: &str) {
    let at = args.iter().position(|s| s == flag).unwrap();
    args[at + 1] = value.to_string();
}

/// Runs `cotmae pretrain <args>` in this process.
pub fn pretrain(args: &[String]) -> Result<(), String> {
    let cli = Cli::try_parse_from(
        ["cotmae", "pretrain"]
            .into_iter()
            .map(String::from)
            .chain(args.iter().cloned()),
    )
    .map_err(|e| e.to_string())?;
    match cli.command {
        Sub::Pretrain(a) => cotmae::trainer::pretrain(&a)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        _ => unreachable!(),
    }
}

/// The JSON lines of a run's log that carry `key`.
pub fn log_with(out: &Path, key: &str) -> Vec<Value> {
    std::fs::read_to_string(out.join("trainer_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.get(key).is_some())
        .collect()
}

pub fn steps(out: &Path) -> Vec<u64> {
    log_with(out, "loss")
        .iter()
        .map(|v| v["step"].as_u64().unwrap())
        .collect()
}

pub fn checkpoints(out: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(out)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    names.sort();
    names
}

/// Every logged number of a step, as f64 bits, for a bit-for-bit comparison.
pub fn step_bits(v: &Value) -> Vec<(String, u64)> {
    [
        "step",
        "loss",
        "encoder_mlm_loss",
        "head_mlm_loss",
        "learning_rate",
        "grad_norm",
        "epoch",
    ]
    .iter()
    .map(|k| {
        let x = v[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} missing in {v}"));
        (k.to_string(), x.to_bits())
    })
    .collect()
}

pub const BIN: &str = env!("CARGO_BIN_EXE_cotmae");

/// The lines of `child`'s stderr, as they come.
pub fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
