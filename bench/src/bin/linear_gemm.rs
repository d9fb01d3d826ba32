//! The linear-layer GEMMs of a BERT-base forward on their own: x [1024, in] times the row-major
//! W^T [in, out] plus the bias (`Tensor::matmul_bias`, what `Linear` runs in inference), for the
//! three shapes of a layer (768->768, 768->3072, 3072->768), cycling through 12 weights as 12
//! layers do, so weights come from memory rather than cache. Prints ms per product and GFLOP/s.
//! Then the same in bf16 (rows `linear_bf16_*`): the weight packed once for the bf16 GEMM and
//! `matmul_packed_bf16` with the bias, what `Linear` runs in inference under bf16 autocast.
//! Then the products a bf16 training step runs for each layer, as autograd issues them under bf16
//! autocast (`Tensor::matmul_bias_bf16` / `matmul_bf16` on f32 operands, each packed to bf16 by
//! the call): `linear_bf16_train_fwd_*` = x W^T + b with W^T a view of the f32 [out, in] weight,
//! `linear_bf16_dx_*` = g W (the input gradient, g [1024, out]) and `linear_bf16_dw_*` = x^T g
//! (the weight gradient, x^T a transposed view; k = 1024 tokens).
//! The PyTorch twin is `bench/linear_torch.py` (`F.linear`, f32 and under bf16 autocast, and the
//! two backward products in bf16); `bench/run_linear.sh` runs both.

use bench::{report, time_ms};
use std::time::Duration;
use tensor::testing::randn;
use tensor::{DType, PackedWeight, Result, Tensor};

const ROWS: usize = 1024;
const LAYERS: usize = 12;

fn main() -> Result<()> {
    tensor::heap::keep_freed_memory(); // as the cotmae binary runs
    for (i, &(fan_in, fan_out)) in [(768, 768), (768, 3072), (3072, 768)].iter().enumerate() {
        let seed = 10 * i as u64;
        let x = randn(&[ROWS, fan_in], 1.0, DType::F32, seed);
        let weights: Vec<_> = (0..LAYERS as u64)
            .map(|l| {
                let w_t = randn(&[fan_in, fan_out], 0.02, DType::F32, seed + 1 + l);
                let b = randn(&[fan_out], 0.02, DType::F32, seed + 100 + l);
                (w_t, b)
            })
            .collect();
        let ms = time_ms(Duration::from_secs(2), || {
            for (w_t, b) in &weights {
                std::hint::black_box(x.matmul_bias(w_t, b).expect("matmul_bias"));
            }
        }) / LAYERS as f64;
        let shape = format!("[{ROWS},{fan_in}]x[{fan_in},{fan_out}]");
        report(&format!("linear_{fan_in}x{fan_out}"), &shape, ms);
        let gflops = 2.0 * (ROWS * fan_in * fan_out) as f64 / ms / 1e6;
        eprintln!("linear {shape}: {ms:.2} ms, {gflops:.0} GFLOP/s");
        let packed: Vec<_> = weights
            .iter()
            .map(|(w_t, b)| Ok((PackedWeight::pack(w_t)?, b)))
            .collect::<Result<_>>()?;
        let ms = time_ms(Duration::from_secs(2), || {
            for (w, b) in &packed {
                let y = x.matmul_packed_bf16(w, Some(b), false);
                std::hint::black_box(y.expect("matmul_packed_bf16"));
            }
        }) / LAYERS as f64;
        report(&format!("linear_bf16_{fan_in}x{fan_out}"), &shape, ms);
        let gflops = 2.0 * (ROWS * fan_in * fan_out) as f64 / ms / 1e6;
        eprintln!(
            "linear bf16 {shape} ({}): {ms:.2} ms, {gflops:.0} GFLOP/s",
            tensor::cpu::bf16_gemm::Backend::current().name()
        );
        training_rows(fan_in, fan_out, &x, &weights)?;
    }
    Ok(())
}

/// One timed product of a layer, from its weight [out, in] and bias.
type Product<'a> = dyn Fn(&Tensor, &Tensor) -> Result<Tensor> + 'a;

/// The three bf16 products of one linear layer in a training step (module doc), through the
/// doors autograd uses, with the f32 weights [out, in] of the 12 layers.
fn training_rows(
    fan_in: usize,
    fan_out: usize,
    x: &Tensor,
    weights: &[(Tensor, Tensor)],
) -> Result<()> {
    let g = randn(&[ROWS, fan_out], 1.0, DType::F32, 7);
    // The parameters as Linear keeps them: [out, in], contiguous.
    let w: Vec<(Tensor, &Tensor)> = weights
        .iter()
        .map(|(w_t, b)| Ok((w_t.t()?.contiguous()?, b)))
        .collect::<Result<_>>()?;
    let rows: [(&str, String, &Product); 3] = [
        (
            "train_fwd",
            format!("[{ROWS},{fan_in}]x[{fan_in},{fan_out}]"),
            &|w, b| x.matmul_bias_bf16(&w.t()?, b, false),
        ),
        (
            "dx",
            format!("[{ROWS},{fan_out}]x[{fan_out},{fan_in}]"),
            &|w, _| g.matmul_bf16(w),
        ),
        (
            "dw",
            format!("[{fan_in},{ROWS}]x[{ROWS},{fan_out}]"),
            &|_, _| x.t()?.matmul_bf16(&g),
        ),
    ];
    for (what, shape, product) in rows {
        let ms = time_ms(Duration::from_secs(2), || {
            for (w, b) in &w {
                std::hint::black_box(product(w, b).expect(what));
            }
        }) / LAYERS as f64;
        report(
            &format!("linear_bf16_{what}_{fan_in}x{fan_out}"),
            &shape,
            ms,
        );
        let gflops = 2.0 * (ROWS * fan_in * fan_out) as f64 / ms / 1e6;
        eprintln!("linear bf16 {what} {shape}: {ms:.2} ms, {gflops:.0} GFLOP/s");
    }
    Ok(())
}
