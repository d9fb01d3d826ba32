//! The matrix products of `cotmae demo`'s tiny BERT (hidden 128, FFN 512, 4 heads of 32, a batch
//! of 16 x 48 tokens = 768 rows) one by one, f32 (`Tensor::matmul` / `matmul_bias`) against the
//! CPU bf16 GEMM (`matmul_bf16` / `matmul_bias_bf16`) on the same f32 operands, through the same
//! views autograd hands them in a training step:
//!
//! - `fwd_*`: x [768, in] W^T + b, W^T a transposed view of the [out, in] weight;
//! - `dx_*`: g [768, out] W (the input gradient, W contiguous [out, in]);
//! - `dw_*`: x^T g (the weight gradient, x^T a transposed view; k = 768 rows);
//! - `attn_*`: attention's batched products on [16, 4, 48, 32] head views of [16, 48, 128]
//!   (q k^T, probs v, and the four of their backward: g k, q^T g, g v^T, probs^T g).
//!
//! Prints one JSON line per product and precision and, on stderr, a table with the bf16 / f32
//! ratio (below 1: bf16 is faster). `RAYON_NUM_THREADS=2` for the demo's `--threads 2`.
//!
//! usage: demo_gemm [FILTER]   (only the products whose name contains FILTER, e.g. `attn`)

use bench::{report, time_ms};
use std::time::Duration;
use tensor::testing::randn;
use tensor::{DType, Result, Tensor};

const ROWS: usize = 16 * 48;
const HEADS: usize = 4;
const HEAD_DIM: usize = 32;
const HIDDEN: usize = HEADS * HEAD_DIM;

/// One product in both precisions: `f32` and `bf16` compute it from the same operands.
struct Row<'a> {
    name: String,
    shape: String,
    flops: f64,
    f32: Box<dyn Fn() -> Result<Tensor> + 'a>,
    bf16: Box<dyn Fn() -> Result<Tensor> + 'a>,
}

fn main() -> Result<()> {
    tensor::heap::keep_freed_memory(); // as the cotmae binary runs
    let linear = [(HIDDEN, HIDDEN), (HIDDEN, 4 * HIDDEN), (4 * HIDDEN, HIDDEN)];
    let mut operands = Vec::new();
    for (i, &(fan_in, fan_out)) in linear.iter().enumerate() {
        let seed = 10 * i as u64;
        let x = randn(&[ROWS, fan_in], 1.0, DType::F32, seed);
        let w = randn(&[fan_out, fan_in], 0.02, DType::F32, seed + 1);
        let b = randn(&[fan_out], 0.02, DType::F32, seed + 2);
        let g = randn(&[ROWS, fan_out], 1.0, DType::F32, seed + 3);
        operands.push((fan_in, fan_out, x, w, b, g));
    }
    // Head views [16, 4, 48, 32] of [16, 48, 128] tensors, as BertSelfAttention makes them.
    let heads = |seed: u64| -> Result<Tensor> {
        randn(&[16, 48, HIDDEN], 1.0, DType::F32, seed)
            .reshape(&[16, 48, HEADS, HEAD_DIM])?
            .transpose(1, 2)
    };
    let (q, k, v, gc) = (heads(50)?, heads(51)?, heads(52)?, heads(53)?);
    let probs = randn(&[16, HEADS, 48, 48], 0.1, DType::F32, 54);
    let gs = randn(&[16, HEADS, 48, 48], 1.0, DType::F32, 55);
    let kt = k.transpose(2, 3)?;
    let (qt, vt, pt) = (
        q.transpose(2, 3)?,
        v.transpose(2, 3)?,
        probs.transpose(2, 3)?,
    );
    let mut rows = Vec::new();
    for (fan_in, fan_out, x, w, b, g) in &operands {
        let flops = 2.0 * (ROWS * fan_in * fan_out) as f64;
        let tag = format!("{fan_in}x{fan_out}");
        rows.push(Row {
            name: format!("fwd_{tag}"),
            shape: format!("[{ROWS},{fan_in}]x[{fan_in},{fan_out}]+b"),
            flops,
            f32: Box::new(move || x.matmul_bias(&w.t()?, b)),
            bf16: Box::new(move || x.matmul_bias_bf16(&w.t()?, b, false)),
        });
        rows.push(Row {
            name: format!("dx_{tag}"),
            shape: format!("[{ROWS},{fan_out}]x[{fan_out},{fan_in}]"),
            flops,
            f32: Box::new(move || g.matmul(w)),
            bf16: Box::new(move || g.matmul_bf16(w)),
        });
        rows.push(Row {
            name: format!("dw_{tag}"),
            shape: format!("[{fan_in},{ROWS}]^Tx[{ROWS},{fan_out}]"),
            flops,
            f32: Box::new(move || x.t()?.matmul(g)),
            bf16: Box::new(move || x.t()?.matmul_bf16(g)),
        });
    }
    let attn: [(&str, &Tensor, &Tensor); 6] = [
        ("attn_q_kT", &q, &kt),
        ("attn_probs_v", &probs, &v),
        ("attn_dq_g_k", &gs, &k),
        ("attn_dkT_qT_g", &qt, &gs),
        ("attn_dprobs_g_vT", &gc, &vt),
        ("attn_dv_probsT_g", &pt, &gc),
    ];
    for (name, a, b) in attn {
        let (sa, sb) = (a.shape(), b.shape());
        let (m, kk, n) = (sa[2], sa[3], sb[3]);
        rows.push(Row {
            name: name.to_string(),
            shape: format!("64x[{m},{kk}]x[{kk},{n}]"),
            flops: 2.0 * (64 * m * kk * n) as f64,
            f32: Box::new(move || a.matmul(b)),
            bf16: Box::new(move || a.matmul_bf16(b)),
        });
    }
    let filter = std::env::args().nth(1).unwrap_or_default();
    rows.retain(|r| r.name.contains(&filter));
    eprintln!(
        "bf16 GEMM backend: {}, rayon threads: {}",
        tensor::cpu::bf16_gemm::Backend::current().name(),
        rayon::current_num_threads()
    );
    eprintln!(
        "{:<18} {:<26} {:>9} {:>7} {:>9} {:>7} {:>10}",
        "product", "shape", "f32 us", "GF/s", "bf16 us", "GF/s", "bf16/f32"
    );
    let (mut total32, mut total16) = (0.0, 0.0);
    for row in &rows {
        let time = |f: &dyn Fn() -> Result<Tensor>| {
            time_ms(Duration::from_millis(500), || {
                std::hint::black_box(f().expect("product"));
            })
        };
        let (ms32, ms16) = (time(&row.f32), time(&row.bf16));
        report(&format!("demo_f32_{}", row.name), &row.shape, ms32);
        report(&format!("demo_bf16_{}", row.name), &row.shape, ms16);
        let gflops = |ms: f64| row.flops / ms / 1e6;
        eprintln!(
            "{:<18} {:<26} {:>9.1} {:>7.0} {:>9.1} {:>7.0} {:>10.2}",
            row.name,
            row.shape,
            ms32 * 1e3,
            gflops(ms32),
            ms16 * 1e3,
            gflops(ms16),
            ms16 / ms32
        );
        total32 += ms32;
        total16 += ms16;
    }
    eprintln!(
        "sum of one of each: f32 {:.1} us, bf16 {:.1} us, bf16/f32 {:.2}",
        total32 * 1e3,
        total16 * 1e3,
        total16 / total32
    );
    Ok(())
}
