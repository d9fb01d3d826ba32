//! BERT-base on the CPU: encode (forward, no graph) and one full MLM training step (forward with
//! 30% of positions labelled, backward, AdamW), batch 8 x 128 tokens; and, as separate
//! processes, saving a bert-base-sized checkpoint and loading it (time and peak RSS).
//! The PyTorch twin is `bench/bert_torch.py`; `bench/run_bert.sh` runs both.
//!
//! usage: bert                 timings, JSON lines (BENCH_ONLY=NAME: only the rows whose name
//!                             contains NAME, e.g. `encode_bf16` under `perf record`)
//!        bert save DIR        write a random bert-base BertForMaskedLM to DIR
//!        bert load DIR        load DIR as a BertModel; JSON line with ms and peak RSS

use autograd::no_grad;
use bench::{report, time_ms};
use bert::{BertConfig, BertForMaskedLM, BertModel};
use nn::{step_params, AdamW, AdamWConfig, AdamWVariant, Ctx, Module};
use std::time::{Duration, Instant};
use tensor::{DType, Result, Rng};

const BATCH: usize = 8;
const SEQ: usize = 128;

/// Peak resident set size of this process in MiB (VmHWM).
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    kb / 1024.0
}

fn timings() -> Result<()> {
    let min = Duration::from_secs(3);
    let shape = format!("[{BATCH},{SEQ}]");
    let rng = &mut Rng::new(0);
    let model = BertForMaskedLM::new(&BertConfig::default(), rng)?;
    let (ids, mask, labels) = bench::mlm_batch(rng, BATCH, SEQ)?;

    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wanted = |row: &str| row.contains(&only);
    // f32, then the same under bf16 autocast (rows suffixed `_bf16`, as bench/bert_torch.py's).
    for (cast, suffix) in [(None, ""), (Some(DType::BF16), "_bf16")] {
        if !wanted(&format!("bert_encode{suffix}")) {
            continue;
        }
        let encode = || -> Result<()> {
            no_grad(|| {
                autograd::autocast(cast, || {
                    model
                        .bert
                        .forward(&ids, Some(&mask), None, &mut Ctx::eval())
                })
            })?;
            Ok(())
        };
        encode()?;
        let ms = time_ms(min, || encode().expect("encode"));
        report(&format!("bert_encode{suffix}"), &shape, ms);
        eprintln!(
            "bert_encode{suffix}: {:.1} sequences/s",
            BATCH as f64 / ms * 1e3
        );
        // With COTMAE_PROFILE=1, the time per op of everything so far.
        if !tensor::profiler::totals().is_empty() {
            eprintln!("{}", tensor::profiler::report());
            tensor::profiler::reset();
        }
    }

    drop(model);

    let cfg = AdamWConfig {
        lr: 1e-4,
        weight_decay: 0.01,
        variant: AdamWVariant::Torch,
        ..Default::default()
    };
    for (cast, suffix) in [(None, ""), (Some(DType::BF16), "_bf16")] {
        if !wanted(&format!("bert_mlm_train_step{suffix}")) {
            continue;
        }
        // Each precision trains a fresh copy of the same initial model (same seed, same batch),
        // so the first losses compare: the bf16 row once started from the weights the f32 row's
        // timed steps had already trained on this batch, and so logged a far lower loss.
        let model = BertForMaskedLM::new(&BertConfig::default(), &mut Rng::new(0))?;
        let params = model.named_params();
        let mut opt = AdamW::new(cfg.clone())?;
        let mut ctx = Ctx::train(1);
        let mut step = || -> Result<f32> {
            let out = autograd::autocast(cast, || {
                model.forward(&ids, Some(&mask), None, &labels, &mut ctx)
            })?;
            let loss = out.loss.value().to_scalar::<f32>()?;
            let grads = out.loss.backward()?;
            drop(out); // release the graph so the optimizer writes parameters in place
            step_params(&mut opt, 1e-4, &params, &grads)?;
            Ok(loss)
        };
        let first = step()?;
        let ms = time_ms(min, || {
            step().expect("train step");
        });
        report(&format!("bert_mlm_train_step{suffix}"), &shape, ms);
        eprintln!("bert_mlm_train_step{suffix}: first loss {first:.3}");
        if !tensor::profiler::totals().is_empty() {
            eprintln!("{}", tensor::profiler::report());
            tensor::profiler::reset();
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    tensor::heap::keep_freed_memory(); // as the cotmae binary runs
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => timings(),
        [cmd, dir] if cmd == "save" => {
            let model = BertForMaskedLM::new(&BertConfig::default(), &mut Rng::new(0))?;
            model
                .save_pretrained(dir, None)
                .map_err(|e| tensor::Error::op("save", e.to_string()))
        }
        [cmd, dir] if cmd == "load" => {
            let t = Instant::now();
            let (model, _report) = BertModel::from_pretrained(dir, true)
                .map_err(|e| tensor::Error::op("load", e.to_string()))?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let mapped = model
                .named_params()
                .iter()
                .filter(|(_, p)| p.tensor().is_mapped())
                .count();
            println!(
                "{}",
                serde_json::json!({"op": "bert_load", "shape": "bert-base", "ms": ms,
                    "peak_rss_mib": peak_rss_mib(), "params_mapped": mapped,
                    "params": model.named_params().len()})
            );
            Ok(())
        }
        _ => Err(tensor::Error::op(
            "bert",
            "usage: bert | bert save DIR | bert load DIR",
        )),
    }
}
