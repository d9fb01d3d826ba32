//! Reductions over one axis (`kernels/reduce.cu`) of a contiguous input viewed as
//! `[outer, r, inner]`: sums (f64 accumulation), sums of squares, means, max / min and arg max /
//! arg min (NaN wins, ties keep the lowest index), and integer sums of i64 / u8 into i64
//! (wrapping, exact), as tensor/src/ops/reduce.rs. Reducing several
//! dims is reducing one after making them adjacent (the caller permutes and copies if needed).
//!
//! Contiguous rows (inner == 1: sums, best-of, integer sums) are read in 16-byte packs after a
//! scalar head up to the first aligned element; columns (inner > 1) in one 16-byte pack of
//! adjacent columns per thread when inner is a multiple of the pack and x is aligned
//! (`_cols_packed` kernels), else one column per thread.
//!
//! When the output alone would not fill the GPU (few rows, long reductions), each reduction is
//! split into chunks reduced by separate blocks and combined in chunk order by a second kernel:
//! the result depends only on the shape, not on timing.

use super::{len_i64, FloatElem, FLOATS};
use crate::buffer::{DeviceBuffer, DeviceElem, ElemType};
use crate::error::bail;
use crate::gpu::{arg, Gpu, Launch};
use crate::nvrtc::{kernels::REDUCE, KernelFile};
use crate::strided::Contig;
use crate::Result;

/// A contiguous input's shape as the reduction sees it: reduce `r` between `outer` and `inner`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Axis {
    pub outer: usize,
    pub r: usize,
    pub inner: usize,
}

impl Axis {
    /// Reducing dim `dim` of a contiguous `shape`.
    pub fn of(shape: &[usize], dim: usize) -> Axis {
        Axis {
            outer: shape[..dim].iter().product(),
            r: shape[dim],
            inner: shape[dim + 1..].iter().product(),
        }
    }

    fn len(self) -> usize {
        self.outer * self.r * self.inner
    }

    fn out_len(self) -> usize {
        self.outer * self.inner
    }
}

/// What a sum reduction returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SumKind {
    Sum,
    /// Σ x².
    SumSq,
    /// Σ x / r (NaN for r = 0, as the CPU).
    Mean,
}

/// Which extreme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extreme {
    Max,
    Min,
}

// Codes of reduce.cu's ReduceOp.
const OP_SUM: i32 = 0;
const OP_SUMSQ: i32 = 1;
const OP_MAX: i32 = 2;
const OP_MIN: i32 = 3;
const OP_ARGMAX: i32 = 4;
const OP_ARGMIN: i32 = 5;

/// reduce.cu's tile of the column kernels.
const COL_TILE: usize = 32;
const COL_ROWS: u32 = 8;

pub(crate) fn mirrored_constants() -> Vec<(&'static KernelFile, String)> {
    [
        format!("OP_SUM = {OP_SUM}"),
        format!("OP_SUMSQ = {OP_SUMSQ}"),
        format!("OP_MAX = {OP_MAX}"),
        format!("OP_MIN = {OP_MIN}"),
        format!("OP_ARGMAX = {OP_ARGMAX}"),
        format!("OP_ARGMIN = {OP_ARGMIN}"),
        format!("#define COL_TILE {COL_TILE}"),
        format!("#define COL_ROWS {COL_ROWS}"),
    ]
    .into_iter()
    .map(|s| (&REDUCE, s))
    .collect()
}

/// The (input, output) types of the sum kernels: same type, or f16/bf16 into f32.
const SUM_TYPES: [(ElemType, ElemType); 5] = super::MIXED;

/// The input types of the integer sum kernels (output i64).
const INT_SUM_TYPES: [ElemType; 2] = [ElemType::I64, ElemType::U8];

