//! Reduction CPU kernels over any set of dims of a contiguous (row-major) input.
//!
//! [`Plan`] drops size-1 dims and merges neighbouring dims of the same kind (reduced or kept), so
//! the input becomes alternating groups, e.g. `[kept, reduced, kept]`. The last group decides the
//! loop shape:
//! - last group reduced (`[.., L]` reduced): each output folds whole contiguous slices of length
//!   `L` (a tight slice loop; f32/f64 sums use eight f64 lanes so LLVM vectorises them);
//! - last group kept (`[R, L]` reduced over `R`): each output row of length `L` accumulates the
//!   `R` input rows elementwise into a row of accumulators, so reducing `[1024, 768]` over dim 0
//!   streams rows instead of gathering a strided column per output.
//!
//! Work is split with rayon over outputs when there are many, and otherwise over pieces of the
//! reduction whose partial results are merged in order (so arg-reductions still return the first
//! index). The fold itself is a [`Reducer`]: float sums (accumulated in f64, optionally of
//! squares, scaled, square-rooted), integer sums, and max/min with their index.

use crate::{contiguous_strides, WithDType};
use rayon::prelude::*;
use std::ops::Range;

/// Input elements below which a reduction runs serially.
const PAR_MIN: usize = 1 << 15;
/// Input elements per rayon task, roughly.
const PIECE: usize = 1 << 15;

/// One kind of reduction: an accumulator, ways to fold contiguous input into it, and a finish.
pub trait Reducer<T>: Sync {
    type Acc: Copy + Send + Sync;
    type Out: Copy + Send;
    fn init(&self) -> Self::Acc;
    /// Folds `xs` into `acc`; `xs[0]` is element `idx0` of the reduction (in its row-major
    /// order, which for a single reduced dim is the index along it).
    fn fold_slice(&self, acc: Self::Acc, xs: &[T], idx0: usize) -> Self::Acc;
    /// Folds one input row into a row of accumulators elementwise; the row is element `idx` of
    /// the reduction.
    fn fold_row(&self, acc: &mut [Self::Acc], xs: &[T], idx: usize);
    /// Combines two partial results, `a` covering elements before `b`.
    fn merge(&self, a: Self::Acc, b: Self::Acc) -> Self::Acc;
    fn finish(&self, acc: Self::Acc) -> Self::Out;
}

/// Sum (of squares when `SQUARES`) in f64, times `scale`, square-rooted when `sqrt`: sum, mean,
/// the variance of centred data and the L2 norm.
pub struct FloatSum<const SQUARES: bool> {
    pub scale: f64,
    pub sqrt: bool,
}

impl<const SQ: bool> FloatSum<SQ> {
    #[inline(always)]
    fn term<T: WithDType>(x: T) -> f64 {
        let v = x.to_f64();
        if SQ {
            v * v
        } else {
            v
        }
    }
}

impl<T: WithDType, const SQ: bool> Reducer<T> for FloatSum<SQ> {
    type Acc = f64;
    type Out = T;
    fn init(&self) -> f64 {
        0.0
    }
    fn fold_slice(&self, acc: f64, xs: &[T], _idx0: usize) -> f64 {
        // Eight independent lanes: a vectorisable loop and a shorter rounding chain.
        let mut lanes = [0f64; 8];
        let chunks = xs.chunks_exact(8);
        let tail = chunks.remainder();
        for c in chunks {
            for (l, &x) in lanes.iter_mut().zip(c) {
                *l += Self::term(x);
            }
        }
        let mut s = acc;
        for &x in tail {
            s += Self::term(x);
        }
        s + lanes.iter().sum::<f64>()
    }
    fn fold_row(&self, acc: &mut [f64], xs: &[T], _idx: usize) {
        for (a, &x) in acc.iter_mut().zip(xs) {
            *a += Self::term(x);
        }
    }
    fn merge(&self, a: f64, b: f64) -> f64 {
        a + b
    }
    fn finish(&self, acc: f64) -> T {
        let v = acc * self.scale;
        T::from_f64(if self.sqrt { v.sqrt() } else { v })
    }
}

/// Integer sum into an i64 (wrapping), for i64 and u8 inputs.
pub struct IntSum;

impl<T: WithDType + Into<i64>> Reducer<T> for IntSum {
    type Acc = i64;
    type Out = i64;
    fn init(&self) -> i64 {
        0
    }
    fn fold_slice(&self, acc: i64, xs: &[T], _idx0: usize) -> i64 {
        xs.iter().fold(acc, |s, &x| s.wrapping_add(x.into()))
    }
    fn fold_row(&self, acc: &mut [i64], xs: &[T], _idx: usize) {
        for (a, &x) in acc.iter_mut().zip(xs) {
            *a = a.wrapping_add(x.into());
        }
    }
    fn merge(&self, a: i64, b: i64) -> i64 {
        a.wrapping_add(b)
    }
    fn finish(&self, acc: i64) -> i64 {
        acc
    }
}

