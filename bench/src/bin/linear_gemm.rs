//! The linear-layer GEMMs of a BERT-base forward on their own: x [1024, in] times the row-major
//! W^T [in, out] plus the bias (`Tensor::matmul_bias`, what `Linear` runs in inference), for the
//! three shapes of a layer (768->768, 768->3072, 3072->768), cycling through 12 weights as 12
//! layers do, so weights come from memory rather than cache. Prints ms per product and GFLOP/s.
//! Then the same in bf16 (rows `linear_bf16_*`): the weight packed once for the bf16 GEMM and
//! `matmul_packed_bf16` with the bias, what `Linear` runs in inference under bf16 autocast.
//! The PyTorch twin is `bench/linear_torch.py` (`F.linear`, f32 and under bf16 autocast);
//! `bench/run_linear.sh` runs both.

use bench::{report, time_ms};
use std::time::Duration;
use tensor::testing::randn;
use tensor::{DType, PackedWeight, Result};

const ROWS: usize = 1024;
const LAYERS: usize = 12;

fn main() -> Result<()> {
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
    }
    Ok(())
}
