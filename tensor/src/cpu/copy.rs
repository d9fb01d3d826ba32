//! Strided gather: materialises any layout into a fresh row-major vector.
//!
//! The general path walks the layout's runs of its last dim. A layout whose last two dims are
//! transposed (last-dim stride > 1, next-to-last stride 1: a `W.t()` view, or a column-major
//! matrix) would make that walk read one element per cache line; it is copied instead in
//! square tiles, each read and written while it sits in L1, and in parallel over tile rows when
//! large.

use crate::Layout;
use rayon::prelude::*;

/// Tile edge of the blocked transpose (a 32 x 32 f32 tile is 4 KiB).
const TILE: usize = 32;
/// Elements per matrix above which the blocked transpose runs in parallel.
const PARALLEL_ELEMS: usize = 1 << 16;

/// The elements `layout` selects from `src`, in row-major order.
pub fn gather_strided<T: Copy + Send + Sync>(src: &[T], layout: &Layout) -> Vec<T> {
    if let Some(out) = gather_transposed(src, layout) {
        return out;
    }
    let mut out = Vec::with_capacity(layout.elem_count());
    layout.for_each_block(|start, len, stride| {
        if stride == 1 {
            out.extend_from_slice(&src[start..start + len]);
        } else {
            out.extend((0..len).map(|i| src[start + i * stride]));
        }
    });
    out
}

/// The blocked path (module doc), or None when the layout is not a batch of transposed matrices.
fn gather_transposed<T: Copy + Send + Sync>(src: &[T], layout: &Layout) -> Option<Vec<T>> {
    let r = layout.rank();
    if r < 2 || layout.elem_count() == 0 {
        return None;
    }
    let (rows, cols) = (layout.shape()[r - 2], layout.shape()[r - 1]);
    let (rs, cs) = (layout.strides()[r - 2], layout.strides()[r - 1]);
    if rs != 1 || cs <= 1 || rows < TILE || cols < TILE {
        return None;
    }
    let batch = Layout::new(
        layout.shape()[..r - 2].to_vec(),
        layout.strides()[..r - 2].to_vec(),
        layout.offset(),
    );
    let mut out = Vec::with_capacity(layout.elem_count());
    // SAFETY: every element is written below before the vector is read: each matrix's
    // tile rows partition its rows and each tile row's tiles cover all its columns.
    let spare = out.spare_capacity_mut();
    for (m, start) in batch.offsets().into_iter().enumerate() {
        let dst = &mut spare[m * rows * cols..(m + 1) * rows * cols];
        let tile_row = |(bi, block): (usize, &mut [std::mem::MaybeUninit<T>])| {
            let i0 = bi * TILE;
            let h = block.len() / cols;
            for j0 in (0..cols).step_by(TILE) {
                let w = TILE.min(cols - j0);
                // Source column j of this tile is contiguous (rs == 1): read it down, write across.
                for j in j0..j0 + w {
                    let col = &src[start + j * cs + i0..start + j * cs + i0 + h];
                    for (i, &v) in col.iter().enumerate() {
                        block[i * cols + j].write(v);
                    }
                }
            }
        };
        if rows * cols >= PARALLEL_ELEMS {
            dst.par_chunks_mut(TILE * cols)
                .enumerate()
                .for_each(tile_row);
        } else {
            dst.chunks_mut(TILE * cols).enumerate().for_each(tile_row);
        }
    }
    // SAFETY: see above; all `elem_count` elements are initialised.
    unsafe { out.set_len(layout.elem_count()) };
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The general walk, as the reference for the blocked path.
    fn naive(src: &[f32], layout: &Layout) -> Vec<f32> {
        layout.offsets().into_iter().map(|o| src[o]).collect()
    }

    #[test]
    fn blocked_transpose_equals_the_strided_walk() {
        for &(b, rows, cols) in &[(1, 32, 32), (1, 33, 70), (3, 100, 45), (2, 300, 257)] {
            let src: Vec<f32> = (0..b * rows * cols).map(|i| i as f32).collect();
            // [b, cols, rows] row-major, viewed as [b, rows, cols] with the last two dims swapped.
            let l = Layout::contiguous(&[b, cols, rows])
                .transpose("t", 1, 2)
                .unwrap();
            assert!(gather_transposed(&src, &l).is_some());
            assert_eq!(
                gather_strided(&src, &l),
                naive(&src, &l),
                "{b}x{rows}x{cols}"
            );
            // Narrowed (offset, uneven edges) and a broadcast batch dim.
            let n = l
                .narrow("n", 2, 3, cols - 5)
                .unwrap()
                .narrow("n", 1, 1, rows - 1)
                .unwrap();
            assert_eq!(gather_strided(&src, &n), naive(&src, &n));
            let one = Layout::contiguous(&[1, cols, rows])
                .transpose("t", 1, 2)
                .unwrap();
            let bc = one.broadcast_to("b", &[2, rows, cols]).unwrap();
            assert_eq!(gather_strided(&src, &bc), naive(&src, &bc));
        }
    }
}
