//! Helpers for tests and benchmarks across the workspace: seeded random tensors on the CPU, a
//! relative-error measure, GPU skips (`COTMAE_REQUIRE_GPU`) and the repository root at run time.
//! They panic on misuse, which is what a test wants.

use crate::{DType, Device, Rng, Tensor};

/// Normal(0, std^2) CPU tensor of `dtype` from Philox `seed`.
pub fn randn(shape: &[usize], std: f64, dtype: DType, seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, std, dtype, Device::Cpu, &mut Rng::new(seed)).expect("randn")
}

/// Uniform [lo, hi) CPU tensor of `dtype` from Philox `seed`.
pub fn uniform(shape: &[usize], lo: f64, hi: f64, dtype: DType, seed: u64) -> Tensor {
    Tensor::rand_uniform(shape, lo, hi, dtype, Device::Cpu, &mut Rng::new(seed)).expect("uniform")
}

/// The bits of every element (widened to f64, which is exact for every float dtype), for
/// asserting that two results are the same bit for bit.
pub fn bits(t: &Tensor) -> Vec<u64> {
    let v = t.to_vec_f64().expect("bits");
    v.iter().map(|x| x.to_bits()).collect()
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

/// Says that `test` skips because of `why` (no device, no CUDA backend in this build), or panics
/// when `COTMAE_REQUIRE_GPU` is set: the CUDA crate's rule (`cuda::testing::skip`).
pub fn skip(test: &str, why: &dyn std::fmt::Display) {
    #[cfg(feature = "cuda")]
    cuda::testing::skip(test, why);
    #[cfg(not(feature = "cuda"))]
    {
        // No `cuda` crate in this build: the same rule, spelled out once more.
        if std::env::var("COTMAE_REQUIRE_GPU").is_ok_and(|v| !v.is_empty() && v != "0") {
            panic!("{test}: COTMAE_REQUIRE_GPU is set, and the test cannot run: {why}");
        }
        eprintln!("skipping {test}: {why}");
    }
}

/// `cuda:0` when this build has the CUDA backend and a device is there (a GPU, or a simulated
/// one under `COTMAE_CUDA_SIM=1`); otherwise [`skip`]s `test` and returns None. GPU tests start
/// with `let Some(dev) = cuda_or_skip("name") else { return };`.
pub fn cuda_or_skip(test: &str) -> Option<Device> {
    let dev = "cuda:0"
        .parse::<Device>()
        .and_then(|d| d.ensure_available().map(|()| d));
    match dev {
        Ok(d) => Some(d),
        Err(e) => {
            skip(test, &e);
            None
        }
    }
}

/// The device count when there are at least `need` devices and NCCL loads (see the `cuda` crate).
#[cfg(feature = "cuda")]
pub use cuda::testing::gpus_or_skip;

/// [`cuda_or_skip`] holding the lock GPU tests of one process share (`cuda::testing::serial`),
/// for tests that must run alone on the device.
#[cfg(feature = "cuda")]
pub fn serial_cuda_or_skip(test: &str) -> Option<(Device, std::sync::MutexGuard<'static, ()>)> {
    let lock = cuda::testing::serial();
    cuda_or_skip(test).map(|d| (d, lock))
}

/// The repository's root, found at run time (test binaries and benchmarks are also run from a
/// copy of the repository on a machine without the build tree): `COTMAE_REPO_ROOT` when set,
/// else the nearest directory at or above the current one whose `Cargo.toml` has a
/// `[workspace]` table. `cargo test` runs tests in their crate's directory, below the root.
pub fn find_repo_root() -> std::result::Result<std::path::PathBuf, String> {
    if let Some(root) = std::env::var_os("COTMAE_REPO_ROOT").filter(|r| !r.is_empty()) {
        return Ok(root.into());
    }
    let cwd = std::env::current_dir().map_err(|e| format!("the current directory: {e}"))?;
    cwd.ancestors()
        .find(|d| {
            std::fs::read_to_string(d.join("Cargo.toml"))
                .is_ok_and(|t| t.lines().any(|l| l.trim() == "[workspace]"))
        })
        .map(|d| d.to_path_buf())
        .ok_or_else(|| {
            format!(
                "no workspace Cargo.toml at or above {}: run from the repository or set \
                 COTMAE_REPO_ROOT",
                cwd.display()
            )
        })
}

/// [`find_repo_root`] for tests: panics with its message.
pub fn repo_root() -> std::path::PathBuf {
    find_repo_root().unwrap_or_else(|e| panic!("{e}"))
}

/// `tests/fixtures` under [`repo_root`].
pub fn fixtures_dir() -> std::path::PathBuf {
    repo_root().join("tests/fixtures")
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
