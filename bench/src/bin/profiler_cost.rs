//! What the profiler costs: one BERT-base MLM training step on the CPU (batch 8 x 128, 30% of
//! positions labelled, forward, backward, AdamW), timed with the profiler off and on, the two
//! interleaved in one run (off, on, off, on, ...) so that a busy machine slows both alike.
//! Prints each step's time, the medians and their ratio, then the profile of the last profiled
//! step (the tables docs/PROFILING.md reads).
//!
//!        profiler_cost [PAIRS] [TRACE.json]     (PAIRS default 3; TRACE: the last step's trace)

use autograd::Var;
use bert::{BertConfig, BertForMaskedLM};
use nn::{step_params, AdamW, AdamWConfig, AdamWVariant, Ctx, Module};
use std::time::Instant;
use tensor::profiler::{self, Phase};
use tensor::Rng;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const BATCH: usize = 8;
const SEQ: usize = 128;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let pairs: usize = args
        .next()
        .map_or(3, |a| a.parse().expect("PAIRS: a number"));
    let trace = args.next();
    let rng = &mut Rng::new(0);
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
    let mut step = || -> Result<f64> {
        let t0 = Instant::now();
        let out = profiler::in_phase(Phase::Forward, || {
            model.forward(&ids, Some(&mask), None, &labels, &mut ctx)
        })?;
        let loss: Var = out.loss;
        let grads = loss.backward()?;
        drop(loss);
        step_params(&mut opt, 1e-4, &params, &grads)?;
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    };
    step()?; // warm-up: first-touch allocations, thread pool
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for i in 0..pairs {
        let a = step()?;
        let session = profiler::session(1 << 21);
        let b = step()?;
        let last = i + 1 == pairs;
        if last {
            println!("{}", profiler::report());
            if let Some(path) = &trace {
                profiler::write_chrome_trace(std::path::Path::new(path))?;
                eprintln!("wrote {path}");
            }
        }
        drop(session);
        println!("pair {i}: off {a:.1} ms, on {b:.1} ms");
        off.push(a);
        on.push(b);
    }
    let (moff, mon) = (median(&mut off), median(&mut on));
    println!(
        "bert_mlm_train_step [8,128] cpu: profiler off {moff:.1} ms, on {mon:.1} ms (medians of \
         {pairs}), on/off {:.4}",
        mon / moff
    );
    Ok(())
}
