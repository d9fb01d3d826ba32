//! The vector toolkit the CPU row kernels share: [`VecFloat`] (an exp that vectorises for f32),
//! `multiversion!` (compiles a hot loop for AVX-512 / AVX2 and picks one at run time),
//! lane-parallel reductions (`sum`, `max`, `dot`, `sum_map`, `row_lse`), and `build_rows` (fills a
//! fresh, never zeroed output over blocks of whole rows, with rayon).
//!
//! Layout: kernels built on it take row-major contiguous slices of `rows x n` elements, row `r`
//! being `r*n..(r+1)*n`.

use crate::cpu::math::exp_f32;
use crate::Float;
use rayon::prelude::*;
use std::marker::PhantomData;
use std::mem::MaybeUninit;

/// What the row kernels need beyond [`Float`]: a fused multiply-add and an exp that vectorise.
/// f32 uses [`exp_f32`]; f64 (used by gradcheck) the exact libm exp.
pub trait VecFloat: Float {
    /// e^self.
    fn vexp(self) -> Self;
    /// self * a + b with one rounding (`mul_add`: one instruction in the AVX2/AVX-512 builds of
    /// `multiversion!` kernels, a libm call in the baseline build).
    fn fma(self, a: Self, b: Self) -> Self;
}

impl VecFloat for f32 {
    #[inline(always)]
    fn vexp(self) -> f32 {
        exp_f32(self)
    }
    #[inline(always)]
    fn fma(self, a: f32, b: f32) -> f32 {
        self.mul_add(a, b)
    }
}

impl VecFloat for f64 {
    #[inline(always)]
    fn vexp(self) -> f64 {
        self.exp()
    }
    #[inline(always)]
    fn fma(self, a: f64, b: f64) -> f64 {
        self.mul_add(a, b)
    }
}

// ---- run-time SIMD dispatch ------------------------------------------------------------------

/// 2 when the CPU has AVX-512 (x86-64-v4), 1 for AVX2+FMA (v3), 0 otherwise. Cached.
/// Makes every `multiversion!` kernel take its baseline build (for the test that checks the builds
/// agree bitwise, so other tests running meanwhile are unaffected).
#[cfg(test)]
pub(crate) static FORCE_BASELINE: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

#[inline]
pub(crate) fn simd_level() -> u8 {
    use std::sync::atomic::{AtomicU8, Ordering};
    static LEVEL: AtomicU8 = AtomicU8::new(u8::MAX);
    #[cfg(test)]
    if FORCE_BASELINE.load(Ordering::Relaxed) {
        return 0;
    }
    let l = LEVEL.load(Ordering::Relaxed);
    if l != u8::MAX {
        return l;
    }
    #[cfg(target_arch = "x86_64")]
    let level = {
        use std::arch::is_x86_feature_detected as has;
        let v3 = has!("avx2") && has!("fma") && has!("bmi2") && has!("f16c");
        let v4 = v3 && has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl");
        if v4 {
            2
        } else {
            u8::from(v3)
        }
    };
    #[cfg(not(target_arch = "x86_64"))]
    let level = 0;
    LEVEL.store(level, Ordering::Relaxed);
    level
}

/// Defines a function whose body is compiled three times: for AVX-512 (x86-64-v4), for AVX2+FMA
/// (v3) and for the baseline, running the best one the CPU supports. The workspace targets
/// baseline x86-64 (SSE2, where even `f32::round` is a libm call), so this is how the hot loops
/// get 16-lane SIMD. Fused multiply-adds round once in hardware and in libm alike, so all three
/// give bitwise equal results (the baseline build is slow at them: each is a libm call).
/// Syntax: `multiversion! { fn name<'a, T: Bound>(args...) -> Ret { body } }`, the lifetime
/// optional.
macro_rules! multiversion {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident<$($lt:lifetime,)? $T:ident: $bound:path>
            ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$meta])*
        $vis fn $name<$($lt,)? $T: $bound>($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn imp<$($lt,)? $T: $bound>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi2,f16c")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v4<$($lt,)? $T: $bound>($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                #[target_feature(enable = "avx2,fma,bmi2,f16c")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v3<$($lt,)? $T: $bound>($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                match $crate::cpu::simd::simd_level() {
                    // SAFETY: `simd_level` checked that the CPU has the enabled features.
                    2 => return unsafe { v4($($arg),*) },
                    1 => return unsafe { v3($($arg),*) },
                    _ => {}
                }
            }
            imp($($arg),*)
        }
    };
}
pub(crate) use multiversion;

