//! Fused cross-entropy (log-softmax + negative log-likelihood) over rows of class logits, forward
//! and backward, without materialising the log-probabilities.
//!
//! Layout: `logits` is a row-major `rows x c` slice, `targets` and `lse` one entry per row.
//! Forward is two passes over each row (max, then Σ exp(x - max)); the per-row losses
//! `lse - x[target]` are summed in f64, in row order. Backward writes
//! coef * (exp(x - lse) - onehot(target)) in one pass per row, zeros for ignored rows.

use crate::cpu::softmax::{build, multiversion, row_lse, rows_per_task, Filled, Uninit, VecFloat};
use rayon::prelude::*;

/// Forward result: Σ over valid rows of `lse - logit[target]` in f64, the number of valid rows,
/// and the log-sum-exp of every row (ignored ones included).
pub struct CrossEntropy<T> {
    pub loss_sum: f64,
    pub n_valid: usize,
    pub lse: Vec<T>,
}

/// Cross-entropy of `targets.len()` rows of `c` logits. Targets equal to `ignore` are skipped;
/// every other target must be in `0..c` (the op checks).
pub fn cross_entropy<T: VecFloat>(
    logits: &[T],
    c: usize,
    targets: &[i64],
    ignore: i64,
) -> CrossEntropy<T> {
    let rows = targets.len();
    let mut lse = vec![T::NEG_INFINITY; rows];
    let per = rows_per_task(rows, c);
    if c > 0 && rows > 0 {
        let run = |i: usize, l: &mut [T]| lse_rows(&logits[i * per * c..][..l.len() * c], c, l);
        if per >= rows {
            run(0, &mut lse);
        } else {
            lse.par_chunks_mut(per)
                .enumerate()
                .for_each(|(i, l)| run(i, l));
        }
    }
    let (mut loss_sum, mut n_valid) = (0f64, 0usize);
    for (r, (&t, &l)) in targets.iter().zip(&lse).enumerate() {
        if t != ignore {
            loss_sum += l.to_f64() - logits[r * c + t as usize].to_f64();
            n_valid += 1;
        }
    }
    CrossEntropy {
        loss_sum,
        n_valid,
        lse,
    }
}

multiversion! {
    fn lse_rows<T: VecFloat>(x: &[T], c: usize, lse: &mut [T]) {
        for (l, row) in lse.iter_mut().zip(x.chunks_exact(c)) {
            *l = row_lse(row).1;
        }
    }
}

/// d loss / d logits = coef * (softmax(row) - onehot(target)) for valid rows, 0 for ignored ones,
/// with softmax(row) = exp(x - lse) from the forward's `lse`. For a mean loss, coef is
/// grad_loss / n_valid.
pub fn cross_entropy_backward<T: VecFloat>(
    logits: &[T],
    c: usize,
    targets: &[i64],
    lse: &[T],
    ignore: i64,
    coef: T,
) -> Vec<T> {
    build(targets.len(), c, |r0, rows, out| {
        let r = r0..r0 + rows;
        let x = &logits[r0 * c..(r0 + rows) * c];
        grad_rows(x, c, &targets[r.clone()], &lse[r], ignore, coef, out)
    })
}

multiversion! {
    fn grad_rows<'a, T: VecFloat>(
        x: &[T],
        c: usize,
        targets: &[i64],
        lse: &[T],
        ignore: i64,
        coef: T,
        out: Uninit<'a, T>,
    ) -> Filled<'a> {
        let mut out = out;
        for (r, (&t, &l)) in targets.iter().zip(lse).enumerate() {
            if t == ignore {
                out.next(c, std::iter::repeat(T::ZERO));
                continue;
            }
            let xr = &x[r * c..(r + 1) * c];
            let o = out.next(c, xr.iter().map(|&v| coef * (v - l).vexp()));
            let ti = t as usize;
            o[ti] = o[ti] - coef;
        }
        out.finish()
    }
}
