//! Embedding lookup and its backward (`kernels/embedding.cu`), as tensor/src/ops/index.rs's
//! `embedding` / `embedding_backward`. Ids are i64 on the device; an id outside the table is
//! reported through the GPU's status word ([`crate::Gpu::check_status`]) and gives a zero row
//! (forward) or no contribution (backward).

use super::{len_i64, FloatElem, FLOATS};
use crate::buffer::{DeviceBuffer, DeviceElem, ElemType};
use crate::error::bail;
use crate::gpu::{arg, Gpu, Launch};
use crate::nvrtc::{kernels::EMBEDDING, KernelFile};
use crate::strided::{contiguous_strides, Contig, Strided};
use crate::Result;

/// Threads per block (one block per id).
const THREADS: u32 = 128;

pub(crate) fn kernel_names() -> Vec<(&'static KernelFile, String)> {
    let mut v: Vec<String> = [8, 16, 32, 64]
        .iter()
        .map(|b| format!("embedding_fwd_w{b}"))
        .collect();
    v.extend(FLOATS.iter().map(|t| format!("embedding_bwd_{t}")));
    v.into_iter().map(|n| (&EMBEDDING, n)).collect()
}

fn per_id(n_ids: usize) -> Launch {
    Launch {
        grid: (n_ids.clamp(1, 65535) as u32, 1, 1),
        block: (THREADS, 1, 1),
        shared_bytes: 0,
    }
}

/// Rows `ids` of a contiguous `[v, h]` table: `[n_ids, h]`, any element type.
pub fn embedding<T: DeviceElem>(
    gpu: &Gpu,
    table: Contig<'_, T>,
    v: usize,
    h: usize,
    ids: Contig<'_, i64>,
    n_ids: usize,
) -> Result<DeviceBuffer<T>> {
    const OP: &str = "embedding";
    gpu.same_device(OP, table.buf)?;
    gpu.same_device(OP, ids.buf)?;
    let (ta, ia) = (table.address(OP, v * h)?, ids.address(OP, n_ids)?);
    let out = gpu.alloc::<T>(n_ids * h)?;
    if n_ids * h == 0 {
        return Ok(out);
    }
    let (oa, sa) = (out.device_address(), gpu.status_address_for(OP));
    let (n64, h64, v64) = (len_i64(OP, n_ids)?, len_i64(OP, h)?, len_i64(OP, v)?);
    // SAFETY: matches `embedding_fwd_w<bits>(const W*, const i64*, W*, i64, i64, i64, u32*)`;
    // ids are range-checked on the device.
    unsafe {
        gpu.launch(
            &EMBEDDING,
            &format!("embedding_fwd_w{}", T::TYPE.size_in_bytes() * 8),
            per_id(n_ids),
            &mut [
                arg(&ta),
                arg(&ia),
                arg(&oa),
                arg(&n64),
                arg(&h64),
                arg(&v64),
                arg(&sa),
            ],
        )?;
    }
    Ok(out)
}

/// The table gradient of `embedding`: `[v, h]` with row i the sum of the `dy` rows whose id is i
/// (f32 atomics; f16/bf16 rounded once at the end).
pub fn embedding_backward<T: FloatElem>(
    gpu: &Gpu,
    ids: Contig<'_, i64>,
    dy: Contig<'_, T>,
    n_ids: usize,
    h: usize,
    v: usize,
) -> Result<DeviceBuffer<T>> {
    const OP: &str = "embedding_backward";
    gpu.same_device(OP, ids.buf)?;
    gpu.same_device(OP, dy.buf)?;
    if v.checked_mul(h).is_none() {
        bail!(OP, "a table of {v} x {h} is too large");
    }
    let (ia, ga) = (ids.address(OP, n_ids)?, dy.address(OP, n_ids * h)?);
    let table = gpu.zeros::<f32>(v * h)?;
    if n_ids * h > 0 {
        let (da, sa) = (table.device_address(), gpu.status_address_for(OP));
        let (n64, h64, v64) = (len_i64(OP, n_ids)?, len_i64(OP, h)?, len_i64(OP, v)?);
        // SAFETY: matches `embedding_bwd_<t>(const i64*, const T*, float*, i64, i64, i64, u32*)`.
        unsafe {
            gpu.launch(
                &EMBEDDING,
                &format!("embedding_bwd_{}", T::TYPE),
                per_id(n_ids),
                &mut [
                    arg(&ia),
                    arg(&ga),
                    arg(&da),
                    arg(&n64),
                    arg(&h64),
                    arg(&v64),
                    arg(&sa),
                ],
            )?;
        }
    }
    if T::TYPE == ElemType::F32 {
        return Ok(super::cast::same_type(table));
    }
    let shape = [v * h];
    let strides = contiguous_strides(&shape);
    super::cast::cast::<f32, T>(gpu, &shape, Strided::new(&table, 0, &strides))
}
