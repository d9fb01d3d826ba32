//! LayerNorm over the last dim, forward and backward, fused per row.
//!
//! Layout: `x`, `y`, `dy`, `dx` are row-major `rows x n` slices (row `r` at `r*n..(r+1)*n`);
//! `w`, `b`, `dw`, `db` have `n` elements; `mean` and `rstd` one per row. Forward reads each row
//! from memory once (the statistics are two exact passes over the row while it sits in L1: mean,
//! then the biased variance Σ(x - mean)² / n). Backward takes two passes per row (the sums
//! Σ dy·w and Σ dy·w·(x - mean), then one that writes dx and accumulates dw/db into a partial
//! sum per block of rows); the blocks are fixed by the shape alone and their partials added in
//! block order, so results do not depend on the thread count.

use crate::cpu::simd::{
    build_rows, merge_lanes, multiversion, rows_per_task, sum, sum_sq_dev, Filled, Uninit,
    VecFloat, LANES,
};

/// Most partial (dw, db) sums backward keeps; longer inputs get longer blocks.
const MAX_PARTIALS: usize = 64;

/// (y, mean, rstd) for `rows` rows of n = `w.len()`: y = (x - mean) * rstd * w + b with
/// rstd = 1 / sqrt(var + eps). Rows of length 0 have NaN statistics.
pub fn layer_norm<T: VecFloat>(
    x: &[T],
    rows: usize,
    w: &[T],
    b: &[T],
    eps: T,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let n = w.len();
    let mut stats = vec![[T::from_f64(f64::NAN); 2]; rows];
    let y = build_rows(n, rows_per_task(rows, n), &mut stats, |r0, out, st| {
        let xb = &x[r0 * n..(r0 + st.len()) * n];
        forward_rows(xb, w, b, eps, out, st)
    });
    let (mean, rstd) = stats.into_iter().map(|[m, r]| (m, r)).unzip();
    (y, mean, rstd)
}

multiversion! {
    fn forward_rows<'a, T: VecFloat>(
        x: &[T],
        w: &[T],
        b: &[T],
        eps: T,
        out: Uninit<'a, T>,
        stats: &mut [[T; 2]],
    ) -> Filled<'a> {
        let mut out = out;
        let n = w.len();
        if n > 0 {
            let inv_n = T::ONE / T::from_usize(n);
            for (xr, st) in x.chunks_exact(n).zip(stats) {
                let mean = sum(xr) * inv_n;
                let var = sum_sq_dev(xr, mean) * inv_n;
                let rstd = T::ONE / (var + eps).sqrt();
                let y = xr.iter().zip(w).zip(b).map(|((&v, &w), &b)| ((v - mean) * rstd).fma(w, b));
                out.next(n, y);
                *st = [mean, rstd];
            }
        }
        out.finish()
    }
}

/// (dx, dw, db) of LayerNorm given the forward input `x`, weight `w`, the saved `mean` / `rstd`
/// (one per row) and the output gradient `dy`. With x̂ = (x - mean) * rstd and g = dy * w:
/// dx = rstd * (g - mean(g) - x̂ * mean(g * x̂)), dw = Σ_rows dy * x̂, db = Σ_rows dy.
pub fn layer_norm_backward<T: VecFloat>(
    x: &[T],
    w: &[T],
    mean: &[T],
    rstd: &[T],
    dy: &[T],
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (n, rows) = (w.len(), mean.len());
    let per = rows_per_task(rows, n).max(rows.div_ceil(MAX_PARTIALS));
    // Each block leaves its (dw, db) partial sums in the slot of its first row.
    let mut partials: Vec<Option<(Vec<T>, Vec<T>)>> = vec![None; rows];
    let dx = build_rows(n, per, &mut partials, |r0, out, slots| {
        let nr = slots.len();
        let (range, stats) = (r0 * n..(r0 + nr) * n, r0..r0 + nr);
        let (mut dw, mut db) = (vec![T::ZERO; n], vec![T::ZERO; n]);
        let (m, r) = (&mean[stats.clone()], &rstd[stats]);
        let done = backward_rows(
            &x[range.clone()],
            &dy[range],
            w,
            m,
            r,
            out,
            &mut dw,
            &mut db,
        );
        if let Some(first) = slots.first_mut() {
            *first = Some((dw, db));
        }
        done
    });
    let (mut dw, mut db) = (vec![T::ZERO; n], vec![T::ZERO; n]);
    for (pw, pb) in partials.into_iter().flatten() {
        for (a, b) in dw.iter_mut().zip(pw).chain(db.iter_mut().zip(pb)) {
            *a += b;
        }
    }
    (dx, dw, db)
}

/// (Σ g, Σ g·(x - mu)) over a row, g = dy·w, in lane-parallel accumulators.
#[inline(always)]
fn grad_sums<T: VecFloat>(x: &[T], dy: &[T], w: &[T], mu: T) -> (T, T) {
    let (mut sg, mut sgx) = ([T::ZERO; LANES], [T::ZERO; LANES]);
    let (cx, cd, cw) = (
        x.chunks_exact(LANES),
        dy.chunks_exact(LANES),
        w.chunks_exact(LANES),
    );
    let tail = cx
        .remainder()
        .iter()
        .zip(cd.remainder())
        .zip(cw.remainder());
    let (tg, tgx) = tail.fold((T::ZERO, T::ZERO), |(a, b), ((&v, &d), &w)| {
        let g = d * w;
        (a + g, g.fma(v - mu, b))
    });
    for ((x, d), w) in cx.zip(cd).zip(cw) {
        for j in 0..LANES {
            let g = d[j] * w[j];
            sg[j] += g;
            sgx[j] = g.fma(x[j] - mu, sgx[j]);
        }
    }
    let add = |a: T, b: T| a + b;
    (tg + merge_lanes(sg, add), tgx + merge_lanes(sgx, add))
}

// ANCHOR: ln_backward_rows
multiversion! {
    #[allow(clippy::too_many_arguments)]
    fn backward_rows<'a, T: VecFloat>(
        x: &[T],
        dy: &[T],
        w: &[T],
        mean: &[T],
        rstd: &[T],
        out: Uninit<'a, T>,
        dw: &mut [T],
        db: &mut [T],
    ) -> Filled<'a> {
        let mut out = out;
        let n = w.len();
        if n == 0 {
            return out.finish();
        }
        let inv_n = T::ONE / T::from_usize(n);
        for (r, (xr, dyr)) in x.chunks_exact(n).zip(dy.chunks_exact(n)).enumerate() {
            let (mu, rs) = (mean[r], rstd[r]);
            // mean(g) and mean(g·x̂); dx = rs·g - rs·mean(g) - (x - mu)·rs²·mean(g·x̂).
            let (sg, sgx) = grad_sums(xr, dyr, w, mu);
            let k1 = -(rs * rs * rs * sgx * inv_n);
            let k2 = -(rs * sg * inv_n);
            let acc = dw.iter_mut().zip(db.iter_mut());
            let row = xr.iter().zip(dyr).zip(w).zip(acc);
            out.next(
                n,
                row.map(|(((&v, &d), &w), (pw, pb))| {
                    let xc = v - mu;
                    *pw = d.fma(xc * rs, *pw);
                    *pb += d;
                    (d * w).fma(rs, xc.fma(k1, k2))
                }),
            );
        }
        out.finish()
    }
}
// ANCHOR_END: ln_backward_rows
