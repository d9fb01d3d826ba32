//! Shared timing helpers for the benchmark programs in `src/bin/`. Every program prints JSON lines
//! `{"op", "shape", "ms"}` so `bench/compare.py` can join them with the reference's output.

use std::time::{Duration, Instant};

/// Median milliseconds of `f` after 3 warm-up calls, over at least 5 calls and `min_time`.
pub fn time_ms(min_time: Duration, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < 5 || start.elapsed() < min_time {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// One JSON result line.
pub fn report(op: &str, shape: &str, ms: f64) {
    report_json(serde_json::json!({ "op": op, "shape": shape, "ms": ms }));
}

/// One JSON result line with extra fields (it must have at least "op", "shape" and "ms").
pub fn report_json(line: serde_json::Value) {
    println!("{line}");
}

/// An MLM batch for BERT-base benchmarks: `[batch, seq]` token ids in [1000, 30000), all
/// attended, and labels on 30% of the positions (-100 elsewhere), drawn from `rng`.
pub fn mlm_batch(
    rng: &mut tensor::Rng,
    batch: usize,
    seq: usize,
) -> tensor::Result<(tensor::Tensor, tensor::Tensor, tensor::Tensor)> {
    use tensor::Tensor;
    let n = batch * seq;
    let ids: Vec<i64> = (0..n).map(|_| 1000 + rng.below(29_000) as i64).collect();
    let labels: Vec<i64> = ids
        .iter()
        .map(|&id| if rng.below(10) < 3 { id } else { -100 })
        .collect();
    Ok((
        Tensor::from_vec(ids, &[batch, seq])?,
        Tensor::from_vec(vec![1i64; n], &[batch, seq])?,
        Tensor::from_vec(labels, &[batch, seq])?,
    ))
}