pub(crate) fn kernel_names() -> Vec<(&'static KernelFile, String)> {
    let mut v = Vec::new();
    for (t, o) in SUM_TYPES {
        v.push(format!("sum_rows_{t}_{o}"));
        v.push(format!("sum_cols_{t}_{o}"));
        v.push(format!("sum_cols_packed_{t}_{o}"));
    }
    for t in FLOATS {
        v.push(format!("sum_rows_partials_{t}"));
        v.push(format!("sum_cols_partials_{t}"));
        for k in [
            "best_rows",
            "best_rows_partials",
            "best_cols",
            "best_cols_packed",
            "best_cols_partials",
        ] {
            v.push(format!("{k}_{t}"));
        }
    }
    v.extend(INT_SUM_TYPES.iter().map(|t| format!("sum_int_{t}")));
    v.into_iter().map(|n| (&REDUCE, n)).collect()
}

/// How many chunks to split each reduction into so that about `4 x multiprocessors` blocks run
/// (1 when the output alone gives enough blocks or the reduction is short).
fn splits(gpu: &Gpu, blocks: usize, r: usize, min_chunk: usize) -> usize {
    let target = 4 * gpu.info().multiprocessors.max(1) as usize;
    if blocks >= target / 2 {
        return 1;
    }
    target
        .div_ceil(blocks.max(1))
        .min(r.div_ceil(min_chunk))
        .clamp(1, 1024)
}

/// How a reduction is launched: the rows kernel (inner == 1) or the columns kernel, the chunks
/// each reduction is split into, and the grid.
struct Plan {
    rows: bool,
    splits: usize,
    launch: Launch,
}

fn plan(gpu: &Gpu, axis: Axis) -> Result<Plan> {
    if axis.inner == 1 {
        let s = splits(gpu, axis.outer, axis.r, 4096);
        if axis.outer > i32::MAX as usize {
            bail!(
                "reduce",
                "{} rows exceed the grid limit of 2^31 - 1",
                axis.outer
            );
        }
        Ok(Plan {
            rows: true,
            splits: s,
            launch: Launch {
                grid: (axis.outer as u32, s as u32, 1),
                block: (256, 1, 1),
                shared_bytes: 0,
            },
        })
    } else {
        let tiles = axis.inner.div_ceil(COL_TILE);
        let s = splits(gpu, tiles * axis.outer, axis.r, 64 * COL_ROWS as usize);
        if tiles > i32::MAX as usize {
            bail!("reduce", "shape {axis:?} exceeds the grid limits");
        }
        Ok(Plan {
            rows: false,
            splits: s,
            launch: Launch {
                grid: (tiles as u32, axis.outer.min(65535) as u32, s as u32),
                block: (COL_TILE as u32, COL_ROWS, 1),
                shared_bytes: 0,
            },
        })
    }
}

/// The columns kernel `base` or its `_packed` twin, and its launch: one 16-byte pack of adjacent
/// columns per thread when every row of x (at address `xa`) starts 16-byte aligned, so the grid
/// covers `inner / lanes` threads along x.
fn cols_kernel(base: &str, t: ElemType, axis: Axis, xa: u64, launch: Launch) -> (String, Launch) {
    let lanes = 16 / t.size_in_bytes();
    if axis.inner.is_multiple_of(lanes) && xa.is_multiple_of(16) {
        let mut packed = launch;
        packed.grid.0 = axis.inner.div_ceil(COL_TILE * lanes) as u32;
        (format!("{base}_packed"), packed)
    } else {
        (base.to_string(), launch)
    }
}

fn check_input<T: DeviceElem>(
    gpu: &Gpu,
    op: &'static str,
    x: &Contig<'_, T>,
    axis: Axis,
) -> Result<u64> {
    gpu.same_device(op, x.buf)?;
    x.address(op, axis.len())
}

