//! `cotmae pretrain` as several processes on localhost, meeting through rank 0's TCP store:
//! - `--nproc_per_node 2`, and two processes started by the test with torchrun's environment
//!   variables, log the same bits, and match one process with the whole batch (within 1e-6);
//! - a rank killed mid-run makes the other exit non-zero within 60 s, naming it;
//! - kill -9 of every rank, then `--resume_from_checkpoint latest`: the logged losses are
//!   bit-identical to the uninterrupted run's.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

fn flags(batch: usize, extra: &[&str]) -> Vec<String> {
    flags_for(6, batch, extra)
}

fn flags_for(max_steps: u64, batch: usize, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--max_steps",
        &max_steps.to_string(),
        "--per_device_train_batch_size",
        &batch.to_string(),
        "--learning_rate",
        "5e-3",
        "--logging_steps",
        "1",
        "--save_steps",
        if max_steps > 6 { "1000000" } else { "2" },
        "--seed",
        "5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// Rank `rank` of `world` started with torchrun's environment.
fn rank_process(fx: &Fixture, out: &Path, args: &[String], rank: usize, port: u16) -> Child {
    Command::new(BIN)
        .arg("pretrain")
        .args(fx.args(out, &args.iter().map(String::as_str).collect::<Vec<_>>()))
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", "2")
        .env("LOCAL_RANK", rank.to_string())
        .env("LOCAL_WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` to exit within `limit`; its status and stderr.
fn finish(mut child: Child, limit: Duration) -> (bool, String) {
    let lines = stderr_lines(&mut child);
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            std::thread::sleep(Duration::from_millis(100));
            let text: Vec<String> = lines.try_iter().collect();
            return (status.success(), text.join("\n"));
        }
        assert!(start.elapsed() < limit, "no exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn loss_bits(out: &Path) -> Vec<Vec<(String, u64)>> {
    log_with(out, "loss").iter().map(step_bits).collect()
}

#[test]
fn two_processes_by_nproc_per_node_and_by_torchrun_env_agree() {
    // Dropout on: each rank draws its rows of the global batch's masks.
    let fx = fixture("launch", 30);
    let one = fx.dir.0.join("one");
    let status = Command::new(BIN)
        .arg("pretrain")
        .args(fx.args(
            &one,
            &flags(4, &[]).iter().map(String::as_str).collect::<Vec<_>>(),
        ))
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());

    let nproc = fx.dir.0.join("nproc");
    let port = free_port().to_string();
    let args = flags(2, &["--nproc_per_node", "2", "--master_port", &port]);
    let out = Command::new(BIN)
        .arg("pretrain")
        .args(fx.args(&nproc, &args.iter().map(String::as_str).collect::<Vec<_>>()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let env = fx.dir.0.join("env");
    let port = free_port();
    let ranks: Vec<Child> = (0..2)
        .map(|r| rank_process(&fx, &env, &flags(2, &[]), r, port))
        .collect();
    for c in ranks {
        let (ok, err) = finish(c, Duration::from_secs(300));
        assert!(ok, "{err}");
    }
    assert_eq!(
        loss_bits(&nproc),
        loss_bits(&env),
        "threads of the same sums"
    );
    let (a, b) = (log_with(&nproc, "loss"), log_with(&one, "loss"));
    assert_eq!(a.len(), 6);
    for (x, y) in a.iter().zip(&b) {
        for k in ["loss", "grad_norm"] {
            let (u, v) = (x[k].as_f64().unwrap(), y[k].as_f64().unwrap());
            assert!((u - v).abs() <= 1e-6 * v.abs(), "{k}: {u} vs {v}");
        }
    }
    assert_eq!(checkpoints(&nproc), checkpoints(&one));
}

#[test]
fn a_killed_rank_stops_the_other_naming_it() {
    let fx = fixture("launch-kill", 30);
    for victim in [1, 0] {
        let out = fx.dir.0.join(format!("kill-{victim}"));
        let port = free_port();
        let args = flags_for(1_000_000, 2, &[]);
        let mut ranks: Vec<Child> = (0..2)
            .map(|r| rank_process(&fx, &out, &args, r, port))
            .collect();
        // Wait until training runs (rank 0 logged a step).
        let start = Instant::now();
        while !out.join("trainer_log.jsonl").is_file()
            || std::fs::read_to_string(out.join("trainer_log.jsonl"))
                .unwrap()
                .is_empty()
        {
            assert!(start.elapsed() < Duration::from_secs(300), "never trained");
            std::thread::sleep(Duration::from_millis(50));
        }
        ranks[victim].kill().unwrap();
        ranks[victim].wait().unwrap();
        let survivor = ranks.remove(1 - victim);
        let (ok, err) = finish(survivor, Duration::from_secs(60));
        assert!(!ok, "the survivor must fail");
        assert!(err.contains(&format!("rank {victim}")), "{err}");
    }
}

#[test]
fn kill_9_of_every_rank_then_resume_is_bit_identical() {
    let fx = fixture("launch-resume", 30);
    let straight = fx.dir.0.join("straight");
    let port = free_port();
    let args = flags(2, &[]);
    for c in (0..2)
        .map(|r| rank_process(&fx, &straight, &args, r, port))
        .collect::<Vec<_>>()
    {
        let (ok, err) = finish(c, Duration::from_secs(300));
        assert!(ok, "{err}");
    }

    let resumed = fx.dir.0.join("resumed");
    let port = free_port();
    let hang = flags(2, &["--debug_hang_after_step", "4"]);
    let mut ranks: Vec<Child> = (0..2)
        .map(|r| rank_process(&fx, &resumed, &hang, r, port))
        .collect();
    let lines = stderr_lines(&mut ranks[0]);
    loop {
        match lines.recv_timeout(Duration::from_secs(300)) {
            Ok(l) if l.contains("debug_hang_after_step: step 4") => break,
            Ok(_) => {}
            Err(e) => panic!("rank 0 never reached step 4: {e}"),
        }
    }
    for c in &mut ranks {
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
    }
    assert_eq!(
        checkpoints(&resumed),
        vec!["checkpoint-2".to_string(), "checkpoint-4".to_string()]
    );
    let port = free_port();
    let again = flags(2, &["--resume_from_checkpoint", "latest"]);
    for c in (0..2)
        .map(|r| rank_process(&fx, &resumed, &again, r, port))
        .collect::<Vec<_>>()
    {
        let (ok, err) = finish(c, Duration::from_secs(300));
        assert!(ok, "{err}");
    }
    let (a, b) = (loss_bits(&straight), loss_bits(&resumed));
    assert_eq!(a.len(), 6);
    assert_eq!(a, b);
}
