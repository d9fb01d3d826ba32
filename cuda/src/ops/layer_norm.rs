//! LayerNorm over the last dim, forward and backward (`kernels/layer_norm.cu`), as
//! tensor/src/ops/layer_norm.rs: f32 statistics and sums whatever the storage type; the weight
//! and bias have the activations' type or f32 (half activations with f32 parameters).

use super::{check_mixed, len_i64, FloatElem, MIXED};
use crate::buffer::DeviceBuffer;
use crate::gpu::{arg, Gpu, Launch};
use crate::nvrtc::{kernels::LAYER_NORM, KernelFile};
use crate::strided::Contig;
use crate::Result;

/// layer_norm.cu's column tile of the dw/db kernel.
const COL_TILE: usize = 32;
const COL_ROWS: u32 = 8;
/// Columns per thread of the fused backward; rows longer than this times 1024 take the two-kernel
/// path.
const FUSED_COLS: usize = 8;
const MAX_FUSED_N: usize = FUSED_COLS * 1024;

pub(crate) fn mirrored_constants() -> Vec<(&'static KernelFile, String)> {
    vec![
        (&LAYER_NORM, format!("#define COL_TILE {COL_TILE}")),
        (&LAYER_NORM, format!("#define COL_ROWS {COL_ROWS}")),
        (&LAYER_NORM, format!("#define LN_FUSED_COLS {FUSED_COLS}")),
    ]
}

pub(crate) fn kernel_names() -> Vec<(&'static KernelFile, String)> {
    let mut v = Vec::new();
    for (t, w) in MIXED {
        for k in [
            "layer_norm_fwd",
            "layer_norm_bwd_dx",
            "layer_norm_bwd_dwdb",
            "layer_norm_bwd_fused",
        ] {
            v.push(format!("{k}_{t}_{w}"));
        }
    }
    for t in super::FLOATS {
        v.push(format!("layer_norm_bwd_dwdb_partials_{t}"));
    }
    v.into_iter().map(|n| (&LAYER_NORM, n)).collect()
}

/// The forward's outputs: y (x's type) and the saved per-row mean and rstd (f32).
pub struct LayerNormOut<T: FloatElem> {
    pub y: DeviceBuffer<T>,
    pub mean: DeviceBuffer<f32>,
    pub rstd: DeviceBuffer<f32>,
}

/// The backward's outputs: dx (x's type), dweight and dbias (the weight's type).
pub struct LayerNormGrads<T: FloatElem, W: FloatElem> {
    pub dx: DeviceBuffer<T>,
    pub dweight: DeviceBuffer<W>,
    pub dbias: DeviceBuffer<W>,
}

/// LayerNorm of `rows` contiguous rows of `n` with weight and bias of `n` elements.
pub fn layer_norm<T: FloatElem, W: FloatElem>(
    gpu: &Gpu,
    x: Contig<'_, T>,
    rows: usize,
    n: usize,
    weight: Contig<'_, W>,
    bias: Contig<'_, W>,
    eps: f64,
) -> Result<LayerNormOut<T>> {
    const OP: &str = "layer_norm";
    check_mixed(OP, T::TYPE, W::TYPE)?;
    for b in [x.buf.ordinal(), weight.buf.ordinal(), bias.buf.ordinal()] {
        if b != gpu.ordinal() {
            crate::error::bail!(
                OP,
                "an operand on cuda:{b} was passed to cuda:{}",
                gpu.ordinal()
            );
        }
    }
    let xa = x.address(OP, rows * n)?;
    let (wa, ba) = (weight.address(OP, n)?, bias.address(OP, n)?);
    let out = LayerNormOut {
        y: gpu.alloc::<T>(rows * n)?,
        mean: gpu.alloc::<f32>(rows)?,
        rstd: gpu.alloc::<f32>(rows)?,
    };
    if rows == 0 {
        return Ok(out);
    }
    let (n64, eps) = (len_i64(OP, n)?, eps as f32);
    let (ya, ma, ra) = (
        out.y.device_address(),
        out.mean.device_address(),
        out.rstd.device_address(),
    );
    // SAFETY: matches `layer_norm_fwd_<t>_<w>(const T*, const W*, const W*, i64, float, T*,
    // float*, float*)`; extents checked above.
    unsafe {
        gpu.launch(
            &LAYER_NORM,
            &format!("layer_norm_fwd_{}_{}", T::TYPE, W::TYPE),
            Launch::per_row(OP, rows, n)?,
            &mut [
                arg(&xa),
                arg(&wa),
                arg(&ba),
                arg(&n64),
                arg(&eps),
                arg(&ya),
                arg(&ma),
                arg(&ra),
            ],
        )?;
    }
    Ok(out)
}

