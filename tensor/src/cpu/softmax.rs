//! Softmax and log-softmax over the last dim (forward with a fused scale and additive mask, and
//! backward), plus the small vector toolkit the CPU row kernels share: [`VecFloat`] (an exp that
//! vectorises for f32), lane-parallel reductions (`sum`, `max`, `dot`, `sum_map`, `row_lse`),
//! `multiversion!` (compiles a hot loop for AVX-512 / AVX2 and picks one at run time) and
//! `build_rows` (fills a fresh, never zeroed output over blocks of whole rows, with rayon).
//!
//! Layout: every kernel takes row-major contiguous slices of `rows x n` elements, row `r` being
//! `r*n..(r+1)*n`. The optional additive mask is read in place through one storage offset per row
//! and a last-dim stride of 1 or 0, so a broadcast mask (`[B,1,1,S]` against `[B,H,S,S]`) is never
//! materialised.

use crate::Float;
use rayon::prelude::*;
use std::marker::PhantomData;
use std::mem::MaybeUninit;

/// What the row kernels need beyond [`Float`]: a fused multiply-add and an exp that vectorise.
/// f32 uses [`exp_fast`]; f64 (used by gradcheck) the exact libm exp.
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
        exp_fast(self)
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

/// exp for f32 in branch-free, FMA form, for vectorised loops: 2^k * p(r) with k = round(x/ln2)
/// and r = x - k ln2 (two-step Cody-Waite), p a degree-6 polynomial on |r| <= ln2/2.
/// Relative error below 1.5e-7 on [-87.3, 88.3] (tested). -inf and inputs below -87.33 give 0,
/// inputs above 88.37 give +inf (the true overflow is at 88.72), NaN gives NaN.
///
/// It differs from `cpu::math::exp_f32` in the ways that decide whether LLVM can vectorise it:
/// k is read back from the float's bits rather than with a saturating `as i32` (which LLVM
/// scalarises lane by lane), the clamp keeps 2^k a single normal float (one scale, not two), and
/// the polynomial uses fused multiply-adds.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23 + 127: adding it rounds x/ln2 to the integer k and leaves k + 127, the biased
    // exponent of 2^k, in the low mantissa bits.
    const SHIFT: f32 = 12_583_039.0;
    const LO: f32 = -87.33;
    const HI: f32 = 88.37;
    let xc = x.clamp(LO, HI); // k + 127 in [1, 254]; NaN stays NaN
    let kf = xc.mul_add(LOG2E, SHIFT);
    let k = kf - SHIFT;
    let r = k.mul_add(-LN2_LO, k.mul_add(-LN2_HI, xc));
    // Minimax-fitted (relative error 3e-9 on the interval, far below f32 rounding).
    const C: [f32; 7] = [
        1.0,
        1.0,
        0.499_999_94,
        0.166_665_2,
        0.041_668_393,
        0.008_368_781,
        0.001_381_444_6,
    ];
    let mut p = C[6];
    for &c in C[..6].iter().rev() {
        p = p.mul_add(r, c);
    }
    let y = p * f32::from_bits(kf.to_bits() << 23);
    if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        y
    }
}

// ---- run-time SIMD dispatch ------------------------------------------------------------------

/// 2 when the CPU has AVX-512 (x86-64-v4), 1 for AVX2+FMA (v3), 0 otherwise. Cached.
#[inline]
pub(crate) fn simd_level() -> u8 {
    use std::sync::atomic::{AtomicU8, Ordering};
    static LEVEL: AtomicU8 = AtomicU8::new(u8::MAX);
    #[cfg(test)]
    if tests::FORCE_BASELINE.load(Ordering::Relaxed) {
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
                match $crate::cpu::softmax::simd_level() {
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

// ---- softmax ---------------------------------------------------------------------------------

/// An additive mask read in place: row `r` of the (broadcast) mask starts at `data[row_offsets[r]]`
/// and steps by `stride` (1, or 0 for a mask whose last dim is broadcast).
pub struct RowMask<'a, T> {
    pub data: &'a [T],
    pub row_offsets: &'a [usize],
    pub stride: usize,
}

/// softmax(x * scale + mask) over rows of `n` (or log-softmax when `log`). A row whose shifted
/// inputs are all -inf gives zeros (softmax) or -inf (log-softmax), never NaN.
pub fn softmax_last<T: VecFloat>(
    x: &[T],
    n: usize,
    mask: Option<&RowMask<'_, T>>,
    scale: T,
    log: bool,
) -> Vec<T> {
    let rows = x.len().checked_div(n).unwrap_or(0);
    let op = RowOp {
        n,
        mask,
        scale,
        log,
    };
    build(rows, n, |r0, rows, out| softmax_rows(x, r0, rows, out, op))
}

/// What `softmax_rows` does to each row of `n`.
#[derive(Clone, Copy)]
struct RowOp<'a, T> {
    n: usize,
    mask: Option<&'a RowMask<'a, T>>,
    scale: T,
    log: bool,
}

multiversion! {
    fn softmax_rows<'a, T: VecFloat>(
        x: &[T],
        r0: usize,
        rows: usize,
        out: Uninit<'a, T>,
        op: RowOp<'_, T>,
    ) -> Filled<'a> {
        let RowOp { n, mask, scale, log } = op;
        let mut out = out;
        for r in r0..r0 + rows {
            let xr = &x[r * n..(r + 1) * n];
            let y = match mask {
                None => out.next(n, xr.iter().map(|&v| v * scale)),
                Some(m) if m.stride == 0 => {
                    let mv = m.data[m.row_offsets[r]];
                    out.next(n, xr.iter().map(|&v| v.fma(scale, mv)))
                }
                Some(m) => {
                    let mr = &m.data[m.row_offsets[r]..][..n];
                    out.next(n, xr.iter().zip(mr).map(|(&v, &mv)| v.fma(scale, mv)))
                }
            };
            if log {
                let (_, lse) = row_lse(y);
                if lse == T::NEG_INFINITY {
                    y.fill(lse);
                    continue;
                }
                for v in y.iter_mut() {
                    *v = *v - lse;
                }
                continue;
            }
            let mx = max(y);
            if mx == T::NEG_INFINITY {
                y.fill(T::ZERO);
                continue;
            }
            for v in y.iter_mut() {
                *v = (*v - mx).vexp();
            }
            let inv = T::ONE / sum(y);
            for v in y.iter_mut() {
                *v *= inv;
            }
        }
        out.finish()
    }
}

