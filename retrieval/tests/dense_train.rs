//! `train-retriever` end to end on a tiny BERT and synthetic data: the loss goes down, the output
//! is an HF directory that loads back, the log follows the schedule, checkpoints rotate, and a
//! run resumed from a checkpoint ends bit for bit where the uninterrupted run ends.

use std::path::{Path, PathBuf};

use nn::Module;
use retrieval::train::{LogEntry, LOG_FILE, OPTIMIZER_FILE, TRAINER_STATE_FILE};
use retrieval::{latest_checkpoint, train, DenseModel, TrainConfig};

mod common;
use common::{setup, Scratch};

fn config(model: &Path, train: &Path, out: &Path) -> TrainConfig {
    TrainConfig {
        model_name_or_path: model.to_path_buf(),
        output_dir: out.to_path_buf(),
        train_dir: train.to_path_buf(),
        per_device_train_batch_size: 4,
        train_n_passages: 3,
        q_max_len: 8,
        p_max_len: 12,
        learning_rate: 3e-3,
        logging_steps: 1,
        save_steps: 0,
        ..TrainConfig::default()
    }
}

fn mean(xs: &[LogEntry]) -> f64 {
    xs.iter().map(|e| e.loss).sum::<f64>() / xs.len() as f64
}

fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let (m, report) = DenseModel::from_pretrained(dir, false).unwrap();
    assert!(report.is_clean(), "{report}");
    m.encoder
        .named_params()
        .into_iter()
        .map(|(n, p)| (n, p.tensor().to_vec::<f32>().unwrap()))
        .collect()
}

