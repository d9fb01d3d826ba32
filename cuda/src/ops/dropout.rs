//! Dropout and the random fills on the Philox stream (`kernels/dropout.cu`): element i of a draw
//! is a pure function of (seed, offset, i), the same number tensor/src/rng.rs computes on the CPU,
//! so masks and initialisations agree across devices. The caller reserves the counter blocks
//! (`Rng::reserve(n, 4)` for uniform draws and masks, `Rng::reserve(n, 2)` for normal draws) and
//! passes the seed and the draw's first block.

use super::{len_i64, FloatElem, FLOATS};
use crate::buffer::DeviceBuffer;
use crate::error::bail;
use crate::gpu::{arg, Gpu, Launch};
use crate::nvrtc::{kernels::DROPOUT, KernelFile};
use crate::strided::Contig;
use crate::Result;

pub(crate) fn kernel_names() -> Vec<(&'static KernelFile, String)> {
    let mut v = vec!["philox_mask".to_string()];
    for t in FLOATS {
        for k in ["dropout_fwd", "dropout_apply", "uniform", "normal"] {
            v.push(format!("{k}_{t}"));
        }
    }
    for half in ["f16", "bf16"] {
        v.push(format!("dropout_add_{half}_f32"));
        v.push(format!("dropout_apply_f32_{half}"));
    }
    v.into_iter().map(|n| (&DROPOUT, n)).collect()
}

/// Where a draw comes from: the generator's seed and the first counter block of the draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Draw {
    pub seed: u64,
    pub offset: u64,
}

fn check_p(op: &'static str, p: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&p) {
        bail!(op, "p must be in [0, 1], got {p}");
    }
    Ok(())
}

/// 1 / (1 - p) in f64, rounded to f32 (0 for p = 1), as the CPU scales kept elements.
pub(crate) fn keep_scale(p: f64) -> f32 {
    if p < 1.0 {
        (1.0 / (1.0 - p)) as f32
    } else {
        0.0
    }
}

/// Inverted dropout of `n` contiguous elements with drop probability `p`: (out, keep mask u8).
/// Element i is kept iff uniform word i of the draw is >= p (in f32).
pub fn dropout<T: FloatElem>(
    gpu: &Gpu,
    x: Contig<'_, T>,
    n: usize,
    p: f64,
    draw: Draw,
) -> Result<(DeviceBuffer<T>, DeviceBuffer<u8>)> {
    let name = format!("dropout_fwd_{}", T::TYPE);
    dropout_fwd::<T, T>("dropout", &name, gpu, x, None, n, p, draw)
}

/// `dropout(x) + residual` in one pass (BERT's output layers), the same keep mask as
/// [`dropout`] and the dropped value rounded to T before the add, as the two ops would round.
/// The residual and the output have type R: T, or f32 for a half (f16/bf16) branch, as autocast
/// adds a half product into the f32 hidden state (the sum in f32, no cast of x).
pub fn dropout_add<T: FloatElem, R: FloatElem>(
    gpu: &Gpu,
    x: Contig<'_, T>,
    residual: Contig<'_, R>,
    n: usize,
    p: f64,
    draw: Draw,
) -> Result<(DeviceBuffer<R>, DeviceBuffer<u8>)> {
    const OP: &str = "dropout_add";
    let name = match T::TYPE == R::TYPE {
        true => format!("dropout_fwd_{}", T::TYPE),
        false => format!("dropout_add_{}_{}", T::TYPE, R::TYPE),
    };
    if !kernel_names().iter().any(|(_, k)| *k == name) {
        bail!(
            OP,
            "no kernel for a {} branch and a {} residual",
            T::TYPE,
            R::TYPE
        );
    }
    dropout_fwd::<T, R>(OP, &name, gpu, x, Some(residual), n, p, draw)
}

#[allow(clippy::too_many_arguments)]
fn dropout_fwd<T: FloatElem, R: FloatElem>(
    op: &'static str,
    kernel: &str,
    gpu: &Gpu,
    x: Contig<'_, T>,
    residual: Option<Contig<'_, R>>,
    n: usize,
    p: f64,
    draw: Draw,
) -> Result<(DeviceBuffer<R>, DeviceBuffer<u8>)> {
    check_p(op, p)?;
    gpu.same_device(op, x.buf)?;
    let xa = x.address(op, n)?;
    let ra = match residual {
        Some(r) => {
            gpu.same_device(op, r.buf)?;
            r.address(op, n)?
        }
        None => 0u64,
    };
    let (out, keep) = (gpu.alloc::<R>(n)?, gpu.alloc::<u8>(n)?);
    if n == 0 {
        return Ok((out, keep));
    }
    let (oa, ka, n64) = (out.device_address(), keep.device_address(), len_i64(op, n)?);
    let (p32, scale) = (p as f32, keep_scale(p));
    // SAFETY: matches `dropout_fwd_<t>` / `dropout_add_<t>_<r>(const T*, const R* (residual or
    // null), R*, u8*, i64, u64, u64, float, float)` (R = T for the first); x and the residual
    // hold n elements.
    unsafe {
        gpu.launch(
            &DROPOUT,
            kernel,
            Launch::grid_stride(n.div_ceil(4)),
            &mut [
                arg(&xa),
                arg(&ra),
                arg(&oa),
                arg(&ka),
                arg(&n64),
                arg(&draw.seed),
                arg(&draw.offset),
                arg(&p32),
                arg(&scale),
            ],
        )?;
    }
    Ok((out, keep))
}

