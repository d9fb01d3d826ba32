//! Softmax and log-softmax over the last dim: forward with a fused scale and additive mask, and
//! backward. Built on the row toolkit in `cpu::simd`.
//!
//! Layout: every kernel takes row-major contiguous slices of `rows x n` elements, row `r` being
//! `r*n..(r+1)*n`. The optional additive mask is read in place through one storage offset per row
//! and a last-dim stride of 1 or 0, so a broadcast mask (`[B,1,1,S]` against `[B,H,S,S]`) is never
//! materialised.

use crate::cpu::simd::*;

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

// ANCHOR: softmax_rows
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
            normalise(y);
        }
        out.finish()
    }
}
// ANCHOR_END: softmax_rows

/// softmax of a row of shifted inputs, in place: exp(y - max y) / Σ; zeros when all are -inf.
#[inline(always)]
fn normalise<T: VecFloat>(y: &mut [T]) {
    let mx = max(y);
    if mx == T::NEG_INFINITY {
        y.fill(T::ZERO);
        return;
    }
    for v in y.iter_mut() {
        *v = (*v - mx).vexp();
    }
    let inv = T::ONE / sum(y);
    for v in y.iter_mut() {
        *v *= inv;
    }
}

multiversion! {
    /// `softmax_last` of rows `r0..` (rows of `n`, all of `x`) in place: the same arithmetic as
    /// the out-of-place kernel, so the same bits. Mask rows are indexed from `r0`. The fused
    /// attention (`cpu::attention_bf16`) runs it on each head's score block.
    pub(crate) fn softmax_rows_in_place<T: VecFloat>(
        x: &mut [T],
        n: usize,
        r0: usize,
        mask: Option<&RowMask<'_, T>>,
        scale: T,
    ) {
        for (r, y) in (r0..).zip(x.chunks_exact_mut(n)) {
            match mask {
                None => y.iter_mut().for_each(|v| *v *= scale),
                Some(m) if m.stride == 0 => {
                    let mv = m.data[m.row_offsets[r]];
                    y.iter_mut().for_each(|v| *v = v.fma(scale, mv));
                }
                Some(m) => {
                    let mr = &m.data[m.row_offsets[r]..][..n];
                    y.iter_mut().zip(mr).for_each(|(v, &mv)| *v = v.fma(scale, mv));
                }
            }
            normalise(y);
        }
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

// ANCHOR: softmax_backward_rows
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
// ANCHOR_END: softmax_backward_rows

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

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
        crate::cpu::simd::FORCE_BASELINE.store(true, Ordering::Relaxed);
        let base = run();
        crate::cpu::simd::FORCE_BASELINE.store(false, Ordering::Relaxed);
        assert!(fast == base, "SIMD and baseline builds differ");
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
