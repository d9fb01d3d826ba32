//! `Layout`: how a tensor's logical indices map onto its storage: shape, strides (in elements)
//! and the offset of element [0, 0, ...]. Views (transpose, narrow, broadcast, reshape of a
//! contiguous tensor) only build a new Layout; no data moves.

use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    shape: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
}

/// Row-major (C order) strides for `shape`.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut acc = 1;
    for (s, &d) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc *= d;
    }
    strides
}

/// The numpy broadcast of two shapes (aligned on the right; a size-1 dim stretches).
pub fn broadcast_shapes(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i < rank - a.len() {
            1
        } else {
            a[i - (rank - a.len())]
        };
        let db = if i < rank - b.len() {
            1
        } else {
            b[i - (rank - b.len())]
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(Error::Broadcast {
                    op,
                    lhs: a.to_vec(),
                    rhs: b.to_vec(),
                })
            }
        };
    }
    Ok(out)
}

impl Layout {
    pub fn contiguous(shape: &[usize]) -> Self {
        Layout {
            shape: shape.to_vec(),
            strides: contiguous_strides(shape),
            offset: 0,
        }
    }

    pub fn new(shape: Vec<usize>, strides: Vec<usize>, offset: usize) -> Self {
        assert_eq!(shape.len(), strides.len(), "layout rank");
        Layout {
            shape,
            strides,
            offset,
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    pub fn offset(&self) -> usize {
        self.offset
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the elements are laid out row-major with no gaps (size-1 dims may have any
    /// stride).
    pub fn is_contiguous(&self) -> bool {
        let mut acc = 1;
        for (&d, &s) in self.shape.iter().zip(&self.strides).rev() {
            if d != 1 && s != acc {
                return false;
            }
            acc *= d;
        }
        true
    }

    /// The contiguous range of storage this layout covers, if it is contiguous.
    pub fn contiguous_range(&self) -> Option<std::ops::Range<usize>> {
        self.is_contiguous()
            .then(|| self.offset..self.offset + self.elem_count())
    }

    /// Resolves a possibly negative dim (-1 = last) against the rank.
    pub fn dim(&self, op: &'static str, dim: isize) -> Result<usize> {
        resolve_dim(op, dim, self.rank())
    }

    // ANCHOR: transpose
    pub fn transpose(&self, op: &'static str, a: usize, b: usize) -> Result<Layout> {
        let r = self.rank();
        for d in [a, b] {
            if d >= r {
                return Err(Error::DimOutOfRange {
                    op,
                    dim: d as isize,
                    rank: r,
                });
            }
        }
        let mut l = self.clone();
        l.shape.swap(a, b);
        l.strides.swap(a, b);
        Ok(l)
    }
    // ANCHOR_END: transpose

    pub fn permute(&self, op: &'static str, perm: &[usize]) -> Result<Layout> {
        let r = self.rank();
        let mut seen = vec![false; r];
        if perm.len() != r
            || perm
                .iter()
                .any(|&p| p >= r || std::mem::replace(&mut seen[p], true))
        {
            return Err(Error::op(
                op,
                format!(
                    "{perm:?} is not a permutation of the {r} dims of {:?}",
                    self.shape
                ),
            ));
        }
        Ok(Layout {
            shape: perm.iter().map(|&p| self.shape[p]).collect(),
            strides: perm.iter().map(|&p| self.strides[p]).collect(),
            offset: self.offset,
        })
    }

    /// Elements `start..start+len` along `dim`.
    pub fn narrow(&self, op: &'static str, dim: usize, start: usize, len: usize) -> Result<Layout> {
        if dim >= self.rank() {
            return Err(Error::DimOutOfRange {
                op,
                dim: dim as isize,
                rank: self.rank(),
            });
        }
        if start + len > self.shape[dim] {
            return Err(Error::op(
                op,
                format!(
                    "range {start}..{} out of bounds for dim {dim} of shape {:?}",
                    start + len,
                    self.shape
                ),
            ));
        }
        let mut l = self.clone();
        l.shape[dim] = len;
        if len > 0 {
            l.offset += start * self.strides[dim];
        }
        Ok(l)
    }

    /// Stretches size-1 dims (stride 0) and prepends new dims to reach `shape`.
    pub fn broadcast_to(&self, op: &'static str, shape: &[usize]) -> Result<Layout> {
        let r = self.rank();
        if shape.len() < r {
            return Err(Error::Broadcast {
                op,
                lhs: self.shape.clone(),
                rhs: shape.to_vec(),
            });
        }
        let extra = shape.len() - r;
        let mut strides = vec![0; shape.len()];
        for i in 0..r {
            let (have, want) = (self.shape[i], shape[extra + i]);
            strides[extra + i] = if have == want {
                self.strides[i]
            } else if have == 1 {
                0
            } else {
                return Err(Error::Broadcast {
                    op,
                    lhs: self.shape.clone(),
                    rhs: shape.to_vec(),
                });
            };
        }
        Ok(Layout {
            shape: shape.to_vec(),
            strides,
            offset: self.offset,
        })
    }

    pub fn unsqueeze(&self, op: &'static str, dim: usize) -> Result<Layout> {
        if dim > self.rank() {
            return Err(Error::DimOutOfRange {
                op,
                dim: dim as isize,
                rank: self.rank(),
            });
        }
        let mut l = self.clone();
        let stride = if dim < self.rank() {
            self.strides[dim] * self.shape[dim]
        } else {
            1
        };
        l.shape.insert(dim, 1);
        l.strides.insert(dim, stride);
        Ok(l)
    }

    pub fn squeeze(&self, op: &'static str, dim: usize) -> Result<Layout> {
        if dim >= self.rank() {
            return Err(Error::DimOutOfRange {
                op,
                dim: dim as isize,
                rank: self.rank(),
            });
        }
        if self.shape[dim] != 1 {
            return Err(Error::op(
                op,
                format!("dim {dim} of shape {:?} is not of size 1", self.shape),
            ));
        }
        let mut l = self.clone();
        l.shape.remove(dim);
        l.strides.remove(dim);
        Ok(l)
    }

    /// A view with a new shape over the same elements, when the strides allow it without a copy
    /// (always for contiguous layouts). `None` means the caller must copy first.
    pub fn reshape(&self, shape: &[usize]) -> Option<Layout> {
        if self.is_contiguous() {
            return Some(Layout {
                shape: shape.to_vec(),
                strides: contiguous_strides(shape),
                offset: self.offset,
            });
        }
        // General case: merge the old dims into contiguous chunks and split each chunk into the
        // new dims that cover exactly the same number of elements.
        let old: Vec<(usize, usize)> = self
            .shape
            .iter()
            .zip(&self.strides)
            .filter(|(&d, _)| d != 1)
            .map(|(&d, &s)| (d, s))
            .collect();
        let mut strides = vec![0; shape.len()];
        let (mut oi, mut ni) = (0, 0);
        while ni < shape.len() {
            if shape[ni] == 1 {
                strides[ni] = 1;
                ni += 1;
                continue;
            }
            if oi >= old.len() {
                return None;
            }
            // One contiguous chunk of old dims.
            let mut chunk = old[oi].0;
            let mut oj = oi;
            while oj + 1 < old.len() && old[oj].1 == old[oj + 1].0 * old[oj + 1].1 {
                oj += 1;
                chunk *= old[oj].0;
            }
            // New dims that fill it.
            let mut stride = old[oj].1;
            let mut covered = 1;
            let mut nj = ni;
            let mut new_dims = vec![];
            while nj < shape.len() && covered < chunk {
                covered *= shape[nj];
                new_dims.push(nj);
                nj += 1;
            }
            if covered != chunk {
                return None;
            }
            for &k in new_dims.iter().rev() {
                strides[k] = stride;
                stride *= shape[k];
            }
            ni = nj;
            oi = oj + 1;
        }
        if oi != old.len() {
            return None;
        }
        Some(Layout {
            shape: shape.to_vec(),
            strides,
            offset: self.offset,
        })
    }

    // ANCHOR: for_each_block
    /// Calls `f(block_start, len, stride)` for every run of the last dim, in row-major order:
    /// the run's elements are at `block_start + i * stride` for `i < len`. A contiguous layout
    /// is a single run. This is the loop every strided CPU kernel is built on.
    pub fn for_each_block(&self, mut f: impl FnMut(usize, usize, usize)) {
        let n = self.elem_count();
        if n == 0 {
            return;
        }
        if self.is_contiguous() {
            return f(self.offset, n, 1);
        }
        let r = self.rank();
        let (inner, inner_stride) = (self.shape[r - 1], self.strides[r - 1]);
        let outer = &self.shape[..r - 1];
        let mut idx = vec![0usize; r - 1];
        let mut off = self.offset;
        loop {
            f(off, inner, inner_stride);
            // Increment the multi-index over the outer dims.
            let mut d = r - 1;
            loop {
                if d == 0 {
                    return;
                }
                d -= 1;
                idx[d] += 1;
                off += self.strides[d];
                if idx[d] < outer[d] {
                    break;
                }
                off -= self.strides[d] * idx[d];
                idx[d] = 0;
            }
        }
    }
    // ANCHOR_END: for_each_block

    /// The storage offset of every element, in row-major order.
    pub fn offsets(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.elem_count());
        self.for_each_block(|start, len, stride| {
            out.extend((0..len).map(|i| start + i * stride));
        });
        out
    }
}

/// Resolves a possibly negative dim against `rank`.
pub fn resolve_dim(op: &'static str, dim: isize, rank: usize) -> Result<usize> {
    let d = if dim < 0 { dim + rank as isize } else { dim };
    if d < 0 || d as usize >= rank {
        return Err(Error::DimOutOfRange { op, dim, rank });
    }
    Ok(d as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_of_transposed_layout_visit_in_row_major_order() {
        let l = Layout::contiguous(&[2, 3]).transpose("t", 0, 1).unwrap();
        assert_eq!(l.offsets(), vec![0, 3, 1, 4, 2, 5]);
    }

    #[test]
    fn reshape_of_non_contiguous_merges_compatible_dims_only() {
        // [2,3,4] permuted to [3,2,4]: dims 1 and 2 ([2,4] with strides [12,1]) cannot merge.
        let l = Layout::contiguous(&[2, 3, 4])
            .permute("p", &[1, 0, 2])
            .unwrap();
        assert!(l.reshape(&[3, 8]).is_none());
        // Splitting the last dim is fine.
        let r = l.reshape(&[3, 2, 2, 2]).unwrap();
        assert_eq!(r.offsets(), l.offsets());
        // Merging dims 0 and 1 of a transposed tensor is not.
        let t = Layout::contiguous(&[4, 6]).transpose("t", 0, 1).unwrap();
        assert!(t.reshape(&[24]).is_none());
        assert_eq!(t.reshape(&[2, 3, 4]).unwrap().offsets(), t.offsets());
    }

    #[test]
    fn broadcast_rules() {
        assert_eq!(broadcast_shapes("b", &[3, 1], &[4]).unwrap(), vec![3, 4]);
        assert!(broadcast_shapes("b", &[3, 2], &[4]).is_err());
        let l = Layout::contiguous(&[3, 1])
            .broadcast_to("b", &[2, 3, 4])
            .unwrap();
        assert_eq!(l.strides(), &[0, 1, 0]);
    }
}