/// Gradients of `layer_norm` w.r.t. x, weight and bias from the forward input and weight, the
/// saved statistics and the output gradient.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward<T: FloatElem, W: FloatElem>(
    gpu: &Gpu,
    x: Contig<'_, T>,
    weight: Contig<'_, W>,
    mean: Contig<'_, f32>,
    rstd: Contig<'_, f32>,
    dy: Contig<'_, T>,
    rows: usize,
    n: usize,
) -> Result<LayerNormGrads<T, W>> {
    const OP: &str = "layer_norm_backward";
    check_mixed(OP, T::TYPE, W::TYPE)?;
    for b in [
        x.buf.ordinal(),
        weight.buf.ordinal(),
        mean.buf.ordinal(),
        rstd.buf.ordinal(),
        dy.buf.ordinal(),
    ] {
        if b != gpu.ordinal() {
            crate::error::bail!(
                OP,
                "an operand on cuda:{b} was passed to cuda:{}",
                gpu.ordinal()
            );
        }
    }
    let (xa, ga) = (x.address(OP, rows * n)?, dy.address(OP, rows * n)?);
    let wa = weight.address(OP, n)?;
    let (ma, ra) = (mean.address(OP, rows)?, rstd.address(OP, rows)?);
    let mut grads = LayerNormGrads {
        dx: gpu.alloc::<T>(rows * n)?,
        dweight: gpu.alloc::<W>(n)?,
        dbias: gpu.alloc::<W>(n)?,
    };
    if n == 0 {
        return Ok(grads);
    }
    if rows == 0 {
        gpu.fill_zeros(&mut grads.dweight)?;
        gpu.fill_zeros(&mut grads.dbias)?;
        return Ok(grads);
    }
    let (rows64, n64) = (len_i64(OP, rows)?, len_i64(OP, n)?);
    let da = grads.dx.device_address();
    let (t, w) = (T::TYPE, W::TYPE);
    let target = 4 * gpu.info().multiprocessors.max(1) as usize;
    if n <= MAX_FUSED_N {
        // One pass: dx and per-block dw/db partials, then the in-order sum of the partials.
        let rows_per_block = rows.div_ceil(target.min(rows));
        let blocks = rows.div_ceil(rows_per_block);
        let threads = (n.div_ceil(FUSED_COLS).div_ceil(32) * 32).clamp(32, 1024) as u32;
        let partial = gpu.alloc::<f32>(2 * blocks * n)?;
        let (pw, pb) = (
            partial.device_address(),
            partial.device_address() + (blocks * n * 4) as u64,
        );
        let (dwa, dba) = (grads.dweight.device_address(), grads.dbias.device_address());
        let (rpb64, blocks32) = (rows_per_block as i64, blocks as i32);
        // SAFETY: `layer_norm_bwd_fused_<t>_<w>(x, w, mean, rstd, dy, rows, n, rows_per_block, dx,
        // partial_w, partial_b)` and `layer_norm_bwd_dwdb_partials_<w>(pw, pb, n, splits, dw,
        // db)`; every extent was checked, the partial buffer holds 2 * blocks * n floats.
        unsafe {
            gpu.launch(
                &LAYER_NORM,
                &format!("layer_norm_bwd_fused_{t}_{w}"),
                Launch {
                    grid: (blocks as u32, 1, 1),
                    block: (threads, 1, 1),
                    shared_bytes: 0,
                },
                &mut [
                    arg(&xa),
                    arg(&wa),
                    arg(&ma),
                    arg(&ra),
                    arg(&ga),
                    arg(&rows64),
                    arg(&n64),
                    arg(&rpb64),
                    arg(&da),
                    arg(&pw),
                    arg(&pb),
                ],
            )?;
            sum_partials(gpu, w, n, [pw, pb], blocks32, [dwa, dba])?;
        }
        return Ok(grads);
    }
    // Split the rows of the dw/db sums so that about 4 blocks per multiprocessor run.
    let tiles = n.div_ceil(COL_TILE);
    let splits = target
        .div_ceil(tiles)
        .min(rows.div_ceil(64))
        .clamp(1, 65535);
    let partial = gpu.alloc::<f32>(if splits > 1 { 2 * splits * n } else { 0 })?;
    let (pw, pb) = (
        partial.device_address(),
        partial.device_address() + (splits * n * 4) as u64,
    );
    let (dwa, dba) = (grads.dweight.device_address(), grads.dbias.device_address());
    let splits32 = splits as i32;
    // SAFETY: the argument lists match layer_norm.cu's backward entries; every extent was checked;
    // the partial buffer holds 2 * splits * n floats when splits > 1.
    unsafe {
        gpu.launch(
            &LAYER_NORM,
            &format!("layer_norm_bwd_dx_{t}_{w}"),
            Launch::per_row(OP, rows, n)?,
            &mut [
                arg(&xa),
                arg(&wa),
                arg(&ma),
                arg(&ra),
                arg(&ga),
                arg(&n64),
                arg(&da),
            ],
        )?;
        gpu.launch(
            &LAYER_NORM,
            &format!("layer_norm_bwd_dwdb_{t}_{w}"),
            Launch {
                grid: (tiles as u32, splits as u32, 1),
                block: (COL_TILE as u32, COL_ROWS, 1),
                shared_bytes: 0,
            },
            &mut [
                arg(&xa),
                arg(&ma),
                arg(&ra),
                arg(&ga),
                arg(&rows64),
                arg(&n64),
                arg(&splits32),
                arg(&pw),
                arg(&pb),
                arg(&dwa),
                arg(&dba),
            ],
        )?;
        if splits > 1 {
            sum_partials(gpu, w, n, [pw, pb], splits32, [dwa, dba])?;
        }
    }
    Ok(grads)
}

/// Adds the `splits` f32 partial sums of dw and db (`[splits, n]` each, at `partials`) in order
/// into `out` = (dw, db) (`layer_norm_bwd_dwdb_partials_<w>`).
///
/// # Safety
/// `partials` address `splits * n` f32 each and `out` `n` elements of dtype `w` each, on `gpu`.
unsafe fn sum_partials(
    gpu: &Gpu,
    w: impl std::fmt::Display,
    n: usize,
    partials: [u64; 2],
    splits: i32,
    out: [u64; 2],
) -> Result<()> {
    let n64 = len_i64("layer_norm_backward", n)?;
    // SAFETY: the caller's contract; the argument list matches the kernel's.
    unsafe {
        gpu.launch(
            &LAYER_NORM,
            &format!("layer_norm_bwd_dwdb_partials_{w}"),
            Launch::grid_stride(n),
            &mut [
                arg(&partials[0]),
                arg(&partials[1]),
                arg(&n64),
                arg(&splits),
                arg(&out[0]),
                arg(&out[1]),
            ],
        )
    }
}
