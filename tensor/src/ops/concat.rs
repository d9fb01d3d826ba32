//! Joining and splitting along a dim, as torch.cat / torch.stack / torch.split / torch.chunk.
//!
//! `cat` views the output as `[outer, total * inner]` (outer = product of the dims before `dim`,
//! inner = product of those after it, total = the summed sizes along `dim`). Input `i` of size
//! `d_i` along `dim` fills, in every outer row, the contiguous segment of `d_i * inner` elements
//! that starts at its running offset; a contiguous input is copied segment by segment
//! (`copy_from_slice`), a strided one run by run. On a GPU each input is one strided copy into its
//! slice of the output (`crate::cuda::concat`). `split` and `chunk` return zero-copy views.

use crate::{CpuStorage, Error, Layout, Result, Tensor, WithDType};

/// Copies the elements `layout` selects from `src` (row-major) into `dst`, where element `e` goes
/// to `dst[(e / seg) * row + off + e % seg]`: consecutive segments of `seg` elements land `row`
/// apart, starting at `off`.
fn copy_into_segments<T: Copy>(
    src: &[T],
    layout: &Layout,
    dst: &mut [T],
    seg: usize,
    row: usize,
    off: usize,
) {
    let mut e = 0;
    layout.for_each_block(|start, len, stride| {
        let mut i = 0;
        while i < len {
            let take = (seg - e % seg).min(len - i);
            let d = (e / seg) * row + off + e % seg;
            let s = start + i * stride;
            if stride == 1 {
                dst[d..d + take].copy_from_slice(&src[s..s + take]);
            } else {
                for (j, o) in dst[d..d + take].iter_mut().enumerate() {
                    *o = src[s + j * stride];
                }
            }
            i += take;
            e += take;
        }
    });
}

/// The typed concatenation; `_like` (the buffer of `tensors[0]`) only fixes `T`.
fn cat_typed<T: WithDType>(
    _like: &[T],
    tensors: &[&Tensor],
    dim: usize,
    out_shape: &[usize],
) -> Result<CpuStorage> {
    let inner: usize = out_shape[dim + 1..].iter().product();
    let row = out_shape[dim] * inner;
    let n: usize = out_shape.iter().product();
    let mut out = vec![T::from_f64(0.0); n];
    let mut off = 0;
    for t in tensors {
        let seg = t.shape()[dim] * inner;
        if seg > 0 && n > 0 {
            let src = t.cpu_storage("cat")?.as_slice::<T>("cat")?;
            copy_into_segments(src, t.layout(), &mut out, seg, row, off);
        }
        off += seg;
    }
    Ok(CpuStorage::from_vec(out))
}

impl Tensor {
    /// Concatenates along `dim`. All tensors share dtype and rank, and their shapes agree except
    /// along `dim`.
    pub fn cat(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
        const OP: &str = "cat";
        let Some(first) = tensors.first() else {
            return Err(Error::op(OP, "needs at least one tensor"));
        };
        let rank = first.rank();
        if dim >= rank {
            return Err(Error::DimOutOfRange {
                op: OP,
                dim: dim as isize,
                rank,
            });
        }
        let mut out_shape = first.shape().to_vec();
        out_shape[dim] = 0;
        for t in tensors {
            if t.dtype() != first.dtype() {
                return Err(Error::DTypeMismatch {
                    op: OP,
                    expected: first.dtype(),
                    got: t.dtype(),
                });
            }
            let agrees =
                t.rank() == rank && (0..rank).all(|d| d == dim || t.shape()[d] == first.shape()[d]);
            if !agrees {
                return Err(Error::ShapeMismatch {
                    op: OP,
                    lhs: first.shape().to_vec(),
                    rhs: t.shape().to_vec(),
                });
            }
            out_shape[dim] += t.shape()[dim];
        }
        let _p = crate::profiler::scope(OP).io(tensors, &out_shape);
        #[cfg(feature = "cuda")]
        if crate::cuda::any_on_cuda(tensors) {
            return crate::cuda::concat::cat(tensors, dim, &out_shape);
        }
        let out = crate::map_cpu_storage!(first.cpu_storage(OP)?, b => {
            cat_typed(b.as_slice(), tensors, dim, &out_shape)?
        });
        Ok(Tensor::from_cpu(out, &out_shape))
    }