// ---- lane-parallel reductions ----------------------------------------------------------------

/// Independent accumulators per reduction: float adds do not reassociate, so a single
/// accumulator would serialise the loop on the add latency. 32 f32 lanes are two AVX-512
/// registers; measured, 64 made LLVM keep the accumulators in memory and 16 was latency-bound.
pub(crate) const LANES: usize = 32;

/// Merges the `LANES` accumulators pairwise (a tree, so the merge vectorises too) into one.
#[inline(always)]
pub(crate) fn merge_lanes<T: Float>(mut acc: [T; LANES], merge: impl Fn(T, T) -> T) -> T {
    let mut width = LANES / 2;
    while width > 0 {
        for j in 0..width {
            acc[j] = merge(acc[j], acc[j + width]);
        }
        width /= 2;
    }
    acc[0]
}

/// `step`-folds `x` into `LANES` accumulators (element i into lane i % LANES), then merges the
/// lanes and the tail with `merge`. Deterministic for a given length.
#[inline(always)]
fn lane_fold<T: Float>(x: &[T], init: T, step: impl Fn(T, T) -> T, merge: impl Fn(T, T) -> T) -> T {
    let mut acc = [init; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder().iter().fold(init, |a, &v| step(a, v));
    for c in chunks {
        for j in 0..LANES {
            acc[j] = step(acc[j], c[j]);
        }
    }
    merge(tail, merge_lanes(acc, &merge))
}

/// Σ x.
#[inline(always)]
pub(crate) fn sum<T: Float>(x: &[T]) -> T {
    lane_fold(x, T::ZERO, |a, v| a + v, |a, b| a + b)
}

/// max x (NaNs are skipped; -inf for an empty slice).
#[inline(always)]
pub(crate) fn max<T: Float>(x: &[T]) -> T {
    let mut acc = [T::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let mut r = T::NEG_INFINITY;
    for &v in chunks.remainder() {
        r = if v > r { v } else { r };
    }
    for c in chunks {
        for j in 0..LANES {
            acc[j] = if c[j] > acc[j] { c[j] } else { acc[j] };
        }
    }
    let mut width = LANES / 2;
    while width > 0 {
        for j in 0..width {
            acc[j] = if acc[j + width] > acc[j] {
                acc[j + width]
            } else {
                acc[j]
            };
        }
        width /= 2;
    }
    if acc[0] > r {
        acc[0]
    } else {
        r
    }
}

/// Σ (x - c)².
#[inline(always)]
pub(crate) fn sum_sq_dev<T: VecFloat>(x: &[T], c: T) -> T {
    lane_fold(
        x,
        T::ZERO,
        |a, v| {
            let d = v - c;
            d.fma(d, a)
        },
        |a, b| a + b,
    )
}

/// Σ a·b over the common length.
#[inline(always)]
pub(crate) fn dot<T: VecFloat>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [T::ZERO; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let r = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .fold(T::ZERO, |s, (&x, &y)| s + x * y);
    for (x, y) in ca.zip(cb) {
        for j in 0..LANES {
            acc[j] = x[j].fma(y[j], acc[j]);
        }
    }
    r + merge_lanes(acc, |a, b| a + b)
}

/// Σ f(x) for a costly `f` (exp): `f` runs as a plain map over stack tiles, which LLVM
/// vectorises reliably, and each tile is summed with [`sum`].
#[inline(always)]
pub(crate) fn sum_map<T: Float>(x: &[T], f: impl Fn(T) -> T) -> T {
    const TILE: usize = 256;
    let mut buf = [T::ZERO; TILE];
    let mut total = T::ZERO;
    for c in x.chunks(TILE) {
        let b = &mut buf[..c.len()];
        for (o, &v) in b.iter_mut().zip(c) {
            *o = f(v);
        }
        total += sum(b);
    }
    total
}

/// (max, log Σ exp x) of a row; the log-sum-exp is -inf when every element is -inf (or the row
/// is empty).
#[inline(always)]
pub(crate) fn row_lse<T: VecFloat>(x: &[T]) -> (T, T) {
    let mx = max(x);
    if mx == T::NEG_INFINITY {
        return (mx, mx);
    }
    let s = sum_map(x, |v| (v - mx).vexp());
    (mx, mx + s.ln())
}

// ---- output buffers and parallel row blocks ----------------------------------------------------

/// Elements per rayon task in the row kernels, and the job size under which a kernel stays on
/// the calling thread (rayon's overhead would dominate).
pub(crate) const TASK_ELEMS: usize = 1 << 14;
pub(crate) const PAR_MIN: usize = 1 << 15;

/// Rows per task for `rows` rows of `n` elements: all of them when the job is small. Depends on
/// the shape only, never on the thread count, so block-wise partial sums are reproducible.
pub(crate) fn rows_per_task(rows: usize, n: usize) -> usize {
    if rows.saturating_mul(n) < PAR_MIN {
        rows.max(1)
    } else {
        (TASK_ELEMS / n.max(1)).max(1)
    }
}

/// A block of a fresh output buffer, which a kernel writes front to back with [`Uninit::next`]
/// and hands back with [`Uninit::finish`]. Output buffers start uninitialised: zero-filling them
/// first would cost a whole extra pass over memory, and these kernels are memory-bound.
pub(crate) struct Uninit<'a, T> {
    buf: &'a mut [MaybeUninit<T>],
    done: usize,
}

/// Proof that one block was completely written: only [`Uninit::finish`] makes one, and it
/// cannot outlive the block's borrow.
pub(crate) struct Filled<'a> {
    addr: usize,
    len: usize,
    _block: PhantomData<&'a mut ()>,
}

