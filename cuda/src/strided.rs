//! Strided operands: how an op reads a buffer through a layout without copying it.
//!
//! A [`Strided`] is a buffer, the element offset of logical element [0, 0, ...], and one stride
//! (in elements) per dim of the op's shape; a broadcast dim has stride 0. This is exactly what a
//! tensor's `Layout` holds after `broadcast_to`, so the tensor dispatch passes its layouts through.
//!
//! [`Walk`] is the kernel-side form (common.cuh `struct Walk`, same field order): up to
//! [`MAX_DIMS`] dims and up to three operands' strides. [`Walk::new`] first drops size-1 dims and
//! merges neighbouring dims that every operand walks as one (`[B, T, H] + [H]` becomes
//! `[B*T, H]`), and reports when every operand turns out contiguous so the op can take its
//! vectorised fast path.

use crate::buffer::{DeviceBuffer, DeviceElem};
use crate::error::bail;
use crate::Result;
use cudarc::driver::DeviceRepr;

/// Most dims a strided kernel walks (after merging).
pub const MAX_DIMS: usize = 8;

/// An operand: `buf` read at `offset + Σ index[d] * strides[d]` over the op's shape.
#[derive(Clone, Copy, Debug)]
pub struct Strided<'a, T: DeviceElem> {
    pub buf: &'a DeviceBuffer<T>,
    pub offset: usize,
    pub strides: &'a [usize],
}

impl<'a, T: DeviceElem> Strided<'a, T> {
    pub fn new(buf: &'a DeviceBuffer<T>, offset: usize, strides: &'a [usize]) -> Self {
        Strided {
            buf,
            offset,
            strides,
        }
    }

    /// Checks the strides' rank against `shape` and that every element the walk can reach lies
    /// in the buffer; returns the device address of element [0, ...] (0 for an empty shape).
    pub(crate) fn address(&self, op: &'static str, shape: &[usize]) -> Result<u64> {
        if self.strides.len() != shape.len() {
            bail!(
                op,
                "{} strides for a shape of rank {} ({shape:?})",
                self.strides.len(),
                shape.len()
            );
        }
        if shape.contains(&0) {
            return Ok(0);
        }
        let span = shape
            .iter()
            .zip(self.strides)
            .try_fold(0usize, |acc, (&n, &s)| {
                (n - 1).checked_mul(s).and_then(|x| x.checked_add(acc))
            });
        match span {
            Some(last) => self.buf.address_at(op, self.offset, last + 1),
            None => bail!(
                op,
                "strides {:?} over shape {shape:?} overflow",
                self.strides
            ),
        }
    }
}

/// A contiguous operand: `buf` from element `offset` on (its length is implied by the op).
#[derive(Clone, Copy, Debug)]
pub struct Contig<'a, T: DeviceElem> {
    pub buf: &'a DeviceBuffer<T>,
    pub offset: usize,
}

impl<'a, T: DeviceElem> Contig<'a, T> {
    pub fn new(buf: &'a DeviceBuffer<T>, offset: usize) -> Self {
        Contig { buf, offset }
    }

    /// The device address of its first element once `len` elements are known to fit (0 when
    /// `len` is 0, which kernels never dereference).
    pub(crate) fn address(&self, op: &'static str, len: usize) -> Result<u64> {
        if len == 0 {
            return Ok(0);
        }
        self.buf.address_at(op, self.offset, len)
    }
}

impl<'a, T: DeviceElem> From<&'a DeviceBuffer<T>> for Contig<'a, T> {
    fn from(buf: &'a DeviceBuffer<T>) -> Self {
        Contig { buf, offset: 0 }
    }
}

/// Row-major strides of a contiguous `shape`.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut acc = 1;
    for (s, &d) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc *= d;
    }
    strides
}

/// The kernels' view of a shape walked by up to three operands (common.cuh `struct Walk`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walk {
    pub shape: [i64; MAX_DIMS],
    pub strides: [[i64; MAX_DIMS]; 3],
    pub rank: i32,
    pad: i32,
}