    /// Joins equally shaped tensors along a new dim `dim` (0..=rank).
    pub fn stack(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
        const OP: &str = "stack";
        let Some(first) = tensors.first() else {
            return Err(Error::op(OP, "needs at least one tensor"));
        };
        if dim > first.rank() {
            return Err(Error::DimOutOfRange {
                op: OP,
                dim: dim as isize,
                rank: first.rank() + 1,
            });
        }
        if let Some(t) = tensors.iter().find(|t| t.shape() != first.shape()) {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: first.shape().to_vec(),
                rhs: t.shape().to_vec(),
            });
        }
        let views = tensors
            .iter()
            .map(|t| t.unsqueeze(dim))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&views.iter().collect::<Vec<_>>(), dim)
    }

    /// Views of consecutive pieces of `sizes[i]` elements along `dim`; the sizes must sum to the
    /// dim's size.
    pub fn split(&self, sizes: &[usize], dim: usize) -> Result<Vec<Tensor>> {
        const OP: &str = "split";
        if dim >= self.rank() {
            return Err(Error::DimOutOfRange {
                op: OP,
                dim: dim as isize,
                rank: self.rank(),
            });
        }
        let total: usize = sizes.iter().sum();
        if total != self.shape()[dim] {
            return Err(Error::op(
                OP,
                format!(
                    "sizes {sizes:?} sum to {total}, not to dim {dim} of shape {:?}",
                    self.shape()
                ),
            ));
        }
        let mut start = 0;
        sizes
            .iter()
            .map(|&len| {
                start += len;
                self.narrow(dim, start - len, len)
            })
            .collect()
    }

    /// Splits `dim` into `n` views of `ceil(size / n)` elements (the last one smaller); fewer than
    /// `n` when the size does not allow `n` non-empty pieces, as torch.chunk. A dim of size 0
    /// gives `n` empty views.
    pub fn chunk(&self, n: usize, dim: usize) -> Result<Vec<Tensor>> {
        const OP: &str = "chunk";
        if n == 0 {
            return Err(Error::op(OP, "needs at least one chunk"));
        }
        if dim >= self.rank() {
            return Err(Error::DimOutOfRange {
                op: OP,
                dim: dim as isize,
                rank: self.rank(),
            });
        }
        let size = self.shape()[dim];
        let sizes = if size == 0 {
            vec![0; n]
        } else {
            let step = size.div_ceil(n);
            (0..size.div_ceil(step))
                .map(|i| step.min(size - i * step))
                .collect()
        };
        self.split(&sizes, dim)
    }
}

#[cfg(test)]
mod tests {
    use crate::{DType, Device, Rng, Tensor};

    fn rand(shape: &[usize], rng: &mut Rng) -> Tensor {
        Tensor::randn(shape, 0.0, 1.0, DType::F64, Device::Cpu, rng).unwrap()
    }

    /// Naive cat: output element by element from its multi-index.
    fn naive_cat(ts: &[&Tensor], dim: usize) -> Vec<f64> {
        let mut shape = ts[0].shape().to_vec();
        shape[dim] = ts.iter().map(|t| t.shape()[dim]).sum();
        let data: Vec<Vec<f64>> = ts.iter().map(|t| t.to_vec_f64().unwrap()).collect();
        let n: usize = shape.iter().product();
        (0..n)
            .map(|flat| {
                let mut idx = vec![0; shape.len()];
                let mut r = flat;
                for d in (0..shape.len()).rev() {
                    idx[d] = r % shape[d];
                    r /= shape[d];
                }
                let (mut which, mut at) = (0, idx[dim]);
                while at >= ts[which].shape()[dim] {
                    at -= ts[which].shape()[dim];
                    which += 1;
                }
                idx[dim] = at;
                let s = ts[which].shape();
                let lin = idx.iter().zip(s).fold(0, |acc, (&i, &d)| acc * d + i);
                data[which][lin]
            })
            .collect()
    }

    #[test]
    fn cat_matches_naive_on_views_and_empty_pieces() {
        let mut rng = Rng::new(5);
        for dim in 0..3 {
            let shape = |d: usize| {
                let mut s = vec![3, 4, 5];
                s[dim] = d;
                s
            };
            let a = rand(&shape(2), &mut rng);
            let b = rand(&shape(0), &mut rng);
            let c = rand(&shape(1), &mut rng);
            // Non-contiguous: a permuted view and a narrowed view of the right shape.
            let mut sp = shape(3);
            sp.swap(0, 2);
            let d = rand(&sp, &mut rng).transpose(0, 2).unwrap();
            let nd = if dim == 2 { 1 } else { 2 };
            let mut se = shape(4);
            se[nd] += 2;
            let e = rand(&se, &mut rng).narrow(nd, 1, shape(4)[nd]).unwrap();
            assert!(!d.is_contiguous() && !e.is_contiguous());
            let ts = [&a, &b, &c, &d, &e];
            let out = Tensor::cat(&ts, dim).unwrap();
            assert_eq!(out.shape(), &shape(10)[..]);
            assert_eq!(out.to_vec_f64().unwrap(), naive_cat(&ts, dim));
        }
        // Other dtypes, a zero-size other dim, and a single tensor.
        let i = Tensor::arange(0.0, 6.0, 1.0, DType::I64, Device::Cpu)
            .unwrap()
            .reshape(&[2, 3])
            .unwrap();
        let out = Tensor::cat(
            &[
                &i,
                &i.t()
                    .unwrap()
                    .contiguous()
                    .unwrap()
                    .reshape(&[2, 3])
                    .unwrap(),
            ],
            1,
        )
        .unwrap();
        assert_eq!(
            out.to_vec::<i64>().unwrap(),
            vec![0, 1, 2, 0, 3, 1, 3, 4, 5, 4, 2, 5]
        );
        let z = Tensor::zeros(&[0, 4], DType::BF16, Device::Cpu).unwrap();
        assert_eq!(Tensor::cat(&[&z, &z], 1).unwrap().shape(), &[0, 8]);
        assert_eq!(
            Tensor::cat(&[&i], 0).unwrap().to_vec::<i64>().unwrap(),
            i.to_vec::<i64>().unwrap()
        );
    }

