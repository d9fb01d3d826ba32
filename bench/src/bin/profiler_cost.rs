//! What the profiler costs: one BERT-base MLM training step on the CPU (batch 8 x 128, 30% of
//! positions labelled, forward, backward, AdamW), timed with the profiler off and on, the two
//! interleaved in one run (off, on, off, on, ...) so that a busy machine slows both alike.
//! Prints each step's time, the minimum and median of each side and their ratios (on a shared
//! machine the minimum is the better estimate: other load only ever adds time), then the
//! profile of the last profiled step (the tables docs/PROFILING.md reads), its "% of peak"
//! columns against this machine's attainable peak, measured first: the best GFLOP/s of a
//! 1024 x 1024 x 1024 f32 matmul and the best GB/s of a 6 M-element f32 add (or
//! `COTMAE_PEAK_GFLOPS` / `COTMAE_PEAK_GBPS` when set).
//!
//!        profiler_cost [PAIRS] [TRACE.json]     (PAIRS default 5; TRACE: the last step's trace)

use autograd::Var;
use bert::{BertConfig, BertForMaskedLM};
use nn::{step_params, AdamW, AdamWConfig, AdamWVariant, Ctx, Module};
use std::time::Instant;
use tensor::profiler::{self, Peak, Phase};
use tensor::{DType, Device, Rng, Tensor};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const BATCH: usize = 8;
const SEQ: usize = 128;

/// CPU time of this process (all threads) in milliseconds: less sensitive than wall time to
/// other programs on a shared machine (it still counts a slower core's time).
fn cpu_ms() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec; CLOCK_PROCESS_CPUTIME_ID exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e3 + t.tv_nsec as f64 / 1e6
}

/// (minimum, median) of `v`.
fn min_median(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

/// The best seconds of 3 calls of `f`.
fn best_secs(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// This machine's attainable peak: a large matmul's GFLOP/s and a large add's GB/s (read 2,
/// write 1), unless the environment gives them.
fn measure_peak(rng: &mut Rng) -> Result<Peak> {
    let env = Peak::from_env();
    let n = 1024;
    let a = Tensor::randn(&[n, n], 0.0, 1.0, DType::F32, Device::Cpu, rng)?;
    let gflops = match env.gflops {
        Some(g) => g,
        None => {
            2.0 * (n * n * n) as f64
                / best_secs(|| a.matmul(&a).map(drop).map_err(Into::into))?
                / 1e9
        }
    };
    // 6 M elements (24 MB a tensor, 72 MB moved): beyond the last-level cache, and under
    // glibc's largest mmap threshold (32 MB), so a freed output is reused by the next add
    // instead of faulting in fresh pages (a 128 MB output measured page faults, not DRAM).
    let len = 6 << 20;
    let x = Tensor::ones(&[len], DType::F32, Device::Cpu)?;
    let gbps = match env.gbps {
        Some(g) => g,
        None => {
            3.0 * 4.0 * len as f64 / best_secs(|| x.add(&x).map(drop).map_err(Into::into))? / 1e9
        }
    };
    println!(
        "peak: matmul [{n},{n}]x[{n},{n}] f32 {gflops:.1} GFLOP/s, add [{len}] f32 {gbps:.1} GB/s"
    );
    Ok(Peak {
        gflops: Some(gflops),
        gbps: Some(gbps),
    })
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let pairs: usize = args
        .next()
        .map_or(5, |a| a.parse().expect("PAIRS: a number"));
    let trace = args.next();
    let rng = &mut Rng::new(0);
    let peak = measure_peak(rng)?;
    let model = BertForMaskedLM::new(&BertConfig::default(), rng)?;
    let (ids, mask, labels) = bench::mlm_batch(rng, BATCH, SEQ)?;
    let params = model.named_params();
    let mut opt = AdamW::new(AdamWConfig {
        lr: 1e-4,
        weight_decay: 0.01,
        variant: AdamWVariant::Torch,
        ..Default::default()
    })?;
    let mut ctx = Ctx::train(1);
    // (wall ms, process CPU ms) of one step.
    // ANCHOR: step
    let mut step = || -> Result<(f64, f64)> {
        let (t0, c0) = (Instant::now(), cpu_ms());
        let out = profiler::in_phase(Phase::Forward, || {
            model.forward(&ids, Some(&mask), None, &labels, &mut ctx)
        })?;
        let loss: Var = out.loss;
        let grads = loss.backward()?;
        drop(loss);
        step_params(&mut opt, 1e-4, &params, &grads)?;
        Ok((t0.elapsed().as_secs_f64() * 1e3, cpu_ms() - c0))
    };
    // ANCHOR_END: step
    step()?; // warm-up: first-touch allocations, thread pool
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let (mut off_cpu, mut on_cpu) = (Vec::new(), Vec::new());
    for i in 0..pairs {
        // Alternate which side goes first, so neither always follows the other.
        let mut t = [(0.0, 0.0); 2]; // [off, on]
        let order = if i % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for on in order {
            // ANCHOR: session
            let session = on.then(|| profiler::session(1 << 21));
            t[on as usize] = step()?;
            if on && i + 1 == pairs {
                println!("{}", profiler::report_with(peak));
                if let Some(path) = &trace {
                    profiler::write_chrome_trace(std::path::Path::new(path))?;
                    eprintln!("wrote {path}");
                }
            }
            drop(session);
            // ANCHOR_END: session
        }
        let [a, b] = t;
        println!(
            "pair {i}: off {:.1} ms (cpu {:.1} ms), on {:.1} ms (cpu {:.1} ms)",
            a.0, a.1, b.0, b.1
        );
        off.push(a.0);
        on.push(b.0);
        off_cpu.push(a.1);
        on_cpu.push(b.1);
    }
    for (what, off, on) in [
        ("wall", &mut off, &mut on),
        ("process cpu", &mut off_cpu, &mut on_cpu),
    ] {
        let ((min_off, med_off), (min_on, med_on)) = (min_median(off), min_median(on));
        println!(
            "bert_mlm_train_step [8,128] cpu, {pairs} interleaved pairs, {what} time: profiler \
             off min {min_off:.1} ms / median {med_off:.1} ms, on min {min_on:.1} ms / median \
             {med_on:.1} ms; on/off: min {:.4}, median {:.4}",
            min_on / min_off,
            med_on / med_off
        );
    }
    Ok(())
}