// SAFETY: plain `repr(C)` integers, laid out as common.cuh's `struct Walk`.
unsafe impl DeviceRepr for Walk {}

impl Walk {
    /// The merged walk of `shape` for operands with the given strides (each of `shape`'s rank),
    /// and whether every operand is contiguous (the merged walk is one dim of stride 1, or
    /// empty). Errors when more than `MAX_DIMS` dims remain after merging.
    pub fn new(op: &'static str, shape: &[usize], strides: &[&[usize]]) -> Result<(Walk, bool)> {
        assert!(strides.len() <= 3, "a walk has at most three operands");
        let n_ops = strides.len();
        let mut dims: Vec<(usize, [usize; 3])> = Vec::with_capacity(shape.len());
        for (d, &size) in shape.iter().enumerate() {
            if size == 1 {
                continue;
            }
            let mut st = [0usize; 3];
            for (k, s) in strides.iter().enumerate() {
                st[k] = s[d];
            }
            if let Some((prev_size, prev)) = dims.last_mut() {
                if (0..n_ops).all(|k| prev[k] == st[k] * size) {
                    *prev_size *= size;
                    *prev = st;
                    continue;
                }
            }
            dims.push((size, st));
        }
        if dims.len() > MAX_DIMS {
            bail!(op, "shape {shape:?} with strides {strides:?} needs {} dims after merging (at most {MAX_DIMS})", dims.len());
        }
        let contiguous = match dims.as_slice() {
            [] => true,
            [(_, st)] => st[..n_ops].iter().all(|&s| s == 1),
            _ => false,
        };
        let mut w = Walk {
            shape: [1; MAX_DIMS],
            strides: [[0; MAX_DIMS]; 3],
            rank: dims.len() as i32,
            pad: 0,
        };
        for (d, (size, st)) in dims.iter().enumerate() {
            w.shape[d] = *size as i64;
            for (k, &s) in st.iter().enumerate() {
                w.strides[k][d] = s as i64;
            }
        }
        Ok((w, contiguous))
    }

    /// The walk as rows when it has two dims and every one of the first `n_ops` operands steps
    /// by one element along a row: `(rows, cols, each operand's row stride)`, the form the
    /// `_rows` kernels walk without dividing (a row broadcast along the leading dim has row
    /// stride 0; a slice of a wider buffer a row stride above `cols`).
    pub fn rows(&self, n_ops: usize) -> Option<RowWalk> {
        if self.rank != 2 || (0..n_ops).any(|k| self.strides[k][1] != 1) {
            return None;
        }
        let mut row_stride = [0; 3];
        for (k, s) in row_stride.iter_mut().enumerate().take(n_ops) {
            *s = self.strides[k][0];
        }
        Some(RowWalk {
            rows: self.shape[0],
            cols: self.shape[1],
            row_stride,
        })
    }

    /// A walk that is never read (kernels given a `contiguous` flag ignore it).
    pub fn unused() -> Walk {
        Walk {
            shape: [1; MAX_DIMS],
            strides: [[0; MAX_DIMS]; 3],
            rank: 0,
            pad: 0,
        }
    }
}

/// A [rows, cols] walk whose operands step by one element along a row (see [`Walk::rows`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowWalk {
    pub rows: i64,
    pub cols: i64,
    pub row_stride: [i64; 3],
}

impl RowWalk {
    /// Whether packs of 16 bytes may be moved: every operand's base address (`addrs`, one per
    /// operand then the output's) is 16-byte aligned and so is every row start, i.e. each row
    /// stride of `elem_bytes`-byte elements is a multiple of 16 bytes. `out_row` is the output's
    /// row stride.
    pub fn packs_aligned(&self, elem_bytes: usize, addrs: &[u64], out_row: i64) -> bool {
        let row_ok = |s: i64| (s as u64 * elem_bytes as u64).is_multiple_of(16);
        addrs.iter().all(|a| a.is_multiple_of(16))
            && self.row_stride[..addrs.len() - 1]
                .iter()
                .all(|&s| row_ok(s))
            && row_ok(out_row)
    }
}

