//! Helpers for the GPU tests of every crate (the `tensor` crate's `testing` module reuses them):
//! finding a device or saying why a test skips, and running GPU tests one at a time.
//!
//! A test without the device it needs skips with a printed reason, so `cargo test` passes on a
//! machine with no GPU. `COTMAE_REQUIRE_GPU=1` turns every such skip into a failure: the GPU
//! day-one kit and CI (on the simulator, `COTMAE_CUDA_SIM=1`) set it, so a GPU suite that ran no
//! GPU test cannot pass. One skip stays a skip under it: a test that needs more devices than the
//! machine has ([`gpus_or_skip`]), since a one-GPU machine cannot run a two-GPU test.

use crate::gpu::Gpu;
use std::fmt::Display;
use std::sync::{Arc, Mutex, MutexGuard};

/// The variable that turns "no device" skips into failures.
pub const REQUIRE_GPU_ENV: &str = "COTMAE_REQUIRE_GPU";

/// Whether [`REQUIRE_GPU_ENV`] is set to something other than "" or "0".
pub fn gpu_required() -> bool {
    std::env::var(REQUIRE_GPU_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Says that `test` skips because of `why`, or panics when a GPU is required.
pub fn skip(test: &str, why: &dyn Display) {
    if gpu_required() {
        panic!("{test}: {REQUIRE_GPU_ENV} is set, and the test cannot run: {why}");
    }
    eprintln!("skipping {test}: {why}");
}

/// The running test's name (libtest names each test's thread after it), for skip messages.
pub fn current_test() -> String {
    std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string()
}

/// The lock that GPU tests of one process hold while they run: they share a device's pool, its
/// status word and, for the tests that poison the pool, its contents.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// `cuda:0` (a GPU, or a simulated one under `COTMAE_CUDA_SIM=1`), or `None` after [`skip`].
pub fn gpu_or_skip(test: &str) -> Option<Arc<Gpu>> {
    match crate::gpu(0) {
        Ok(g) => Some(g),
        Err(e) => {
            skip(test, &e);
            None
        }
    }
}

/// [`gpu_or_skip`] holding [`serial`]: the test runs alone on the device.
pub fn serial_gpu_or_skip(test: &str) -> Option<(Arc<Gpu>, MutexGuard<'static, ()>)> {
    let lock = serial();
    gpu_or_skip(test).map(|g| (g, lock))
}

/// The number of devices when there are at least `need` and NCCL loads (or the devices are
/// simulated); `None` after saying
/// why not. Too few devices is a plain skip even under [`REQUIRE_GPU_ENV`] (the machine decides
/// that, not the build); no device at all, or no NCCL, follows [`skip`].
pub fn gpus_or_skip(test: &str, need: usize) -> Option<usize> {
    let found = match crate::availability() {
        Ok(d) => d.len(),
        Err(e) => {
            skip(test, &e);
            return None;
        }
    };
    if found < need {
        eprintln!("skipping {test}: it needs {need} devices, {found} found");
        return None;
    }
    // The simulated devices bring their own NCCL (sim/nccl.rs).
    if crate::sim::enabled() {
        return Some(found);
    }
    if let Err(e) = crate::nccl::nccl_version() {
        skip(test, &e);
        return None;
    }
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_fails_only_when_a_gpu_is_required() {
        // The variable is read at each call; this test's process may have it set (the day-one
        // kit), so check both outcomes against what it says.
        let required = gpu_required();
        let r = std::panic::catch_unwind(|| skip("t", &"no device"));
        assert_eq!(r.is_err(), required);
        if let Err(p) = r {
            let msg = p.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(
                msg.contains("COTMAE_REQUIRE_GPU is set") && msg.contains("no device"),
                "{msg}"
            );
        }
    }
}