impl<'a, T> Uninit<'a, T> {
    /// Writes the next `len` elements from `src` and returns them, now initialised. Panics if
    /// `src` yields fewer.
    #[inline(always)]
    pub(crate) fn next(&mut self, len: usize, src: impl Iterator<Item = T>) -> &mut [T] {
        let dst = &mut self.buf[self.done..self.done + len];
        let mut written = 0;
        for (d, v) in dst.iter_mut().zip(src) {
            d.write(v);
            written += 1;
        }
        assert_eq!(written, len, "output source ended early");
        self.done += len;
        // SAFETY: every element of `dst` was written just above.
        unsafe { &mut *(dst as *mut [MaybeUninit<T>] as *mut [T]) }
    }

    /// Ends the block; panics unless every element was written.
    pub(crate) fn finish(self) -> Filled<'a> {
        assert_eq!(self.done, self.buf.len(), "output block not fully written");
        Filled {
            addr: self.buf.as_ptr() as usize,
            len: self.buf.len(),
            _block: PhantomData,
        }
    }
}

/// A fresh buffer of `aux.len()` rows of `n` elements, written by `f(first_row, block, aux_block)`
/// over consecutive blocks of `per_block` whole rows (in parallel when there are several), where
/// `aux` holds one entry per row for per-row side outputs.
pub(crate) fn build_rows<T: Send, A: Send>(
    n: usize,
    per_block: usize,
    aux: &mut [A],
    f: impl for<'b> Fn(usize, Uninit<'b, T>, &mut [A]) -> Filled<'b> + Sync,
) -> Vec<T> {
    let rows = aux.len();
    let mut buf: Box<[MaybeUninit<T>]> = Box::new_uninit_slice(rows * n);
    let run = |r0: usize, block: &mut [MaybeUninit<T>], a: &mut [A]| {
        let (addr, len) = (block.as_ptr() as usize, block.len());
        let done = f(
            r0,
            Uninit {
                buf: block,
                done: 0,
            },
            a,
        );
        assert!(
            done.addr == addr && done.len == len,
            "kernel finished another block"
        );
    };
    let per = per_block.max(1);
    if per >= rows || n == 0 {
        run(0, &mut buf, aux);
    } else {
        buf.par_chunks_mut(per * n)
            .zip(aux.par_chunks_mut(per))
            .enumerate()
            .for_each(|(i, (b, a))| run(i * per, b, a));
    }
    // SAFETY: the blocks cover the buffer, and `run` checked for each that `f` returned the
    // `Filled` proof of exactly that block, which `Uninit::finish` only gives once all of the
    // block's elements are written.
    unsafe { buf.assume_init() }.into_vec()
}

/// [`build_rows`] with the default block size and no side outputs.
pub(crate) fn build<T: Send>(
    rows: usize,
    n: usize,
    f: impl for<'b> Fn(usize, usize, Uninit<'b, T>) -> Filled<'b> + Sync,
) -> Vec<T> {
    let per = rows_per_task(rows, n);
    build_rows(n, per, &mut vec![(); rows], |r0, out, a| {
        f(r0, a.len(), out)
    })
}
