//! `topk` along the last dim (`kernels/topk.cu`), as tensor/src/ops/topk.rs: the k largest of
//! each row, largest first, NaN counting as the largest, equal values by lower index; k = n is
//! a stable descending sort. [`ranked`] also takes the other direction (the k smallest, smallest
//! first, NaN still the largest; k = n is the stable ascending sort). One block per row keeps the best `cap` (a power of two >= k, at most
//! [`MAX_K`]) in shared memory while it streams the row in chunks of `cap`.

use super::{len_i64, FloatElem, FLOATS};
use crate::buffer::DeviceBuffer;
use crate::error::bail;
use crate::gpu::{arg, Gpu, Launch};
use crate::nvrtc::{kernels::TOPK, KernelFile};
use crate::strided::Contig;
use crate::Result;

/// The largest k the kernel takes (its shared-memory buffer holds 2 x 2048 keys of 8 bytes).
pub const MAX_K: usize = 2048;

pub(crate) fn kernel_names() -> Vec<(&'static KernelFile, String)> {
    FLOATS
        .iter()
        .map(|t| (&TOPK, format!("topk_{t}")))
        .collect()
}

/// The top `k` of each of `rows` contiguous rows of `n`: values (`[rows, k]`, `T`) and their
/// indices (`[rows, k]`, i64).
pub fn topk<T: FloatElem>(
    gpu: &Gpu,
    x: Contig<'_, T>,
    rows: usize,
    n: usize,
    k: usize,
) -> Result<(DeviceBuffer<T>, DeviceBuffer<i64>)> {
    ranked(gpu, x, rows, n, k, true)
}

/// The first `k` of each of `rows` contiguous rows of `n` in rank order: the largest first when
/// `descending`, the smallest first otherwise (NaN ranks as the largest; ties by lower index).
pub fn ranked<T: FloatElem>(
    gpu: &Gpu,
    x: Contig<'_, T>,
    rows: usize,
    n: usize,
    k: usize,
    descending: bool,
) -> Result<(DeviceBuffer<T>, DeviceBuffer<i64>)> {
    const OP: &str = "topk";
    gpu.same_device(OP, x.buf)?;
    if k > n {
        bail!(OP, "k = {k} exceeds the row length {n}");
    }
    if k > MAX_K {
        bail!(OP, "k = {k} exceeds the GPU kernel's limit of {MAX_K}");
    }
    if n >= u32::MAX as usize {
        bail!(
            OP,
            "rows of {n} elements exceed the kernel's 32-bit indices"
        );
    }
    let xa = x.address(OP, rows * n)?;
    let (values, indices) = (gpu.alloc::<T>(rows * k)?, gpu.alloc::<i64>(rows * k)?);
    if rows == 0 || k == 0 {
        return Ok((values, indices));
    }
    let cap = k.next_power_of_two().max(32);
    let mut launch = Launch::per_row(OP, rows, 4 * cap)?;
    launch.block = (cap.min(1024) as u32, 1, 1);
    launch.shared_bytes = (2 * cap * 8) as u32;
    let (n64, k32, cap32) = (len_i64(OP, n)?, k as i32, cap as i32);
    let ascending = i32::from(!descending);
    let (va, ia) = (values.device_address(), indices.device_address());
    // SAFETY: matches `topk_<t>(const T*, i64, int, int, int, T*, i64*)` with 2*cap*8 bytes of
    // dynamic shared memory (<= 32 KiB, under the default 48 KiB limit).
    unsafe {
        gpu.launch(
            &TOPK,
            &format!("topk_{}", T::TYPE),
            launch,
            &mut [
                arg(&xa),
                arg(&n64),
                arg(&k32),
                arg(&cap32),
                arg(&ascending),
                arg(&va),
                arg(&ia),
            ],
        )?;
    }
    Ok((values, indices))
}
