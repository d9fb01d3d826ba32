//! One kernel launch on a simulated device: the limits a device enforces (checked before anything
//! runs, each refusal naming the kernel), then the grid executed by the runtime of `runtime.h`
//! (blocks in a seeded order, threads as fibers with real barriers), and its outcome turned into
//! an error naming the kernel: a fault at a guard page (an out-of-bounds access or a use after
//! free, described by `memory::describe`), a deadlock, a warp operation with an exited lane.
//!
//! Limits (sm_90): 1..=1024 threads per block (x, y <= 1024, z <= 64), grid.x <= 2^31 - 1,
//! grid.y and grid.z <= 65535, dynamic shared memory <= 48 KiB unless the function opted in to
//! more (`cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)`), and never above 227 KiB.

use super::compile::{runtime, Entry};
use crate::{Error, Result};
use std::ffi::c_void;

/// Dynamic shared memory a launch may use without opting in.
pub(crate) const DEFAULT_SHARED_BYTES: u32 = 48 * 1024;
/// The opt-in maximum of dynamic shared memory per block (sm_90).
pub(crate) const MAX_SHARED_BYTES: u32 = 227 * 1024;
const MAX_BLOCK_THREADS: u64 = 1024;

/// `cotmae_sim_launch_params` of runtime.h.
#[repr(C)]
pub(crate) struct LaunchParams {
    kernel: *const std::ffi::c_char,
    entry: Entry,
    args: *mut *mut c_void,
    grid: [u32; 3],
    block: [u32; 3],
    shared_bytes: u32,
    pad: u32,
    seed: u64,
}

/// `cotmae_sim_launch_result` of runtime.h.
#[repr(C)]
pub(crate) struct LaunchResult {
    code: i32,
    fault_write: i32,
    fault_address: u64,
    message: [u8; 512],
}

/// A launch's shape, as `cuLaunchKernel` takes it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_bytes: u32,
}

/// Errors (naming `kernel`) unless `shape` is within the device's limits, where `opt_in` is the
/// dynamic shared memory the function was allowed beyond the default.
pub(crate) fn check_limits(kernel: &str, shape: Shape, opt_in: u32) -> Result<()> {
    let refuse = |why: String| {
        Err(Error::Driver {
            call: "cuLaunchKernel",
            message: format!("CUDA_ERROR_INVALID_VALUE: kernel {kernel}: {why}"),
        })
    };
    let (bx, by, bz) = shape.block;
    let threads = bx as u64 * by as u64 * bz as u64;
    if threads == 0 || threads > MAX_BLOCK_THREADS || bx > 1024 || by > 1024 || bz > 64 {
        return refuse(format!(
            "a block of ({bx}, {by}, {bz}) = {threads} threads (1 to 1024, z at most 64)"
        ));
    }
    let (gx, gy, gz) = shape.grid;
    if gx == 0 || gy == 0 || gz == 0 || gx > i32::MAX as u32 || gy > 65535 || gz > 65535 {
        return refuse(format!(
            "a grid of ({gx}, {gy}, {gz}) blocks (x 1 to 2^31 - 1, y and z 1 to 65535)"
        ));
    }
    let s = shape.shared_bytes;
    if s > MAX_SHARED_BYTES {
        return refuse(format!(
            "{s} bytes of dynamic shared memory exceed the device's maximum of {MAX_SHARED_BYTES}"
        ));
    }
    if s > DEFAULT_SHARED_BYTES.max(opt_in) {
        return refuse(format!(
            "{s} bytes of dynamic shared memory exceed {} without the function's opt-in \
             (cuFuncSetAttribute MAX_DYNAMIC_SHARED_SIZE_BYTES)",
            DEFAULT_SHARED_BYTES.max(opt_in)
        ));
    }
    Ok(())
}

/// Runs `entry` (kernel `kernel`) over `shape` with `args`, synchronously, on the calling thread.
///
/// # Safety
/// `args` must match the kernel's parameters; every address among them must be a simulated
/// device address (or one the kernel does not touch).
pub(crate) unsafe fn run(
    kernel: &str,
    entry: Entry,
    shape: Shape,
    args: &mut [*mut c_void],
    seed: u64,
) -> Result<()> {
    let rt = runtime()?;
    let name =
        std::ffi::CString::new(kernel).map_err(|_| Error::arg("launch", "a NUL in a name"))?;
    let params = LaunchParams {
        kernel: name.as_ptr(),
        entry,
        args: args.as_mut_ptr(),
        grid: [shape.grid.0, shape.grid.1, shape.grid.2],
        block: [shape.block.0, shape.block.1, shape.block.2],
        shared_bytes: shape.shared_bytes,
        pad: 0,
        seed,
    };
    let mut result = LaunchResult {
        code: 0,
        fault_write: 0,
        fault_address: 0,
        message: [0; 512],
    };
    // SAFETY: the runtime reads the params and writes the result; the caller vouches for args.
    unsafe { (rt.launch)(&params, &mut result) };
    match result.code {
        0 => Ok(()),
        1 => {
            let access = if result.fault_write == 1 {
                "write"
            } else {
                "read"
            };
            let addr = result.fault_address;
            let what = super::memory::describe(addr as usize);
            Err(Error::Kernel(format!(
                "kernel {kernel}: out-of-bounds {access} at {addr:#x} ({what})"
            )))
        }
        _ => {
            let end = result.message.iter().position(|&b| b == 0).unwrap_or(512);
            let message = String::from_utf8_lossy(&result.message[..end]);
            Err(Error::Kernel(format!("kernel {kernel}: {message}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(grid: (u32, u32, u32), block: (u32, u32, u32), shared_bytes: u32) -> Shape {
        Shape {
            grid,
            block,
            shared_bytes,
        }
    }

    #[test]
    fn launches_over_the_limits_are_refused_naming_the_kernel() {
        let ok = shape((1 << 20, 65535, 2), (32, 32, 1), 48 * 1024);
        check_limits("k", ok, 0).unwrap();
        let cases = [
            (shape((1, 1, 1), (1025, 1, 1), 0), 0, "1025 threads"),
            (shape((1, 1, 1), (0, 1, 1), 0), 0, "0 threads"),
            (
                shape((1, 65536, 1), (32, 1, 1), 0),
                0,
                "a grid of (1, 65536, 1)",
            ),
            (shape((1 << 31, 1, 1), (32, 1, 1), 0), 0, "a grid of"),
            (
                shape((1, 1, 1), (32, 1, 1), 49 * 1024),
                0,
                "without the function's opt-in",
            ),
            (
                shape((1, 1, 1), (32, 1, 1), 228 * 1024),
                228 * 1024,
                "device's maximum",
            ),
        ];
        for (s, opt_in, want) in cases {
            let e = check_limits("softmax_fwd_f32", s, opt_in)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("kernel softmax_fwd_f32") && e.contains(want),
                "{e}"
            );
        }
        check_limits("k", shape((1, 1, 1), (32, 1, 1), 100 * 1024), 100 * 1024).unwrap();
    }
}