/// Σ (or Σ x², or the mean) over `axis.r`: output `[outer, inner]` of type `O` (T, or f32 for
/// f16/bf16 input).
pub fn sum<T: FloatElem, O: FloatElem>(
    gpu: &Gpu,
    x: Contig<'_, T>,
    axis: Axis,
    kind: SumKind,
) -> Result<DeviceBuffer<O>> {
    const OP: &str = "sum";
    if !SUM_TYPES.contains(&(T::TYPE, O::TYPE)) {
        bail!(OP, "no sum kernel from {} to {}", T::TYPE, O::TYPE);
    }
    let xa = check_input(gpu, OP, &x, axis)?;
    let out = gpu.alloc::<O>(axis.out_len())?;
    if axis.out_len() == 0 {
        return Ok(out);
    }
    let code = if kind == SumKind::SumSq {
        OP_SUMSQ
    } else {
        OP_SUM
    };
    let divisor = if kind == SumKind::Mean {
        axis.r as f64
    } else {
        1.0
    };
    let p = plan(gpu, axis)?;
    let (r64, inner64, outer64) = (
        len_i64(OP, axis.r)?,
        len_i64(OP, axis.inner)?,
        len_i64(OP, axis.outer)?,
    );
    let splits = p.splits as i32;
    let partial = gpu.alloc::<f64>(if p.splits > 1 {
        axis.out_len() * p.splits
    } else {
        0
    })?;
    let (pa, oa) = (partial.device_address(), out.device_address());
    let (t, o) = (T::TYPE, O::TYPE);
    // SAFETY: the argument lists match reduce.cu's sum entries; x holds outer*r*inner elements,
    // out outer*inner, partial outer*inner*splits when splits > 1 (never read otherwise).
    unsafe {
        if p.rows {
            gpu.launch(
                &REDUCE,
                &format!("sum_rows_{t}_{o}"),
                p.launch,
                &mut [
                    arg(&xa),
                    arg(&r64),
                    arg(&splits),
                    arg(&code),
                    arg(&divisor),
                    arg(&oa),
                    arg(&pa),
                ],
            )?;
            if p.splits > 1 {
                gpu.launch(
                    &REDUCE,
                    &format!("sum_rows_partials_{o}"),
                    Launch {
                        grid: (axis.outer as u32, 1, 1),
                        block: (256, 1, 1),
                        shared_bytes: 0,
                    },
                    &mut [arg(&pa), arg(&splits), arg(&divisor), arg(&oa)],
                )?;
            }
        } else {
            let (name, launch) = cols_kernel("sum_cols", t, axis, xa, p.launch);
            gpu.launch(
                &REDUCE,
                &format!("{name}_{t}_{o}"),
                launch,
                &mut [
                    arg(&xa),
                    arg(&outer64),
                    arg(&r64),
                    arg(&inner64),
                    arg(&splits),
                    arg(&code),
                    arg(&divisor),
                    arg(&oa),
                    arg(&pa),
                ],
            )?;
            if p.splits > 1 {
                gpu.launch(
                    &REDUCE,
                    &format!("sum_cols_partials_{o}"),
                    Launch::grid_stride(axis.out_len()),
                    &mut [
                        arg(&pa),
                        arg(&outer64),
                        arg(&inner64),
                        arg(&splits),
                        arg(&divisor),
                        arg(&oa),
                    ],
                )?;
            }
        }
    }
    Ok(out)
}

/// Σ x over `axis.r` of i64 or u8 input, as i64 `[outer, inner]` (wrapping; 0 for r = 0).
pub fn sum_int<T: DeviceElem>(
    gpu: &Gpu,
    x: Contig<'_, T>,
    axis: Axis,
) -> Result<DeviceBuffer<i64>> {
    const OP: &str = "sum";
    if !INT_SUM_TYPES.contains(&T::TYPE) {
        bail!(OP, "no integer sum kernel for {}", T::TYPE);
    }
    let xa = check_input(gpu, OP, &x, axis)?;
    let out = gpu.alloc::<i64>(axis.out_len())?;
    if axis.out_len() == 0 {
        return Ok(out);
    }
    let (r64, inner64, outer64) = (
        len_i64(OP, axis.r)?,
        len_i64(OP, axis.inner)?,
        len_i64(OP, axis.outer)?,
    );
    let oa = out.device_address();
    let launch = Launch {
        grid: (axis.out_len().min(65535) as u32, 1, 1),
        block: (256, 1, 1),
        shared_bytes: 0,
    };
    // SAFETY: matches `sum_int_<t>(const T*, i64, i64, i64, i64*)`; x holds outer*r*inner
    // elements (checked), out outer*inner.
    unsafe {
        gpu.launch(
            &REDUCE,
            &format!("sum_int_{}", T::TYPE),
            launch,
            &mut [arg(&xa), arg(&outer64), arg(&r64), arg(&inner64), arg(&oa)],
        )?;
    }
    Ok(out)
}

