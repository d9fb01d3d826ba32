//! Index kernels: selecting and accumulating slices at i64 positions. Indices arrive already
//! checked against the indexed dim (the op files do that), so they are used as `usize` here.
//!
//! `index_select` / `index_add` view a contiguous tensor as `[outer, d, inner]` around the indexed
//! dim and move whole `inner`-element rows. `gather` / `scatter_add` follow an index tensor of the
//! same rank element by element, reading or writing strided operands through their strides.
//!
//! Every accumulation is deterministic, independent of the thread count: `index_add` gives each
//! output row to one task, which adds its sources in ascending index-position order (grouped
//! beforehand by a counting sort); `scatter_add` runs in index row-major order, parallel only over
//! dim-0 slices of the output, which different tasks never share.

use crate::{Layout, WithDType};
use rayon::prelude::*;
use std::ops::Range;

/// Below this many elements of work a rayon task is not worth its overhead.
const MIN_TASK_ELEMS: usize = 1 << 15;

/// Rows per rayon task for rows of `len` elements.
fn min_rows(len: usize) -> usize {
    (MIN_TASK_ELEMS / len.max(1)).max(1)
}

/// Element types that can be summed: floats add, integers wrap (as torch's integer tensors do).
pub trait Accumulate: WithDType {
    const ZERO: Self;
    fn acc(self, o: Self) -> Self;
}

macro_rules! accumulate {
    ($t:ty, $zero:expr, $add:expr) => {
        impl Accumulate for $t {
            const ZERO: Self = $zero;
            #[inline(always)]
            fn acc(self, o: Self) -> Self {
                $add(self, o)
            }
        }
    };
}
accumulate!(f32, 0.0, |a: f32, b: f32| a + b);
accumulate!(f64, 0.0, |a: f64, b: f64| a + b);
accumulate!(i64, 0, i64::wrapping_add);
accumulate!(u8, 0, u8::wrapping_add);

/// `[outer, ids.len(), inner]` rows of `src` (`[outer, d, inner]`, contiguous): output row
/// `(o, j)` is source row `(o, ids[j])`.
pub fn index_select<T: WithDType>(
    src: &[T],
    outer: usize,
    d: usize,
    inner: usize,
    ids: &[i64],
) -> Vec<T> {
    let k = ids.len();
    let mut out = vec![T::from_f64(0.0); outer * k * inner];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(inner)
        .enumerate()
        .with_min_len(min_rows(inner))
        .for_each(|(r, o)| {
            let s = ((r / k) * d + ids[r % k] as usize) * inner;
            o.copy_from_slice(&src[s..s + inner]);
        });
    out
}

/// Adds row `(o, j)` of `src` (`[outer, ids.len(), inner]`, contiguous) into row `(o, ids[j])` of
/// `out` (`[outer, d, inner]`, contiguous). Each output row sums its sources in ascending `j`.
pub fn index_add<T: Accumulate>(
    out: &mut [T],
    src: &[T],
    outer: usize,
    d: usize,
    inner: usize,
    ids: &[i64],
) {
    let k = ids.len();
    if outer * d * inner == 0 || k == 0 {
        return;
    }
    // Counting sort of positions by target: sources of target t are order[start[t]..start[t+1]].
    let mut start = vec![0usize; d + 1];
    for &i in ids {
        start[i as usize + 1] += 1;
    }
    for t in 0..d {
        start[t + 1] += start[t];
    }
    let mut fill = start.clone();
    let mut order = vec![0usize; k];
    for (j, &i) in ids.iter().enumerate() {
        order[fill[i as usize]] = j;
        fill[i as usize] += 1;
    }
    out.par_chunks_mut(inner)
        .enumerate()
        .with_min_len(min_rows(inner))
        .for_each(|(r, o)| {
            let (oi, t) = (r / d, r % d);
            for &j in &order[start[t]..start[t + 1]] {
                let s = &src[(oi * k + j) * inner..][..inner];
                for (o, &s) in o.iter_mut().zip(s) {
                    *o = o.acc(s);
                }
            }
        });
}

