//! Helpers for tests and benchmarks across the workspace: seeded random tensors on the CPU and a
//! relative-error measure. They panic on misuse, which is what a test wants.

use crate::{DType, Device, Rng, Tensor};

/// Normal(0, std^2) CPU tensor of `dtype` from Philox `seed`.
pub fn randn(shape: &[usize], std: f64, dtype: DType, seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, std, dtype, Device::Cpu, &mut Rng::new(seed)).expect("randn")
}

/// Uniform [lo, hi) CPU tensor of `dtype` from Philox `seed`.
pub fn uniform(shape: &[usize], lo: f64, hi: f64, dtype: DType, seed: u64) -> Tensor {
    Tensor::rand_uniform(shape, lo, hi, dtype, Device::Cpu, &mut Rng::new(seed)).expect("uniform")
}

/// max |a - b| / max |b| over all elements (0 when both are empty or all zero).
pub fn max_rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape(), "max_rel_err: shapes differ");
    let (a, b) = (a.to_vec_f64().expect("a"), b.to_vec_f64().expect("b"));
    let scale = b.iter().fold(0f64, |m, x| m.max(x.abs()));
    let err = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f64, f64::max);
    if scale == 0.0 {
        err
    } else {
        err / scale
    }
}

/// `cuda:0` when this build has the CUDA backend and a GPU is there; otherwise prints why `test`
/// is skipped and returns None. GPU tests start with
/// `let Some(dev) = cuda_or_skip("name") else { return };`.
pub fn cuda_or_skip(test: &str) -> Option<Device> {
    let dev = "cuda:0"
        .parse::<Device>()
        .and_then(|d| d.ensure_available().map(|()| d));
    match dev {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipping {test}: {e}");
            None
        }
    }
}

/// A fresh directory under the system temp dir, `<prefix>-<pid>`, removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create the temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