/// Runs a best-of reduction writing values (`out_val`) or indices (`out_idx`).
fn best<T: FloatElem>(
    gpu: &Gpu,
    op: &'static str,
    x: Contig<'_, T>,
    axis: Axis,
    code: i32,
    out_val: u64,
    out_idx: u64,
) -> Result<()> {
    let xa = check_input(gpu, op, &x, axis)?;
    if axis.r == 0 {
        bail!(op, "cannot reduce a zero-size dim");
    }
    if axis.out_len() == 0 {
        return Ok(());
    }
    let p = plan(gpu, axis)?;
    let (r64, inner64, outer64) = (
        len_i64(op, axis.r)?,
        len_i64(op, axis.inner)?,
        len_i64(op, axis.outer)?,
    );
    let splits = p.splits as i32;
    // Partials are reduce.cu's `Best` records: an f32 (padded to 8 bytes) and an i64.
    let partial = gpu.alloc::<i64>(if p.splits > 1 {
        2 * axis.out_len() * p.splits
    } else {
        0
    })?;
    let pa = partial.device_address();
    let t = T::TYPE;
    // SAFETY: the argument lists match reduce.cu's best entries; the output pointer the op
    // does not write may be anything (it is never dereferenced).
    unsafe {
        if p.rows {
            gpu.launch(
                &REDUCE,
                &format!("best_rows_{t}"),
                p.launch,
                &mut [
                    arg(&xa),
                    arg(&r64),
                    arg(&splits),
                    arg(&code),
                    arg(&out_val),
                    arg(&out_idx),
                    arg(&pa),
                ],
            )?;
            if p.splits > 1 {
                gpu.launch(
                    &REDUCE,
                    &format!("best_rows_partials_{t}"),
                    Launch {
                        grid: (axis.outer as u32, 1, 1),
                        block: (256, 1, 1),
                        shared_bytes: 0,
                    },
                    &mut [
                        arg(&pa),
                        arg(&splits),
                        arg(&code),
                        arg(&out_val),
                        arg(&out_idx),
                    ],
                )?;
            }
        } else {
            let (name, launch) = cols_kernel("best_cols", t, axis, xa, p.launch);
            gpu.launch(
                &REDUCE,
                &format!("{name}_{t}"),
                launch,
                &mut [
                    arg(&xa),
                    arg(&outer64),
                    arg(&r64),
                    arg(&inner64),
                    arg(&splits),
                    arg(&code),
                    arg(&out_val),
                    arg(&out_idx),
                    arg(&pa),
                ],
            )?;
            if p.splits > 1 {
                gpu.launch(
                    &REDUCE,
                    &format!("best_cols_partials_{t}"),
                    Launch::grid_stride(axis.out_len()),
                    &mut [
                        arg(&pa),
                        arg(&outer64),
                        arg(&inner64),
                        arg(&splits),
                        arg(&code),
                        arg(&out_val),
                        arg(&out_idx),
                    ],
                )?;
            }
        }
    }
    Ok(())
}

/// The max or min over `axis.r` (NaN if any element is NaN); errors on r = 0.
pub fn extreme<T: FloatElem>(
    gpu: &Gpu,
    x: Contig<'_, T>,
    axis: Axis,
    which: Extreme,
) -> Result<DeviceBuffer<T>> {
    let out = gpu.alloc::<T>(axis.out_len())?;
    let code = if which == Extreme::Max {
        OP_MAX
    } else {
        OP_MIN
    };
    best(gpu, "max/min", x, axis, code, out.device_address(), 0)?;
    Ok(out)
}

/// The index (i64) of the first max or min over `axis.r` (the first NaN if any); errors on r = 0.
pub fn arg_extreme<T: FloatElem>(
    gpu: &Gpu,
    x: Contig<'_, T>,
    axis: Axis,
    which: Extreme,
) -> Result<DeviceBuffer<i64>> {
    let out = gpu.alloc::<i64>(axis.out_len())?;
    let code = if which == Extreme::Max {
        OP_ARGMAX
    } else {
        OP_ARGMIN
    };
    best(gpu, "argmax/argmin", x, axis, code, 0, out.device_address())?;
    Ok(out)
}