/// Offset under `strides` of the first element of row `r` in a row-major walk over `outer` (the
/// dims before the last), leaving out dim `skip` (whose coordinate an index value replaces).
fn row_offset(mut r: usize, outer: &[usize], strides: &[usize], skip: Option<usize>) -> usize {
    let mut off = 0;
    for d in (0..outer.len()).rev() {
        let c = r % outer[d];
        r /= outer[d];
        if Some(d) != skip {
            off += c * strides[d];
        }
    }
    off
}

/// A strided operand: its elements and, per dim, the stride in elements, plus the offset of
/// element zero.
pub struct Strided<'a, T> {
    pub data: &'a [T],
    pub strides: &'a [usize],
    pub offset: usize,
}

impl<'a, T> Strided<'a, T> {
    /// The elements `layout` selects from `data`.
    pub fn new(data: &'a [T], layout: &'a Layout) -> Self {
        Strided {
            data,
            strides: layout.strides(),
            offset: layout.offset(),
        }
    }
}

/// torch.gather: `out[p] = src[p with p[dim] replaced by index[p]]` for every position `p` of the
/// index tensor (`index` contiguous, of shape `index_shape`, rank >= 1). Output row-major.
pub fn gather<T: WithDType>(
    src: Strided<'_, T>,
    dim: usize,
    index: &[i64],
    index_shape: &[usize],
) -> Vec<T> {
    let mut out = vec![T::from_f64(0.0); index.len()];
    if out.is_empty() {
        return out;
    }
    let last = index_shape.len() - 1;
    let n_last = index_shape[last];
    let st = src.strides;
    let kstride = if dim == last { 0 } else { st[last] };
    out.par_chunks_mut(n_last)
        .zip(index.par_chunks(n_last))
        .enumerate()
        .with_min_len(min_rows(n_last))
        .for_each(|(r, (o, ix))| {
            let base = src.offset + row_offset(r, &index_shape[..last], st, Some(dim));
            for (k, (o, &i)) in o.iter_mut().zip(ix).enumerate() {
                *o = src.data[base + k * kstride + i as usize * st[dim]];
            }
        });
    out
}

/// torch.scatter_add into `out` (contiguous, shape `out_shape`): for every position `p` of the
/// index tensor, `out[p with p[dim] replaced by index[p]] += src[p]`. Additions happen in index
/// row-major order, so the result is the same whatever the thread count.
pub fn scatter_add<T: Accumulate>(
    out: &mut [T],
    out_shape: &[usize],
    dim: usize,
    index: &[i64],
    index_shape: &[usize],
    src: Strided<'_, T>,
) {
    if index.is_empty() {
        return;
    }
    let last = index_shape.len() - 1;
    let n_last = index_shape[last];
    let rows = index.len() / n_last;
    let ostrides = crate::contiguous_strides(out_shape);
    let okstride = if dim == last { 0 } else { ostrides[last] };
    // Adds index rows `rows` into `out`, a window of the output starting at element `sub`.
    let scatter_rows = |out: &mut [T], sub: usize, rows: Range<usize>| {
        for r in rows {
            let ix = &index[r * n_last..(r + 1) * n_last];
            let ob = row_offset(r, &index_shape[..last], &ostrides, Some(dim)) - sub;
            let sb = src.offset + row_offset(r, &index_shape[..last], src.strides, None);
            for (k, &i) in ix.iter().enumerate() {
                let o = &mut out[ob + k * okstride + i as usize * ostrides[dim]];
                *o = o.acc(src.data[sb + k * src.strides[last]]);
            }
        }
    };
    // Index positions with first coordinate v write only to dim-0 slice v of the output when
    // dim != 0, so those slices can run in parallel.
    if dim != 0 && index.len() >= MIN_TASK_ELEMS {
        let slice = ostrides[0];
        let per_slice = rows / index_shape[0];
        out.par_chunks_mut(slice)
            .take(index_shape[0])
            .enumerate()
            .for_each(|(v, o)| scatter_rows(o, v * slice, v * per_slice..(v + 1) * per_slice));
    } else {
        scatter_rows(out, 0, 0..rows);
    }
}
