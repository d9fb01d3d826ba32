//! `--device` / `--fp16` / `--bf16` on every subcommand that computes: each rejects a bad
//! combination with the message of `cotmae::device` before it reads or writes anything (the
//! paths given here do not exist). Parsing and the error texts themselves are unit-tested in
//! `cotmae/src/device.rs`; the GPU runs are in `tests/pretrain.rs` and the retrieval crate's tests.

use cotmae::cli::run_args;

/// Every computing subcommand with the arguments it needs to get past clap.
fn commands() -> Vec<Vec<&'static str>> {
    vec![
        vec![
            "pretrain",
            "--train_path",
            "/nonexistent/data",
            "--output_dir",
            "/nonexistent/out",
            "--config_name",
            "/nonexistent/config.json",
            "--tokenizer_name",
            "/nonexistent/tok",
        ],
        vec![
            "train-retriever",
            "--model_name_or_path",
            "/nonexistent/model",
            "--output_dir",
            "/nonexistent/out",
            "--train_dir",
            "/nonexistent/train",
        ],
        vec![
            "encode",
            "--model",
            "/nonexistent/model",
            "--input",
            "/nonexistent/in.json",
            "--output",
            "/nonexistent/out",
        ],
        vec![
            "pipeline",
            "--model_name_or_path",
            "/nonexistent/model",
            "--corpus",
            "/nonexistent/c.tsv",
            "--train_queries",
            "/nonexistent/q.tsv",
            "--train_qrels",
            "/nonexistent/qrels",
            "--bm25_negatives",
            "/nonexistent/neg.tsv",
            "--dev_queries",
            "/nonexistent/dq.tsv",
            "--dev_qrels",
            "/nonexistent/dqrels",
            "--output_dir",
            "/nonexistent/out",
        ],
        vec!["demo", "--output_dir", "/nonexistent/demo"],
    ]
}

fn error(cmd: &[&str], extra: &[&str]) -> String {
    let args: Vec<String> = cmd.iter().chain(extra).map(|s| s.to_string()).collect();
    run_args(&args).expect_err("should fail").to_string()
}

#[test]
fn every_computing_subcommand_checks_its_device_flags_first() {
    for cmd in commands() {
        let name = cmd[0];
        assert_eq!(
            error(&cmd, &["--device", "tpu"]),
            "--device tpu: expected cpu, cuda or cuda:N",
            "{name}"
        );
        let e = error(&cmd, &["--fp16"]);
        assert!(
            e.starts_with("--fp16: mixed precision") && e.contains("--device cuda"),
            "{name}: {e}"
        );
        // --bf16 is accepted on the CPU: the command gets past its flags to its inputs (demo
        // has none that could fail, so it would run: its flags are checked in device.rs).
        // Its paths are moved under a temp dir, as a command may create its output dir first.
        if name != "demo" {
            let tmp = std::env::temp_dir().join(format!("device-bf16-{}", std::process::id()));
            let root = tmp.to_string_lossy().to_string();
            let moved: Vec<String> = cmd
                .iter()
                .map(|a| a.replace("/nonexistent", &root))
                .collect();
            let moved: Vec<&str> = moved.iter().map(String::as_str).collect();
            let e = error(&moved, &["--bf16", "true", "--device", "cpu"]);
            let _ = std::fs::remove_dir_all(&tmp);
            assert!(!e.contains("--bf16"), "{name}: {e}");
        }
        #[cfg(not(feature = "cuda"))]
        assert_eq!(
            error(&cmd, &["--device", "cuda:1", "--bf16"]),
            "--device cuda:1: this build has no CUDA backend; rebuild with `cargo build \
             --release --features cuda`",
            "{name}"
        );
        #[cfg(feature = "cuda")]
        {
            let e = error(&cmd, &["--device", "cuda", "--fp16", "--bf16"]);
            assert_eq!(
                e, "--fp16 and --bf16 exclude each other; give at most one",
                "{name}"
            );
        }
        assert!(!std::path::Path::new("/nonexistent").exists());
    }
    // search takes the device alone.
    let search = [
        "search",
        "--queries",
        "/nonexistent/q",
        "--corpus",
        "/nonexistent/c",
        "--output",
        "/nonexistent/run.tsv",
    ];
    assert_eq!(
        error(&search, &["--device", "cuda:x"]),
        "--device cuda:x: expected a GPU ordinal after `cuda:` (cuda:0, cuda:1, ...)"
    );
    let e = error(&search, &["--fp16"]);
    assert!(e.contains("--fp16"), "clap rejects the flag: {e}");
}