#[test]
fn training_lowers_the_loss_and_writes_an_hf_directory() {
    let s = Scratch::new("train-loss");
    // No dropout: its noise on the untrained [CLS] vectors would dominate the first losses.
    let (model, data) = setup(&s.0, 40, 0.0);
    let out = s.0.join("out");
    let cfg = TrainConfig {
        num_train_epochs: 10.0,
        ..config(&model, &data, &out)
    };
    let report = train(&cfg).unwrap();
    // 40 examples / 4 = 10 steps an epoch, 10 epochs; warmup ceil(0.1 * 100) = 10.
    assert_eq!((report.total_steps, report.global_step), (100, 100));
    assert_eq!(report.warmup_steps, 10);
    let log = &report.log;
    assert_eq!(log.len(), 100);
    assert_eq!(log[0].learning_rate, 0.0);
    assert_eq!(log[5].learning_rate, 3e-3 * 0.5);
    assert_eq!(log[10].learning_rate, 3e-3);
    assert!((log[99].learning_rate - 3e-3 / 90.0).abs() < 1e-15);
    assert!((log[99].epoch - 10.0).abs() < 1e-12);
    let (first, last) = (mean(&log[..10]), mean(&log[90..]));
    eprintln!("loss: first 10 steps {first:.4}, last 10 steps {last:.4}");
    // Chance level is ln(12) = 2.48 (4 queries x 3 passages).
    assert!(
        last < 0.4 * first,
        "loss did not go down: {first} -> {last}"
    );

    // The log file holds the same entries; the output is an HF directory that loads cleanly.
    let text = std::fs::read_to_string(out.join(LOG_FILE)).unwrap();
    let from_file: Vec<LogEntry> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(&from_file, log);
    for f in ["config.json", "model.safetensors", "vocab.txt"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let trained = weights(&out);
    let init = weights(&model);
    for ((n, a), (_, b)) in trained.iter().zip(&init) {
        // The pooler is unused by the loss: saved back unchanged.
        assert_eq!(n.starts_with("pooler."), a == b, "{n}");
    }

    // A second run into the same directory needs overwrite_output_dir.
    let err = train(&cfg).unwrap_err().to_string();
    assert!(err.contains("overwrite_output_dir"), "{err}");
}

#[test]
fn checkpoints_rotate_and_resuming_is_bit_exact() {
    let s = Scratch::new("train-resume");
    // Dropout on: resuming must restore its generator.
    let (model, data) = setup(&s.0, 20, 0.1);
    let out = s.0.join("straight");
    // 5 steps an epoch: checkpoint 8 sits in the middle of epoch 2.
    let cfg = TrainConfig {
        max_steps: Some(12),
        save_steps: 4,
        save_total_limit: Some(2),
        ..config(&model, &data, &out)
    };
    let straight = train(&cfg).unwrap();
    assert_eq!(straight.checkpoints.len(), 3);
    let kept: Vec<bool> = straight.checkpoints.iter().map(|c| c.is_dir()).collect();
    assert_eq!(kept, [false, true, true]);
    let ckpt8 = out.join("checkpoint-8");
    for f in [
        OPTIMIZER_FILE,
        TRAINER_STATE_FILE,
        "model.safetensors",
        "vocab.txt",
    ] {
        assert!(ckpt8.join(f).is_file(), "{f}");
    }
    assert_eq!(
        latest_checkpoint(&out).unwrap(),
        Some(out.join("checkpoint-12"))
    );

    let out2 = s.0.join("resumed");
    let resumed = train(&TrainConfig {
        output_dir: out2.clone(),
        resume_from_checkpoint: Some(ckpt8.clone()),
        ..cfg.clone()
    })
    .unwrap();
    assert_eq!(resumed.global_step, 12);
    assert_eq!(resumed.log, straight.log, "the log (history + new steps)");
    let (a, b) = (weights(&out), weights(&out2));
    for ((n, x), (_, y)) in a.iter().zip(&b) {
        let same = x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "{n} differs after resuming");
    }

    // A checkpoint only resumes the run that wrote it.
    let err = train(&TrainConfig {
        output_dir: s.0.join("other"),
        resume_from_checkpoint: Some(ckpt8),
        seed: 7,
        ..cfg
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(TRAINER_STATE_FILE) && err.contains("seed: 42"),
        "{err}"
    );
}

/// Issue 14, class 4: a run's leftovers (`.tmp-checkpoint-*` of a killed save) are removed at
/// start, and `latest` passes over a newer `checkpoint-N` that is empty or incomplete, naming
/// both it and the one chosen.
#[test]
fn stale_temporaries_are_removed_and_incomplete_checkpoints_skipped() {
    let s = Scratch::new("train-stale");
    let (model, data) = setup(&s.0, 8, 0.0);
    let out = s.0.join("out");
    let cfg = TrainConfig {
        max_steps: Some(4),
        save_steps: 2,
        ..config(&model, &data, &out)
    };
    train(&cfg).unwrap();
    // As if killed after checkpoint 2 and, in later tries, while saving.
    std::fs::remove_dir_all(out.join("checkpoint-4")).unwrap();
    // What kills leave: a half-written save and a checkpoint directory without a state.
    let stale = out.join(".tmp-checkpoint-4-99999");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("model.safetensors"), b"half").unwrap();
    let empty = out.join("checkpoint-9");
    std::fs::create_dir_all(&empty).unwrap();
    let partial = out.join("checkpoint-7");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("model.safetensors"), b"half").unwrap();
    let (chosen, skipped) = retrieval::train::find_latest_checkpoint(&out).unwrap();
    assert_eq!(chosen, Some(out.join("checkpoint-2")));
    let skipped: Vec<&PathBuf> = skipped.iter().map(|(p, _)| p).collect();
    assert_eq!(skipped, [&empty, &partial]);
    assert_eq!(
        latest_checkpoint(&out).unwrap(),
        Some(out.join("checkpoint-2"))
    );
    let resumed = train(&TrainConfig {
        resume_from_checkpoint: latest_checkpoint(&out).unwrap(),
        ..cfg
    })
    .unwrap();
    assert_eq!(resumed.global_step, 4);
    assert!(!stale.exists(), "the stale temporary is removed");
    let left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