/// The largest (`MAX`) or smallest element and the index of its first occurrence; NaN beats
/// every number (as in torch), so the first NaN wins.
pub struct Best<const MAX: bool>;

/// Index of an accumulator that has seen nothing yet.
const NONE: usize = usize::MAX;

impl<const MAX: bool> Best<MAX> {
    /// Whether `x` replaces the current best `b` (which comes earlier).
    #[inline(always)]
    #[allow(clippy::eq_op)]
    fn beats<T: WithDType>(x: T, b: T) -> bool {
        let (x_nan, b_nan) = (x != x, b != b);
        (if MAX { x > b } else { x < b }) || (x_nan && !b_nan)
    }
}

impl<T: WithDType, const MAX: bool> Reducer<T> for Best<MAX> {
    type Acc = (T, usize);
    /// The value and its index (-1 for an empty reduction, which callers reject).
    type Out = (T, i64);
    fn init(&self) -> (T, usize) {
        (T::from_f64(0.0), NONE)
    }
    fn fold_slice(&self, acc: (T, usize), xs: &[T], idx0: usize) -> (T, usize) {
        let Some(&first) = xs.first() else {
            return acc;
        };
        let mut best = if acc.1 == NONE { (first, idx0) } else { acc };
        for (j, &x) in xs.iter().enumerate() {
            if Self::beats(x, best.0) {
                best = (x, idx0 + j);
            }
        }
        best
    }
    fn fold_row(&self, acc: &mut [(T, usize)], xs: &[T], idx: usize) {
        for (a, &x) in acc.iter_mut().zip(xs) {
            if a.1 == NONE || Self::beats(x, a.0) {
                *a = (x, idx);
            }
        }
    }
    fn merge(&self, a: (T, usize), b: (T, usize)) -> (T, usize) {
        if a.1 == NONE || (b.1 != NONE && Self::beats(b.0, a.0)) {
            b
        } else {
            a
        }
    }
    fn finish(&self, acc: (T, usize)) -> (T, i64) {
        (acc.0, if acc.1 == NONE { -1 } else { acc.1 as i64 })
    }
}

/// The merged loop structure of a reduction (see the module comment).
struct Plan {
    /// Offsets of the first input element of each output (or output row), row-major.
    kept: Vec<usize>,
    /// Offsets of each reduced slice (or row) relative to an output's first element.
    red: Vec<usize>,
    /// Length of the last group: a reduced slice, or an output row.
    inner: usize,
    inner_reduced: bool,
}

/// Offsets `sum(i_d * stride_d)` over the multi-indices of `dims` (size, stride), row-major.
fn offsets(dims: &[(usize, usize)]) -> Vec<usize> {
    let mut out = vec![0usize];
    for &(size, stride) in dims {
        out = out
            .iter()
            .flat_map(|&o| (0..size).map(move |i| o + i * stride))
            .collect();
    }
    out
}

impl Plan {
    fn new(shape: &[usize], reduced: &[bool]) -> Plan {
        let strides = contiguous_strides(shape);
        // (size, stride, reduced) groups; for contiguous input, neighbours of a kind merge.
        let mut groups: Vec<(usize, usize, bool)> = vec![];
        for d in 0..shape.len() {
            if shape[d] == 1 {
                continue;
            }
            match groups.last_mut() {
                Some(g) if g.2 == reduced[d] => {
                    g.0 *= shape[d];
                    g.1 = strides[d];
                }
                _ => groups.push((shape[d], strides[d], reduced[d])),
            }
        }
        let (inner, _, inner_reduced) = groups.pop().unwrap_or((1, 1, false));
        let pick = |want: bool| -> Vec<(usize, usize)> {
            groups
                .iter()
                .filter(|g| g.2 == want)
                .map(|g| (g.0, g.1))
                .collect()
        };
        Plan {
            kept: offsets(&pick(false)),
            red: offsets(&pick(true)),
            inner,
            inner_reduced,
        }
    }
}

/// Folds ranges `0..count` split into at most a few pieces per thread, in parallel, merging the
/// partial results in order.
fn fold_pieces<A: Send>(
    count: usize,
    min_piece: usize,
    fold: impl Fn(Range<usize>) -> A + Sync,
    merge: impl Fn(A, A) -> A,
) -> Option<A> {
    let max_pieces = 4 * rayon::current_num_threads();
    let piece = min_piece.max(count.div_ceil(max_pieces)).max(1);
    let parts: Vec<A> = (0..count.div_ceil(piece))
        .into_par_iter()
        .map(|p| fold(p * piece..count.min((p + 1) * piece)))
        .collect();
    parts.into_iter().reduce(merge)
}

