//! `cotmae train-retriever --config_name --tokenizer_name`: training starts from a random
//! initialisation drawn from `--seed`, written to `<output_dir>/random-init`.
//! - one process: into a fresh output directory without `--overwrite_output_dir` (the folder it
//!   writes first does not count as a previous run), and again with `--resume_from_checkpoint`;
//! - two ranks (`--nproc_per_node 2`): rank 0 alone writes it, the same bytes as one process's,
//!   while the other waits; neither the launcher nor rank 1 finds the directory "not empty".

use std::path::Path;
use std::process::Command;

mod common;
use common::retriever::{args, setup};
use common::BIN;
use cotmae::cli::run_args;
use retrieval::train::{LogEntry, LOG_FILE, RANDOM_INIT_DIR};

fn from_config(dir: &Path) -> [String; 4] {
    let model = dir.join("model");
    [
        "--config_name".into(),
        model.join("config.json").display().to_string(),
        "--tokenizer_name".into(),
        model.display().to_string(),
    ]
}

fn weights(dir: &Path, run: &str) -> Vec<u8> {
    std::fs::read(
        dir.join(run)
            .join(RANDOM_INIT_DIR)
            .join("model.safetensors"),
    )
    .unwrap()
}

fn log(dir: &Path, run: &str) -> Vec<LogEntry> {
    retrieval::read_jsonl(dir.join(run).join(LOG_FILE)).unwrap()
}

#[test]
fn config_name_trains_from_a_random_init_in_one_process_and_in_two() {
    let scratch = tensor::testing::TempDir::new("cotmae-retriever-random-init");
    let dir = scratch.0.as_path();
    setup(dir);
    let model = from_config(dir);
    let model: Vec<&str> = model.iter().map(String::as_str).collect();

    run_args(&args(dir, "one", &model, &[])).unwrap();
    assert_eq!(log(dir, "one").len(), 3);
    let init = weights(dir, "one");

    // A second run into the same directory is refused, and a resume reuses the written init.
    let err = run_args(&args(dir, "one", &model, &[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not empty"), "{err}");
    let resumed = args(dir, "one", &model, &["--resume_from_checkpoint", "latest"]);
    let err = run_args(&resumed).map_err(|e| e.to_string());
    assert!(
        err.as_ref().is_err_and(|e| e.contains("no checkpoint-N")),
        "save_steps 0 writes no checkpoint: {err:?}"
    );
    assert_eq!(weights(dir, "one"), init);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let two = args(
        dir,
        "two",
        &model,
        &["--nproc_per_node", "2", "--master_port", &port],
    );
    let out = Command::new(BIN).args(&two[..]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        weights(dir, "two"),
        init,
        "the same seed draws the same init"
    );
    let (a, b) = (log(dir, "one"), log(dir, "two"));
    assert_eq!(b.len(), 3);
    assert!(a
        .iter()
        .zip(&b)
        .all(|(x, y)| x.loss.is_finite() && y.loss.is_finite()));
}
