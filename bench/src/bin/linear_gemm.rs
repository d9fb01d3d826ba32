//! The linear-layer GEMMs of a BERT-base forward on their own: x [1024, in] times the row-major
//! W^T [in, out] plus the bias (`Tensor::matmul_bias`, what `Linear` runs in inference), for the
//! three shapes of a layer (768->768, 768->3072, 3072->768), cycling through 12 weights as 12
//! layers do, so weights come from memory rather than cache. Prints ms per product and GFLOP/s.
//! The PyTorch twin is `bench/linear_torch.py` (`F.linear`); `bench/run_linear.sh` runs both.

use bench::{report, time_ms};
use std::time::Duration;
use tensor::testing::randn;
use tensor::{DType, Result};

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
    }
    Ok(())
}