/// Reduces the contiguous `x` of `shape` over the dims flagged in `reduced`; the result holds the
/// kept dims in row-major order. An empty reduction gives `finish(init)` per output.
pub fn reduce<T: Copy + Sync, R: Reducer<T>>(
    x: &[T],
    shape: &[usize],
    reduced: &[bool],
    r: &R,
) -> Vec<R::Out> {
    let n: usize = shape.iter().product();
    let outputs: usize = shape
        .iter()
        .zip(reduced)
        .filter(|(_, &red)| !red)
        .map(|(&d, _)| d)
        .product();
    let empty = r.finish(r.init());
    if n == 0 {
        return vec![empty; outputs];
    }
    let plan = Plan::new(shape, reduced);
    let mut out = vec![empty; outputs];
    let parallel = n > PAR_MIN;
    let threads = rayon::current_num_threads();
    let (inner, red) = (plan.inner, &plan.red);
    if plan.inner_reduced {
        // Each output folds `red.len()` contiguous slices of length `inner`.
        let fold_output = |k: usize| {
            let acc = red.iter().enumerate().fold(r.init(), |acc, (ri, &o)| {
                r.fold_slice(acc, &x[k + o..k + o + inner], ri * inner)
            });
            r.finish(acc)
        };
        if !parallel {
            for (o, &k) in out.iter_mut().zip(&plan.kept) {
                *o = fold_output(k);
            }
        } else if outputs >= 2 * threads {
            let per_task = (PIECE / (n / outputs)).max(1);
            out.par_chunks_mut(per_task)
                .zip(plan.kept.par_chunks(per_task))
                .for_each(|(o, ks)| {
                    for (o, &k) in o.iter_mut().zip(ks) {
                        *o = fold_output(k);
                    }
                });
        } else {
            // Few outputs: split each one's work (slices x columns, flattened) into pieces.
            for (o, &k) in out.iter_mut().zip(&plan.kept) {
                let fold = |w: Range<usize>| {
                    let (mut acc, mut pos) = (r.init(), w.start);
                    while pos < w.end {
                        let (ri, j) = (pos / inner, pos % inner);
                        let len = (inner - j).min(w.end - pos);
                        let s = k + red[ri] + j;
                        acc = r.fold_slice(acc, &x[s..s + len], pos);
                        pos += len;
                    }
                    acc
                };
                let acc = fold_pieces(red.len() * inner, PIECE, fold, |a, b| r.merge(a, b));
                *o = r.finish(acc.unwrap_or_else(|| r.init()));
            }
        }
    } else {
        // Each output row of length `inner` accumulates `red.len()` input rows.
        let fold_rows = |acc: &mut [R::Acc], k: usize, rows: Range<usize>| {
            for ri in rows {
                let s = k + red[ri];
                r.fold_row(acc, &x[s..s + inner], ri);
            }
        };
        let finish_row = |o: &mut [R::Out], acc: &[R::Acc]| {
            for (o, &a) in o.iter_mut().zip(acc) {
                *o = r.finish(a);
            }
        };
        let rows_of = |o: &mut [R::Out], ks: &[usize], acc: &mut Vec<R::Acc>| {
            for (o, &k) in o.chunks_mut(inner).zip(ks) {
                acc.clear();
                acc.resize(inner, r.init());
                fold_rows(acc, k, 0..red.len());
                finish_row(o, acc);
            }
        };
        let rows = plan.kept.len();
        if !parallel {
            rows_of(&mut out, &plan.kept, &mut vec![]);
        } else if rows >= 2 * threads {
            let per_task = (PIECE / (n / rows)).max(1);
            out.par_chunks_mut(per_task * inner)
                .zip(plan.kept.par_chunks(per_task))
                .for_each(|(o, ks)| rows_of(o, ks, &mut vec![]));
        } else {
            // Few output rows: split the reduced rows into pieces, merge the partial rows.
            for (o, &k) in out.chunks_mut(inner).zip(&plan.kept) {
                let fold = |rr: Range<usize>| {
                    let mut acc = vec![r.init(); inner];
                    fold_rows(&mut acc, k, rr);
                    acc
                };
                let merge = |mut a: Vec<R::Acc>, b: Vec<R::Acc>| {
                    for (a, b) in a.iter_mut().zip(b) {
                        *a = r.merge(*a, b);
                    }
                    a
                };
                let min_rows = (PIECE / inner).max(1);
                let acc = fold_pieces(red.len(), min_rows, fold, merge);
                finish_row(o, &acc.unwrap_or_else(|| vec![r.init(); inner]));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_merges_groups_and_skips_unit_dims() {
        // [2, 1, 3, 4] reducing dims 2, 3 -> kept [2] (stride 12), one reduced slice of 12.
        let p = Plan::new(&[2, 1, 3, 4], &[false, true, true, true]);
        assert_eq!(
            (p.kept, p.red, p.inner, p.inner_reduced),
            (vec![0, 12], vec![0], 12, true)
        );
        // [3, 5, 2] reducing dim 1 -> rows of 2, five reduced rows at stride 2.
        let p = Plan::new(&[3, 5, 2], &[false, true, false]);
        assert_eq!(p.kept, vec![0, 10, 20]);
        assert_eq!(p.red, vec![0, 2, 4, 6, 8]);
        assert_eq!((p.inner, p.inner_reduced), (2, false));
    }
}
