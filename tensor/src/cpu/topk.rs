//! Top-k and stable sort along the last dim of a contiguous `[rows, n]` buffer.
//!
//! Ranking order (the one `torch.topk`/`torch.sort(stable=True)` produce): by value, largest first
//! when descending and smallest first when ascending, NaN counting as larger than every number (so
//! NaNs come first descending and last ascending), and equal values (NaN with NaN, -0 with +0) by
//! lower index first. With the index in the key this is a total order, so the result does not
//! depend on the algorithm or the thread count.
//!
//! Outputs are `[rows, k]` values and `[rows, k]` i64 indices, row-major. For `k` much smaller
//! than `n` a row is scanned once against a bounded heap of its best `k` so far (the common case
//! in retrieval search: rows of ~200k scores, k = 1000, most elements rejected by one compare);
//! otherwise the whole row is sorted. Rows run in parallel.

use rayon::prelude::*;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Rows smaller than this many elements in total are not worth a rayon task of their own.
const MIN_TASK_ELEMS: usize = 1 << 15;

/// A value and its position in the row, ordered by rank: `a < b` means `a` comes first.
#[derive(Clone, Copy)]
struct Ranked<T, const DESC: bool>(T, usize);

impl<T: PartialOrd, const DESC: bool> Ranked<T, DESC> {
    /// Value order with NaN (the only value not equal to itself) above every number.
    #[inline(always)]
    fn value_cmp(a: &T, b: &T) -> Ordering {
        #[allow(clippy::eq_op)]
        match (a != a, b != b) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => a.partial_cmp(b).unwrap_or(Ordering::Equal),
        }
    }

    /// True when value `a` ranks strictly before value `b`.
    #[inline(always)]
    fn value_before(a: &T, b: &T) -> bool {
        let o = Self::value_cmp(a, b);
        if DESC {
            o == Ordering::Greater
        } else {
            o == Ordering::Less
        }
    }
}

impl<T: PartialOrd, const DESC: bool> Ord for Ranked<T, DESC> {
    #[inline(always)]
    fn cmp(&self, o: &Self) -> Ordering {
        let by_value = Self::value_cmp(&self.0, &o.0);
        let by_value = if DESC { by_value.reverse() } else { by_value };
        by_value.then(self.1.cmp(&o.1))
    }
}

impl<T: PartialOrd, const DESC: bool> PartialOrd for Ranked<T, DESC> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl<T: PartialOrd, const DESC: bool> PartialEq for Ranked<T, DESC> {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}

impl<T: PartialOrd, const DESC: bool> Eq for Ranked<T, DESC> {}

/// The `k` first-ranked elements of `row`, best first, written to `vals` / `idx` (length `k`).
fn top_row<T: Copy + PartialOrd, const DESC: bool>(row: &[T], vals: &mut [T], idx: &mut [i64]) {
    let k = vals.len();
    let best: Vec<Ranked<T, DESC>> = if k.saturating_mul(4) >= row.len() {
        let mut all: Vec<_> = row.iter().enumerate().map(|(i, &v)| Ranked(v, i)).collect();
        all.sort_unstable();
        all.truncate(k);
        all
    } else {
        // Max-heap under the rank order: its top is the worst of the best k seen so far.
        let mut heap: BinaryHeap<Ranked<T, DESC>> = row[..k]
            .iter()
            .enumerate()
            .map(|(i, &v)| Ranked(v, i))
            .collect();
        // Positions arrive in increasing order, so a candidate enters only with a value that
        // ranks strictly before the worst kept value; one compare rejects everything else.
        let mut worst = heap.peek().expect("k > 0").0;
        for (i, &v) in row.iter().enumerate().skip(k) {
            if Ranked::<T, DESC>::value_before(&v, &worst) {
                *heap.peek_mut().expect("k > 0") = Ranked(v, i);
                worst = heap.peek().expect("k > 0").0;
            }
        }
        heap.into_sorted_vec()
    };
    for ((r, v), i) in best.iter().zip(vals.iter_mut()).zip(idx.iter_mut()) {
        *v = r.0;
        *i = r.1 as i64;
    }
}

/// Top `k` of each length-`n` row of `src` (contiguous, `rows * n` elements). Returns `[rows, k]`
/// values and indices. `k <= n` is the caller's check.
pub fn topk<T: Copy + PartialOrd + Send + Sync + Default>(
    src: &[T],
    n: usize,
    k: usize,
    descending: bool,
) -> (Vec<T>, Vec<i64>) {
    debug_assert!(k <= n);
    let rows = src.len().checked_div(n).unwrap_or(0);
    let mut vals = vec![T::default(); rows * k];
    let mut idx = vec![0i64; rows * k];
    if k == 0 {
        return (vals, idx);
    }
    let row_fn = if descending {
        top_row::<T, true>
    } else {
        top_row::<T, false>
    };
    vals.par_chunks_mut(k)
        .zip(idx.par_chunks_mut(k))
        .zip(src.par_chunks(n))
        .with_min_len((MIN_TASK_ELEMS / n).max(1))
        .for_each(|((v, i), row)| row_fn(row, v, i));
    (vals, idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_and_sort_paths_agree_with_nan_and_ties() {
        let nan = f32::NAN;
        let row = [1.0, nan, 3.0, 3.0, -0.0, 0.0, nan, 1.0, 2.0, 3.0];
        // Sort path (k large).
        let (v, i) = topk(&row, 10, 10, true);
        assert_eq!(i, vec![1, 6, 2, 3, 9, 8, 0, 7, 4, 5]);
        assert!(v[0].is_nan() && v[1].is_nan() && v[2] == 3.0);
        // Heap path (k small) gives the same prefix.
        let (_, i2) = topk(&row, 10, 2, true);
        assert_eq!(i2, vec![1, 6]);
        let (v3, i3) = topk(&row[2..], 8, 1, false);
        assert_eq!((v3, i3), (vec![-0.0], vec![2]));
        let (_, i4) = topk(&row, 10, 10, false);
        assert_eq!(i4, vec![4, 5, 0, 7, 8, 2, 3, 9, 1, 6]);
    }
}