/// `x * keep / (1 - p)` with a given keep mask (dropout's backward, on the output gradient).
pub fn dropout_apply<T: FloatElem>(
    gpu: &Gpu,
    x: Contig<'_, T>,
    keep: Contig<'_, u8>,
    n: usize,
    p: f64,
) -> Result<DeviceBuffer<T>> {
    dropout_apply_to::<T, T>(gpu, x, keep, n, p)
}

/// [`dropout_apply`] with the result in another float type O: T = O, or an f32 gradient into a
/// half branch's type (the backward of [`dropout_add`] with a half branch), rounded once.
pub fn dropout_apply_to<T: FloatElem, O: FloatElem>(
    gpu: &Gpu,
    x: Contig<'_, T>,
    keep: Contig<'_, u8>,
    n: usize,
    p: f64,
) -> Result<DeviceBuffer<O>> {
    const OP: &str = "dropout_backward";
    let kernel = match T::TYPE == O::TYPE {
        true => format!("dropout_apply_{}", T::TYPE),
        false => format!("dropout_apply_{}_{}", T::TYPE, O::TYPE),
    };
    if !kernel_names().iter().any(|(_, k)| *k == kernel) {
        bail!(OP, "no kernel from {} into {}", T::TYPE, O::TYPE);
    }
    check_p(OP, p)?;
    gpu.same_device(OP, x.buf)?;
    gpu.same_device(OP, keep.buf)?;
    let (xa, ka) = (x.address(OP, n)?, keep.address(OP, n)?);
    let out = gpu.alloc::<O>(n)?;
    if n == 0 {
        return Ok(out);
    }
    let (oa, n64, scale) = (out.device_address(), len_i64(OP, n)?, keep_scale(p));
    // SAFETY: matches `dropout_apply_<t>` / `dropout_apply_<t>_<o>(const T*, const u8*, O*, i64,
    // float)`.
    unsafe {
        gpu.launch(
            &DROPOUT,
            &kernel,
            Launch::grid_stride(n),
            &mut [arg(&xa), arg(&ka), arg(&oa), arg(&n64), arg(&scale)],
        )?;
    }
    Ok(out)
}

/// A u8 mask of `n` elements: 1 where uniform element i of the draw is < p (Tensor::bernoulli).
pub fn bernoulli(gpu: &Gpu, n: usize, p: f64, draw: Draw) -> Result<DeviceBuffer<u8>> {
    const OP: &str = "bernoulli";
    check_p(OP, p)?;
    let out = gpu.alloc::<u8>(n)?;
    if n == 0 {
        return Ok(out);
    }
    let (oa, n64, p32, below) = (out.device_address(), len_i64(OP, n)?, p as f32, 1u32);
    // SAFETY: matches `philox_mask(u8*, i64, u64, u64, float, u32)`.
    unsafe {
        gpu.launch(
            &DROPOUT,
            "philox_mask",
            Launch::grid_stride(n.div_ceil(4)),
            &mut [
                arg(&oa),
                arg(&n64),
                arg(&draw.seed),
                arg(&draw.offset),
                arg(&p32),
                arg(&below),
            ],
        )?;
    }
    Ok(out)
}

/// `n` draws rounded to `T`: uniform in [lo, hi) (`normal` false) or normal with mean `lo` and
/// std `hi` (`normal` true), computed in f64 as Tensor::rand_uniform / Tensor::randn.
fn fill<T: FloatElem>(
    gpu: &Gpu,
    op: &'static str,
    n: usize,
    a: f64,
    b: f64,
    draw: Draw,
    normal: bool,
) -> Result<DeviceBuffer<T>> {
    let out = gpu.alloc::<T>(n)?;
    if n == 0 {
        return Ok(out);
    }
    let (oa, n64) = (out.device_address(), len_i64(op, n)?);
    let (name, work) = if normal {
        (format!("normal_{}", T::TYPE), n.div_ceil(2))
    } else {
        (format!("uniform_{}", T::TYPE), n.div_ceil(4))
    };
    // SAFETY: matches `uniform_<t>` / `normal_<t>(T*, i64, u64, u64, double, double)`.
    unsafe {
        gpu.launch(
            &DROPOUT,
            &name,
            Launch::grid_stride(work),
            &mut [
                arg(&oa),
                arg(&n64),
                arg(&draw.seed),
                arg(&draw.offset),
                arg(&a),
                arg(&b),
            ],
        )?;
    }
    Ok(out)
}

/// `n` uniform draws in [lo, hi): lo + (hi - lo) u in f64, rounded to `T`.
pub fn uniform<T: FloatElem>(
    gpu: &Gpu,
    n: usize,
    lo: f64,
    hi: f64,
    draw: Draw,
) -> Result<DeviceBuffer<T>> {
    fill(gpu, "rand_uniform", n, lo, hi, draw, false)
}

/// `n` normal draws: mean + std z (Box-Muller in f64), rounded to `T`.
pub fn normal<T: FloatElem>(
    gpu: &Gpu,
    n: usize,
    mean: f64,
    std: f64,
    draw: Draw,
) -> Result<DeviceBuffer<T>> {
    fill(gpu, "randn", n, mean, std, draw, true)
}