/// Errors unless `len` elements fit the kernels' i64 indexing and grid limits.
pub(crate) fn check_len(op: &'static str, len: usize) -> Result<i64> {
    i64::try_from(len).map_err(|_| crate::Error::arg(op, format!("{len} elements are too many")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_merges_broadcast_dims_and_flags_contiguous() {
        // [2, 3, 4] + [4] broadcast: dims 0 and 1 merge for both operands.
        let (w, contiguous) = Walk::new("t", &[2, 3, 4], &[&[12, 4, 1], &[0, 0, 1]]).unwrap();
        assert_eq!(w.rank, 2);
        assert_eq!(&w.shape[..2], &[6, 4]);
        assert_eq!(
            (&w.strides[0][..2], &w.strides[1][..2]),
            (&[4, 1][..], &[0, 1][..])
        );
        assert!(!contiguous);
        // Contiguous operands merge into one dim; size-1 dims vanish.
        let (w, contiguous) = Walk::new("t", &[2, 1, 5], &[&[5, 5, 1], &[5, 7, 1]]).unwrap();
        assert_eq!((w.rank, w.shape[0]), (1, 10));
        assert!(contiguous);
        // A transposed operand stays two dims.
        let (w, contiguous) = Walk::new("t", &[3, 4], &[&[1, 3]]).unwrap();
        assert_eq!(
            (w.rank, &w.shape[..2], &w.strides[0][..2]),
            (2, &[3, 4][..], &[1, 3][..])
        );
        assert!(!contiguous);
        // Nine dims that cannot merge are refused.
        let shape = [2; 9];
        let strides: Vec<usize> = (0..9).map(|d| 3usize.pow(d as u32)).collect();
        assert!(Walk::new("t", &shape, &[&strides]).is_err());
    }

    #[test]
    fn rows_are_found_for_row_broadcasts_and_slices_only() {
        // [6, 4] + [4]: a bias row broadcast along the leading dim.
        let (w, _) = Walk::new("t", &[2, 3, 4], &[&[12, 4, 1], &[0, 0, 1]]).unwrap();
        let r = w.rows(2).unwrap();
        assert_eq!((r.rows, r.cols, r.row_stride), (6, 4, [4, 0, 0]));
        // 4 elements of 4 bytes per row: aligned rows; 3 of them are not.
        assert!(r.packs_aligned(4, &[32, 64, 96], 4));
        assert!(!r.packs_aligned(4, &[32, 64, 96], 3));
        assert!(!r.packs_aligned(4, &[36, 64, 96], 4));
        // A row slice of a wider buffer (concatenation along the last dim).
        let (w, _) = Walk::new("t", &[5, 3], &[&[3, 1], &[7, 1]]).unwrap();
        assert_eq!(w.rows(2).unwrap().row_stride, [3, 7, 0]);
        // A transposed operand is no row walk; neither is a contiguous (rank 1) one.
        let (w, _) = Walk::new("t", &[3, 4], &[&[1, 3], &[4, 1]]).unwrap();
        assert!(w.rows(2).is_none());
        let (w, _) = Walk::new("t", &[3, 4], &[&[4, 1]]).unwrap();
        assert!(w.rows(1).is_none());
    }

    #[test]
    fn walk_layout_matches_the_kernel_struct() {
        // common.cuh: i64 shape[8]; i64 stride[3][8]; i32 rank; i32 pad.
        assert_eq!(std::mem::size_of::<Walk>(), 8 * 8 + 3 * 8 * 8 + 8);
        assert_eq!(std::mem::align_of::<Walk>(), 8);
    }
}
