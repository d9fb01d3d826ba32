//! The CPU op benchmark: the op list of bench/README.md (BERT-base shapes, f32), timed with our
//! kernels. Thread count from RAYON_NUM_THREADS. Run through `bench/run_ops.sh`, which runs the
//! PyTorch twin (`bench/ops_torch.py`) in the same go and prints the ratios.

use bench::{report, time_ms};
use std::time::Duration;
use tensor::{DType, Device, Result, Rng, Tensor};

fn randn(shape: &[usize], rng: &mut Rng) -> Result<Tensor> {
    Tensor::randn(shape, 0.0, 1.0, DType::F32, Device::Cpu, rng)
}

fn shape_str(shapes: &[&[usize]]) -> String {
    let one = |s: &[usize]| {
        format!(
            "[{}]",
            s.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    shapes.iter().map(|s| one(s)).collect::<Vec<_>>().join(", ")
}

fn main() -> Result<()> {
    tensor::heap::keep_freed_memory(); // as the cotmae binary runs
    let min = Duration::from_millis(
        std::env::var("BENCH_MIN_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(500),
    );
    let rng = &mut Rng::new(0);
    let run =
        |op: &str, shapes: &[&[usize]], f: &mut dyn FnMut() -> Result<Tensor>| -> Result<()> {
            f()?; // surface errors before timing
            report(op, &shape_str(shapes), time_ms(min, || drop(f())));
            Ok(())
        };

    for (m, k, n) in [(1024, 768, 3072), (1024, 3072, 768), (1024, 768, 768)] {
        let (a, b) = (randn(&[m, k], rng)?, randn(&[k, n], rng)?);
        run(
            &format!("matmul_{m}x{k}x{n}"),
            &[&[m, k], &[k, n]],
            &mut || a.matmul(&b),
        )?;
    }
    let (q, kt) = (
        randn(&[8, 12, 128, 64], rng)?,
        randn(&[8, 12, 64, 128], rng)?,
    );
    run(
        "matmul_batched_8x12x128x64x128",
        &[q.shape(), kt.shape()],
        &mut || q.matmul(&kt),
    )?;
    let (p, v) = (
        randn(&[8, 12, 128, 128], rng)?,
        randn(&[8, 12, 128, 64], rng)?,
    );
    run(
        "matmul_batched_8x12x128x128x64",
        &[p.shape(), v.shape()],
        &mut || p.matmul(&v),
    )?;

    // Attention softmax: keys 100..127 are padding.
    let scores = randn(&[8, 12, 128, 128], rng)?;
    let mask_row: Vec<f32> = (0..128).map(|j| if j < 100 { 0.0 } else { -1e4 }).collect();
    let mask = Tensor::from_vec(mask_row.repeat(8), &[8, 1, 1, 128])?;
    let sm_shapes: [&[usize]; 2] = [scores.shape(), mask.shape()];
    run("softmax_fwd", &sm_shapes, &mut || {
        scores.softmax_last(Some(&mask), 0.125)
    })?;
    let y = scores.softmax_last(Some(&mask), 0.125)?;
    let dy = randn(y.shape(), rng)?;
    run("softmax_bwd", &sm_shapes, &mut || {
        Tensor::softmax_backward(&y, &dy, 0.125)
    })?;

    let x = randn(&[1024, 768], rng)?;
    let (w, b) = (randn(&[768], rng)?, randn(&[768], rng)?);
    run("layer_norm_fwd", &[x.shape()], &mut || {
        Ok(x.layer_norm(&w, &b, 1e-12)?.0)
    })?;
    let (_, mean, rstd) = x.layer_norm(&w, &b, 1e-12)?;
    let dy = randn(x.shape(), rng)?;
    run("layer_norm_bwd", &[x.shape()], &mut || {
        Ok(Tensor::layer_norm_backward(&x, &w, &mean, &rstd, &dy)?.0)
    })?;

    let h = randn(&[1024, 3072], rng)?;
    run("gelu_fwd", &[h.shape()], &mut || h.gelu())?;
    let dy = randn(h.shape(), rng)?;
    run("gelu_bwd", &[h.shape()], &mut || {
        Tensor::gelu_backward(&h, &dy)
    })?;

    for rows in [307usize, 1024] {
        let logits = randn(&[rows, 30522], rng)?;
        let targets: Vec<i64> = (0..rows).map(|_| rng.below(30522) as i64).collect();
        let targets = Tensor::from_vec(targets, &[rows])?;
        let shape: [&[usize]; 1] = [logits.shape()];
        run(&format!("cross_entropy_fwd_{rows}"), &shape, &mut || {
            Ok(Tensor::cross_entropy(&logits, &targets, -100)?.0)
        })?;
        let (_, lse) = Tensor::cross_entropy(&logits, &targets, -100)?;
        run(&format!("cross_entropy_bwd_{rows}"), &shape, &mut || {
            Tensor::cross_entropy_backward(&logits, &targets, &lse, -100, 1.0)
        })?;
    }
    Ok(())
}