/// Backward of `softmax_last` / `log_softmax_last` over rows of `n`, from the forward output `y`
/// (softmax, or log-softmax when `log`) and the output gradient `dy`:
/// softmax: scale * y * (dy - Σ dy·y); log-softmax: scale * (dy - exp(y) * Σ dy).
pub fn softmax_backward<T: VecFloat>(y: &[T], dy: &[T], n: usize, scale: T, log: bool) -> Vec<T> {
    let rows = y.len().checked_div(n).unwrap_or(0);
    build(rows, n, |r0, rows, out| {
        let range = r0 * n..(r0 + rows) * n;
        backward_rows(&y[range.clone()], &dy[range], n, out, scale, log)
    })
}

multiversion! {
    fn backward_rows<'a, T: VecFloat>(
        y: &[T],
        dy: &[T],
        n: usize,
        out: Uninit<'a, T>,
        scale: T,
        log: bool,
    ) -> Filled<'a> {
        let mut out = out;
        for (y, dy) in y.chunks_exact(n).zip(dy.chunks_exact(n)) {
            if log {
                let s = sum(dy);
                out.next(n, y.iter().zip(dy).map(|(&y, &g)| scale * (-y.vexp()).fma(s, g)));
            } else {
                let s = dot(dy, y);
                out.next(n, y.iter().zip(dy).map(|(&y, &g)| scale * y * (g - s)));
            }
        }
        out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Makes every `multiversion!` kernel take its baseline build (only for the test below; the
    /// builds agree bitwise, so other tests running meanwhile are unaffected).
    pub(super) static FORCE_BASELINE: AtomicBool = AtomicBool::new(false);

    #[test]
    fn simd_builds_agree_bitwise_with_the_baseline() {
        let x: Vec<f32> = (0..3 * 70)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.01 - 5.0)
            .collect();
        let w: Vec<f32> = (0..70).map(|i| 1.0 + i as f32 * 0.01).collect();
        let t: Vec<i64> = vec![3, -100, 69];
        let run = || {
            let y = softmax_last(&x, 70, None, 0.7, false);
            let ly = softmax_last(&x, 70, None, 0.7, true);
            let dy = softmax_backward(&y, &x, 70, 0.7, false);
            let (ln, m, r) = crate::cpu::layer_norm::layer_norm(&x, 3, &w, &w, 1e-5);
            let (dx, dw, db) = crate::cpu::layer_norm::layer_norm_backward(&x, &w, &m, &r, &x);
            let g = crate::cpu::activation::gelu(&x);
            let dg = crate::cpu::activation::gelu_backward(&x, &x);
            let ce = crate::cpu::loss::cross_entropy(&x, 70, &t, -100);
            let dce = crate::cpu::loss::cross_entropy_backward(&x, 70, &t, &ce.lse, -100, 0.5);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            [y, ly, dy, ln, m, r, dx, dw, db, g, dg, ce.lse, dce].map(|v| bits(&v))
        };
        let fast = run();
        FORCE_BASELINE.store(true, Ordering::Relaxed);
        let base = run();
        FORCE_BASELINE.store(false, Ordering::Relaxed);
        assert!(fast == base, "SIMD and baseline builds differ");
    }

    #[test]
    fn exp_fast_is_accurate_and_handles_the_edges() {
        let mut worst = 0f64;
        let mut x = -87.3f32;
        while x < 88.3 {
            let want = (x as f64).exp();
            worst = worst.max(((exp_fast(x) as f64 - want) / want).abs());
            x += 0.00731;
        }
        assert!(worst < 1.5e-7, "worst relative error {worst}");
        assert_eq!(exp_fast(0.0), 1.0);
        assert_eq!(exp_fast(-88.0), 0.0);
        assert_eq!(exp_fast(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_fast(89.0), f32::INFINITY);
        assert!(exp_fast(f32::NAN).is_nan());
    }

    #[test]
    fn reductions_match_sequential_sums() {
        for n in [0, 1, 15, 64, 65, 200, 1000] {
            let a: Vec<f64> = (0..n).map(|i| ((i * 37) % 11) as f64 - 4.5).collect();
            let b: Vec<f64> = (0..n).map(|i| ((i * 13) % 7) as f64 * 0.25).collect();
            assert_eq!(sum(&a), a.iter().sum::<f64>());
            assert_eq!(
                dot(&a, &b),
                a.iter().zip(&b).map(|(x, y)| x * y).sum::<f64>()
            );
            let m = a.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            assert_eq!(max(&a), m);
            let c = 0.3;
            let want: f64 = a.iter().map(|v| (v - c) * (v - c)).sum();
            assert!((sum_sq_dev(&a, c) - want).abs() < 1e-9);
            let want: f64 = a.iter().map(|v| v.exp()).sum();
            assert!((sum_map(&a, |v| v.vexp()) - want).abs() <= 1e-12 * want.max(1.0));
        }
    }
}