    #[test]
    fn stack_split_chunk() {
        let mut rng = Rng::new(6);
        let a = rand(&[2, 3], &mut rng);
        let b = rand(&[3, 2], &mut rng).t().unwrap();
        for dim in 0..3 {
            let s = Tensor::stack(&[&a, &b], dim).unwrap();
            let mut want = vec![2, 3];
            want.insert(dim, 2);
            assert_eq!(s.shape(), &want[..]);
            assert_eq!(
                s.narrow(dim, 1, 1)
                    .unwrap()
                    .squeeze(dim)
                    .unwrap()
                    .to_vec_f64()
                    .unwrap(),
                b.to_vec_f64().unwrap()
            );
        }
        let x = rand(&[2, 7], &mut rng);
        let parts = x.split(&[3, 0, 4], 1).unwrap();
        assert_eq!(
            parts.iter().map(|p| p.shape()[1]).collect::<Vec<_>>(),
            vec![3, 0, 4]
        );
        assert!(parts.iter().all(|p| p.same_storage(&x)));
        assert_eq!(
            Tensor::cat(&parts.iter().collect::<Vec<_>>(), 1)
                .unwrap()
                .to_vec_f64()
                .unwrap(),
            x.to_vec_f64().unwrap()
        );
        assert_eq!(
            parts[2].to_vec_f64().unwrap(),
            x.narrow(1, 3, 4).unwrap().to_vec_f64().unwrap()
        );
        // torch.chunk sizes: 7 into 3 -> [3, 3, 1]; 6 into 4 -> [2, 2, 2]; 2 into 5 -> [1, 1].
        let sizes = |n: usize, k: usize| {
            Tensor::zeros(&[n], DType::F32, Device::Cpu)
                .unwrap()
                .chunk(k, 0)
                .unwrap()
                .iter()
                .map(|c| c.shape()[0])
                .collect::<Vec<_>>()
        };
        assert_eq!(sizes(7, 3), vec![3, 3, 1]);
        assert_eq!(sizes(6, 4), vec![2, 2, 2]);
        assert_eq!(sizes(2, 5), vec![1, 1]);
        assert_eq!(sizes(0, 3), vec![0, 0, 0]);
        assert_eq!(sizes(5, 1), vec![5]);
    }

    #[test]
    fn errors_name_the_op() {
        let a = Tensor::zeros(&[2, 3], DType::F32, Device::Cpu).unwrap();
        let b = Tensor::zeros(&[3, 3], DType::F32, Device::Cpu).unwrap();
        let msg = |r: crate::Result<Tensor>| r.unwrap_err().to_string();
        let e = msg(Tensor::cat(&[&a, &b], 1));
        assert!(
            e.starts_with("cat: shape mismatch") && e.contains("[3, 3]"),
            "{e}"
        );
        assert!(msg(Tensor::cat(&[], 0)).starts_with("cat:"));
        assert!(msg(Tensor::cat(&[&a], 2)).starts_with("cat:"));
        let r = Tensor::zeros(&[2], DType::F32, Device::Cpu).unwrap();
        assert!(msg(Tensor::cat(&[&a, &r], 0)).starts_with("cat: shape mismatch"));
        let i = Tensor::zeros(&[2, 3], DType::I64, Device::Cpu).unwrap();
        assert!(msg(Tensor::cat(&[&a, &i], 0)).starts_with("cat: expected dtype f32"));
        assert!(msg(Tensor::stack(&[&a, &b], 0)).starts_with("stack:"));
        assert!(msg(Tensor::stack(&[&a], 3)).starts_with("stack:"));
        assert!(a
            .split(&[1, 1], 1)
            .unwrap_err()
            .to_string()
            .starts_with("split:"));
        assert!(a.chunk(0, 1).unwrap_err().to_string().starts_with("chunk:"));
        assert!(a.chunk(2, 2).unwrap_err().to_string().starts_with("chunk:"));
    }
}
