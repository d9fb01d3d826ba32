//! Multi-tensor launches: one kernel launch over a whole list of tensors (every parameter or every
//! gradient of a model), as `kernels/adamw.cu`, `loss_scale.cu` and `grad_norm.cu` do.
//!
//! Layout: the kernel receives a device table of per-tensor records (pointers, length, scalars;
//! one `repr(C)` struct mirrored by each wrapper), `chunk_start` (the prefix sum of each tensor's
//! chunk count, `n_tensors + 1` entries; common.cuh `chunk_owner` maps a block to its tensor) and
//! the number of tensors, then the kernel's own arguments. Each tensor of `n` elements gets
//! `ceil(n / chunk)` chunks; an empty tensor gets none.
//!
//! Launch: one block of [`BLOCK`] threads per chunk, all chunks in one grid (at most 2^31 - 1).

use crate::error::bail;
use crate::gpu::{arg, Gpu, Launch};
use crate::nvrtc::KernelFile;
use crate::Result;
use cudarc::driver::DeviceRepr;
use std::ffi::c_void;

/// Threads per block of the multi-tensor kernels.
pub(crate) const BLOCK: u32 = 256;

/// The chunk table of one launch: where each tensor's chunks start, and how many there are.
pub(crate) struct Chunks {
    starts: Vec<i64>,
    /// Chunks over all tensors (the grid size).
    pub total: usize,
}

impl Chunks {
    /// The table for tensors of `lens` elements cut into `chunk`-element chunks; errors (naming
    /// `op`) when the grid would exceed its limit.
    pub fn new(op: &'static str, lens: &[usize], chunk: usize) -> Result<Chunks> {
        let mut starts = Vec::with_capacity(lens.len() + 1);
        let mut total = 0usize;
        for &n in lens {
            starts.push(super::len_i64(op, total)?);
            total += n.div_ceil(chunk);
        }
        starts.push(super::len_i64(op, total)?);
        if total > i32::MAX as usize || lens.len() > i32::MAX as usize {
            bail!(
                op,
                "{total} chunks over {} tensors exceed the grid limit",
                lens.len()
            );
        }
        Ok(Chunks { starts, total })
    }

    fn tensors(&self) -> usize {
        self.starts.len() - 1
    }
}

/// Launches `kernel` of `file` as `kernel(records, chunk_start, n_tensors, extra...)` over the
/// chunks of `chunks`; nothing is launched when there are no chunks. `op` names the caller in
/// the errors.
///
/// # Safety
/// The kernel's parameters must be `(const R*, const i64*, int)` followed by `extra` (pointers to
/// each value, in order), and every device address in `records` must be valid for the elements
/// the kernel touches (each record's length, which `chunks` was built from).
pub(crate) unsafe fn launch<R: DeviceRepr>(
    gpu: &Gpu,
    op: &'static str,
    (file, kernel): (&'static KernelFile, &str),
    records: &[R],
    chunks: &Chunks,
    extra: &[*mut c_void],
) -> Result<()> {
    if records.len() != chunks.tensors() {
        bail!(
            op,
            "{} records for a chunk table of {} tensors",
            records.len(),
            chunks.tensors()
        );
    }
    if chunks.total == 0 {
        return Ok(());
    }
    let table = gpu.upload_records(records)?;
    let starts = gpu.upload(&chunks.starts)?;
    let (ta, sa, count) = (
        table.address(gpu),
        starts.device_address(),
        records.len() as i32,
    );
    let mut args = vec![arg(&ta), arg(&sa), arg(&count)];
    args.extend_from_slice(extra);
    let shape = Launch {
        grid: (chunks.total as u32, 1, 1),
        block: (BLOCK, 1, 1),
        shared_bytes: 0,
    };
    // SAFETY: the caller guarantees the kernel's signature and the records' addresses; the table
    // and the chunk starts stay alive until the launch is issued and are freed in stream order.
    unsafe { gpu.launch(file, kernel, shape, &mut args) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_table_is_a_prefix_sum_with_empty_tensors() {
        let c = Chunks::new("t", &[0, 5, 16, 17, 0], 16).unwrap();
        assert_eq!(c.starts, vec![0, 0, 1, 2, 4, 4]);
        assert_eq!((c.total, c.tensors()), (4, 5));
        let e = Chunks::new("t", &[], 16).unwrap();
        assert_eq!((e.starts.clone(), e.total, e.tensors()), (vec![0], 0, 0));
        let err = Chunks::new("op", &[(i32::MAX as usize + 1) * 2], 2)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with("op: ") && err.contains("grid limit"),
            "{err}"
        );
    }
}
