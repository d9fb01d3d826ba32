//! Indexing with i64 index tensors, as torch: `embedding` (rows of a `[V, H]` table) and its
//! backward, `index_select` / `index_add` (whole slices along a dim) and `gather` / `scatter_add`
//! (element by element along a dim). Each accumulating op is the adjoint of a selecting one:
//! `index_add` of `index_select`, `scatter_add` of `gather`, `embedding_backward` of `embedding`.
//!
//! Selection works for every dtype. Accumulation sums in the tensor's dtype (f16/bf16 in f32,
//! rounded once at the end; integers wrap). Outputs are contiguous; the kernels are in
//! `crate::cpu::index`, and in `crate::cuda::index` for tensors on a GPU. On the CPU every index
//! is checked before any work: a negative or too large one is `Error::IndexOutOfRange` naming
//! the op. On a GPU the ids are never downloaded (that would drain the queue at every op): the
//! kernels check them, skip a bad one (a zero row, no update) and report it, naming the op,
//! through the status word that [`Device::check_status`](crate::Device::check_status) reads once
//! per training step.

use crate::cpu::index::{self as kernel, Accumulate, Strided};
use crate::{map_cpu_storage, CpuStorage, DType, Error, Result, Tensor, WithDType};
use std::borrow::Cow;

/// The elements of a contiguous CPU tensor as a typed slice.
fn slice_of<'a, T: WithDType>(op: &'static str, t: &'a Tensor) -> Result<&'a [T]> {
    let r = t.layout().contiguous_range().expect("contiguous tensor");
    Ok(&t.cpu_storage(op)?.as_slice::<T>(op)?[r])
}

/// The elements of a contiguous i64 index tensor on the CPU (GPU ids stay on the device).
fn host_ids<'a>(op: &'static str, t: &'a Tensor) -> Result<Cow<'a, [i64]>> {
    Ok(Cow::Borrowed(slice_of::<i64>(op, t)?))
}

/// A contiguous copy (or view) of an i64 index tensor.
fn index_tensor(op: &'static str, t: &Tensor) -> Result<Tensor> {
    if t.dtype() != DType::I64 {
        return Err(Error::DTypeMismatch {
            op,
            expected: DType::I64,
            got: t.dtype(),
        });
    }
    t.contiguous()
}

/// Every index must lie in `0..size`.
fn check_range(op: &'static str, ids: &[i64], size: usize) -> Result<()> {
    match ids.iter().find(|&&i| i < 0 || i as u64 >= size as u64) {
        Some(&index) => Err(Error::IndexOutOfRange { op, index, size }),
        None => Ok(()),
    }
}

fn check_dim(op: &'static str, dim: usize, rank: usize) -> Result<()> {
    if dim >= rank {
        return Err(Error::DimOutOfRange {
            op,
            dim: dim as isize,
            rank,
        });
    }
    Ok(())
}

fn check_dtype(op: &'static str, expected: DType, got: DType) -> Result<()> {
    if expected != got {
        return Err(Error::DTypeMismatch { op, expected, got });
    }
    Ok(())
}

/// `(outer, d, inner)`: the products of the dims before `dim`, at it, and after it.
fn around(shape: &[usize], dim: usize) -> (usize, usize, usize) {
    (
        shape[..dim].iter().product(),
        shape[dim],
        shape[dim + 1..].iter().product(),
    )
}

/// Slices of `src` along `dim` at `ids` (already checked), shaped `out_shape`.
fn select(src: &Tensor, dim: usize, ids: &[i64], out_shape: &[usize]) -> Result<Tensor> {
    let (outer, d, inner) = around(src.shape(), dim);
    let src = src.contiguous()?;
    let r = src.layout().contiguous_range().expect("contiguous");
    let out = map_cpu_storage!(src.cpu_storage("index_select")?, b => CpuStorage::from_vec(
        kernel::index_select(&b.as_slice()[r], outer, d, inner, ids)
    ));
    Ok(Tensor::from_cpu(out, out_shape))
}

/// Calls `$f::<T>(args)` with `T` the element type of an accumulating kernel for `$dtype`
/// (f16/bf16 are widened to f32 by the callers before this).
macro_rules! with_accumulate_type {
    ($op:expr, $dtype:expr, $f:ident($($arg:expr),*)) => {
        match $dtype {
            DType::F32 => $f::<f32>($($arg),*),
            DType::F64 => $f::<f64>($($arg),*),
            DType::I64 => $f::<i64>($($arg),*),
            DType::U8 => $f::<u8>($($arg),*),
            dtype => Err(Error::UnsupportedDType { op: $op, dtype }),
        }
    };
}

fn is_half(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16)
}

/// `base` (zeros when `None`) of shape `shape`, with slice `j` of `src` along `dim` added at slice
/// `ids[j]` (already checked). f16/bf16 accumulate in f32.
fn add_slices(
    op: &'static str,
    base: Option<&Tensor>,
    shape: &[usize],
    dim: usize,
    ids: &[i64],
    src: &Tensor,
) -> Result<Tensor> {
    if is_half(src.dtype()) {
        let wide = base.map(|b| b.to_dtype(DType::F32)).transpose()?;
        let out = add_slices(
            op,
            wide.as_ref(),
            shape,
            dim,
            ids,
            &src.to_dtype(DType::F32)?,
        )?;
        return out.to_dtype(src.dtype());
    }
    fn typed<T: Accumulate>(
        op: &'static str,
        base: Option<&Tensor>,
        shape: &[usize],
        dim: usize,
        ids: &[i64],
        src: &Tensor,
    ) -> Result<Tensor> {
        let mut out = match base {
            Some(b) => slice_of::<T>(op, &b.contiguous()?)?.to_vec(),
            None => vec![T::ZERO; shape.iter().product()],
        };
        let src = src.contiguous()?;
        let (outer, d, inner) = around(shape, dim);
        kernel::index_add(&mut out, slice_of::<T>(op, &src)?, outer, d, inner, ids);
        Ok(Tensor::from_cpu(CpuStorage::from_vec(out), shape))
    }
    with_accumulate_type!(op, src.dtype(), typed(op, base, shape, dim, ids, src))
}

/// `base` with `src` scattered-added along `dim` at `idx` (contiguous, of shape `index_shape`,
/// already checked). f16/bf16 accumulate in f32.
fn scatter(
    op: &'static str,
    base: &Tensor,
    dim: usize,
    idx: &[i64],
    index_shape: &[usize],
    src: &Tensor,
) -> Result<Tensor> {
    if is_half(src.dtype()) {
        let (b, s) = (base.to_dtype(DType::F32)?, src.to_dtype(DType::F32)?);
        return scatter(op, &b, dim, idx, index_shape, &s)?.to_dtype(src.dtype());
    }
    fn typed<T: Accumulate>(
        op: &'static str,
        base: &Tensor,
        dim: usize,
        idx: &[i64],
        index_shape: &[usize],
        src: &Tensor,
    ) -> Result<Tensor> {
        let base = base.contiguous()?;
        let mut out = slice_of::<T>(op, &base)?.to_vec();
        let src = Strided::new(src.cpu_storage(op)?.as_slice::<T>(op)?, src.layout());
        kernel::scatter_add(&mut out, base.shape(), dim, idx, index_shape, src);
        Ok(Tensor::from_cpu(CpuStorage::from_vec(out), base.shape()))
    }
    with_accumulate_type!(op, src.dtype(), typed(op, base, dim, idx, index_shape, src))
}

/// Errors unless the index tensor is 1-D.
fn one_d(op: &'static str, ids: &Tensor) -> Result<()> {
    if ids.rank() != 1 {
        return Err(Error::op(
            op,
            format!("indices must be 1-D, got shape {:?}", ids.shape()),
        ));
    }
    Ok(())
}

/// `index` has the rank of `t` and is no larger in every dim but `except`.
fn check_fits(op: &'static str, index: &Tensor, t: &Tensor, except: Option<usize>) -> Result<()> {
    let fits = index.rank() == t.rank()
        && (0..t.rank()).all(|d| Some(d) == except || index.shape()[d] <= t.shape()[d]);
    if !fits {
        return Err(Error::ShapeMismatch {
            op,
            lhs: t.shape().to_vec(),
            rhs: index.shape().to_vec(),
        });
    }
    Ok(())
}

impl Tensor {
    // ---- embedding ------------------------------------------------------------------------

    /// Rows of `weight` (`[V, H]`) at `ids` (i64, any shape): shape `ids.shape + [H]`.
    pub fn embedding(weight: &Tensor, ids: &Tensor) -> Result<Tensor> {
        const OP: &str = "embedding";
        if weight.rank() != 2 {
            return Err(Error::op(
                OP,
                format!("weight must be [V, H], got {:?}", weight.shape()),
            ));
        }
        let ids_c = index_tensor(OP, ids)?;
        let _p = match crate::profiler::enabled() {
            true => {
                let out_shape = [ids.shape(), &weight.shape()[1..]].concat();
                crate::profiler::scope(OP).io_gather(weight, ids, &out_shape)
            }
            false => crate::profiler::scope(OP),
        };
        #[cfg(feature = "cuda")]
        if crate::cuda::any_on_cuda(&[weight, ids]) {
            return crate::cuda::index::embedding(weight, &ids_c);
        }
        let flat = host_ids(OP, &ids_c)?;
        check_range(OP, &flat, weight.shape()[0])?;
        let mut shape = ids.shape().to_vec();
        shape.push(weight.shape()[1]);
        select(weight, 0, &flat, &shape)
    }

    /// The gradient of `embedding` for its weight: a `[num_embeddings, H]` tensor where row `v`
    /// is the sum of the rows of `dy` (`ids.shape + [H]`) whose id is `v`, added in order of
    /// position (deterministic whatever the thread count; on a GPU, f32 atomics in any order).
    pub fn embedding_backward(ids: &Tensor, dy: &Tensor, num_embeddings: usize) -> Result<Tensor> {
        const OP: &str = "embedding_backward";
        let shape_ok = dy.rank() == ids.rank() + 1 && dy.shape()[..ids.rank()] == *ids.shape();
        if !shape_ok {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: ids.shape().to_vec(),
                rhs: dy.shape().to_vec(),
            });
        }
        let ids_c = index_tensor(OP, ids)?;
        let h = dy.shape()[ids.rank()];
        let _p = crate::profiler::scope(OP).io(&[dy, ids], &[num_embeddings, h]);
        #[cfg(feature = "cuda")]
        if crate::cuda::any_on_cuda(&[ids, dy]) {
            return crate::cuda::index::embedding_backward(&ids_c, dy, num_embeddings);
        }
        let flat = host_ids(OP, &ids_c)?;
        check_range(OP, &flat, num_embeddings)?;
        let dy2 = dy.reshape(&[flat.len(), h])?;
        add_slices(OP, None, &[num_embeddings, h], 0, &flat, &dy2)
    }

    // ---- slices along a dim ---------------------------------------------------------------

    /// Slices along `dim` at `indices` (1-D i64), as torch.index_select.
    pub fn index_select(&self, dim: usize, indices: &Tensor) -> Result<Tensor> {
        const OP: &str = "index_select";
        check_dim(OP, dim, self.rank())?;
        let ids_c = index_tensor(OP, indices)?;
        one_d(OP, &ids_c)?;
        let mut shape = self.shape().to_vec();
        shape[dim] = ids_c.elem_count();
        let _p = crate::profiler::scope(OP).io_gather(self, indices, &shape);
        #[cfg(feature = "cuda")]
        if crate::cuda::any_on_cuda(&[self, indices]) {
            return crate::cuda::index::index_select(self, dim, &ids_c, &shape);
        }
        let ids = host_ids(OP, &ids_c)?;
        check_range(OP, &ids, self.shape()[dim])?;
        select(self, dim, &ids, &shape)
    }

    /// `self` with slice `j` of `src` along `dim` added at slice `indices[j]`, as
    /// torch.index_add (out of place). `src` is shaped like `self` except `indices.len()` along
    /// `dim`. Repeated indices accumulate, in order of `j` (on a GPU: atomics in any order, so
    /// float sums agree to rounding).
    pub fn index_add(&self, dim: usize, indices: &Tensor, src: &Tensor) -> Result<Tensor> {
        const OP: &str = "index_add";
        check_dim(OP, dim, self.rank())?;
        check_dtype(OP, self.dtype(), src.dtype())?;
        let ids_c = index_tensor(OP, indices)?;
        one_d(OP, &ids_c)?;
        let mut want = self.shape().to_vec();
        want[dim] = ids_c.elem_count();
        if src.shape() != want {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: want,
                rhs: src.shape().to_vec(),
            });
        }
        let _p = crate::profiler::scope(OP).io(&[self, indices, src], self.shape());
        #[cfg(feature = "cuda")]
        if crate::cuda::any_on_cuda(&[self, indices, src]) {
            return crate::cuda::index::index_add(self, dim, &ids_c, src);
        }
        let ids = host_ids(OP, &ids_c)?;
        check_range(OP, &ids, self.shape()[dim])?;
        add_slices(OP, Some(self), self.shape(), dim, &ids, src)
    }

    // ---- element-wise along a dim ---------------------------------------------------------

    /// torch.gather: `out[p] = self[p with p[dim] = index[p]]` for every position `p` of `index`
    /// (i64, same rank as `self`, no larger than `self` in the other dims). Shape of `index`.
    pub fn gather(&self, dim: usize, index: &Tensor) -> Result<Tensor> {
        const OP: &str = "gather";
        check_dim(OP, dim, self.rank())?;
        check_fits(OP, index, self, Some(dim))?;
        let idx_c = index_tensor(OP, index)?;
        let _p = crate::profiler::scope(OP).io_gather(self, index, index.shape());
        #[cfg(feature = "cuda")]
        if crate::cuda::any_on_cuda(&[self, index]) {
            return crate::cuda::index::gather(self, dim, &idx_c);
        }
        let idx = host_ids(OP, &idx_c)?;
        check_range(OP, &idx, self.shape()[dim])?;
        let out = map_cpu_storage!(self.cpu_storage(OP)?, b => {
            let src = Strided::new(b.as_slice(), self.layout());
            CpuStorage::from_vec(kernel::gather(src, dim, &idx, index.shape()))
        });
        Ok(Tensor::from_cpu(out, index.shape()))
    }

    /// torch.scatter_add, out of place: `self` with `src[p]` added at `p with p[dim] = index[p]`
    /// for every position `p` of `index` (i64, same rank, no larger than `src`, and no larger
    /// than `self` outside `dim`). Additions happen in row-major order of `index` (on a GPU:
    /// atomics in any order, so float sums agree to rounding).
    pub fn scatter_add(&self, dim: usize, index: &Tensor, src: &Tensor) -> Result<Tensor> {
        const OP: &str = "scatter_add";
        check_dim(OP, dim, self.rank())?;
        check_dtype(OP, self.dtype(), src.dtype())?;
        check_fits(OP, index, self, Some(dim))?;
        check_fits(OP, index, src, None)?;
        let idx_c = index_tensor(OP, index)?;
        let _p = crate::profiler::scope(OP).io(&[self, index, src], self.shape());
        #[cfg(feature = "cuda")]
        if crate::cuda::any_on_cuda(&[self, index, src]) {
            return crate::cuda::index::scatter_add(self, dim, &idx_c, src);
        }
        let idx = host_ids(OP, &idx_c)?;
        check_range(OP, &idx, self.shape()[dim])?;
        scatter(OP, self, dim, &idx, index.shape(), src)
    }
}

#[cfg(test)]
mod tests {
    use crate::{DType, Device, Rng, Tensor};

    fn rand(shape: &[usize], rng: &mut Rng) -> Tensor {
        Tensor::randn(shape, 0.0, 1.0, DType::F64, Device::Cpu, rng).unwrap()
    }

    fn ids(n: usize, below: u64, rng: &mut Rng) -> Vec<i64> {
        (0..n).map(|_| rng.below(below) as i64).collect()
    }

    fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
        let mut idx = vec![0; shape.len()];
        for d in (0..shape.len()).rev() {
            idx[d] = flat % shape[d];
            flat /= shape[d];
        }
        idx
    }

    fn ravel(idx: &[usize], shape: &[usize]) -> usize {
        idx.iter().zip(shape).fold(0, |acc, (&i, &d)| acc * d + i)
    }

    fn dot(a: &Tensor, b: &Tensor) -> f64 {
        let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
        a.iter().zip(&b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn embedding_and_backward_match_naive_loops() {
        let mut rng = Rng::new(1);
        let (v, h) = (7, 5);
        let w = rand(&[v, h], &mut rng);
        let wv = w.to_vec_f64().unwrap();
        // Ids as a transposed view; repeats are certain with 12 ids over 7 rows.
        let id = Tensor::from_vec(ids(12, v as u64, &mut rng), &[4, 3])
            .unwrap()
            .t()
            .unwrap();
        let e = Tensor::embedding(&w, &id).unwrap();
        assert_eq!(e.shape(), &[3, 4, h]);
        let flat = id.to_vec::<i64>().unwrap();
        let want: Vec<f64> = flat
            .iter()
            .flat_map(|&i| wv[i as usize * h..][..h].to_vec())
            .collect();
        assert_eq!(e.to_vec_f64().unwrap(), want);
        // Other dtypes select the same elements.
        for dt in [DType::BF16, DType::I64, DType::U8] {
            let got = Tensor::embedding(&w.to_dtype(dt).unwrap(), &id).unwrap();
            assert_eq!(got.dtype(), dt);
            assert_eq!(
                got.to_vec_f64().unwrap(),
                e.to_dtype(dt).unwrap().to_vec_f64().unwrap()
            );
        }
        // Backward: naive scatter-add in position order, so bitwise equal.
        let dy = rand(&[3, 4, h], &mut rng);
        let dyv = dy.to_vec_f64().unwrap();
        let mut want = vec![0.0; v * h];
        for (p, &i) in flat.iter().enumerate() {
            for c in 0..h {
                want[i as usize * h + c] += dyv[p * h + c];
            }
        }
        let g = Tensor::embedding_backward(&id, &dy, v).unwrap();
        assert_eq!(g.shape(), &[v, h]);
        assert_eq!(g.to_vec_f64().unwrap(), want);
        // Repeated ids accumulate.
        let rep = Tensor::from_vec(vec![2i64, 2, 2], &[3]).unwrap();
        let ones = Tensor::ones(&[3, 2], DType::F32, Device::Cpu).unwrap();
        let g = Tensor::embedding_backward(&rep, &ones, 4).unwrap();
        assert_eq!(
            g.to_vec::<f32>().unwrap(),
            vec![0., 0., 0., 0., 3., 3., 0., 0.]
        );
        // f16 accumulates in f32 and rounds once.
        let g16 = Tensor::embedding_backward(&id, &dy.to_dtype(DType::F16).unwrap(), v).unwrap();
        let g32 = Tensor::embedding_backward(
            &id,
            &dy.to_dtype(DType::F16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap(),
            v,
        )
        .unwrap();
        assert_eq!(g16.dtype(), DType::F16);
        assert_eq!(
            g16.to_vec_f64().unwrap(),
            g32.to_dtype(DType::F16).unwrap().to_vec_f64().unwrap()
        );
        // Empty ids.
        let none = Tensor::from_vec(Vec::<i64>::new(), &[2, 0]).unwrap();
        assert_eq!(Tensor::embedding(&w, &none).unwrap().shape(), &[2, 0, h]);
        let dz = Tensor::zeros(&[2, 0, h], DType::F64, Device::Cpu).unwrap();
        let gz = Tensor::embedding_backward(&none, &dz, v).unwrap();
        assert!(gz.to_vec_f64().unwrap().iter().all(|&x| x == 0.0));
    }

    #[test]
    fn embedding_backward_is_bit_identical_across_thread_counts() {
        let mut rng = Rng::new(2);
        let (v, h, n) = (300, 256, 3000);
        let id = Tensor::from_vec(ids(n, v as u64, &mut rng), &[n]).unwrap();
        let dy = Tensor::randn(&[n, h], 0.0, 1.0, DType::F32, Device::Cpu, &mut rng).unwrap();
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                Tensor::embedding_backward(&id, &dy, v)
                    .unwrap()
                    .to_vec::<f32>()
                    .unwrap()
            })
        };
        let one = run(1);
        assert_eq!(one, run(3));
        // And equal to the sequential loop.
        let (flat, dyv) = (id.to_vec::<i64>().unwrap(), dy.to_vec::<f32>().unwrap());
        let mut want = vec![0f32; v * h];
        for (p, &i) in flat.iter().enumerate() {
            for c in 0..h {
                want[i as usize * h + c] += dyv[p * h + c];
            }
        }
        assert_eq!(one, want);
    }

    #[test]
    fn index_select_and_index_add_match_naive_and_are_adjoint() {
        let mut rng = Rng::new(3);
        // A permuted (non-contiguous) [4, 3, 5] input.
        let x = rand(&[5, 4, 3], &mut rng).permute(&[1, 2, 0]).unwrap();
        let shape = x.shape().to_vec();
        let xv = x.to_vec_f64().unwrap();
        for dim in 0..3 {
            for k in [0, 1, 6] {
                let iv = ids(k, shape[dim] as u64, &mut rng);
                let it = Tensor::from_vec(iv.clone(), &[k]).unwrap();
                let s = x.index_select(dim, &it).unwrap();
                let mut os = shape.clone();
                os[dim] = k;
                assert_eq!(s.shape(), &os[..]);
                let want: Vec<f64> = (0..os.iter().product())
                    .map(|f| {
                        let mut p = unravel(f, &os);
                        p[dim] = iv[p[dim]] as usize;
                        xv[ravel(&p, &shape)]
                    })
                    .collect();
                assert_eq!(s.to_vec_f64().unwrap(), want);
                // index_add against a naive loop, with a transposed src.
                let mut ts = os.clone();
                ts.swap(0, 2);
                let y = rand(&ts, &mut rng).transpose(0, 2).unwrap();
                let got = x.index_add(dim, &it, &y).unwrap();
                let mut want = xv.clone();
                let yv = y.to_vec_f64().unwrap();
                for (f, &yy) in yv.iter().enumerate() {
                    let mut p = unravel(f, &os);
                    p[dim] = iv[p[dim]] as usize;
                    want[ravel(&p, &shape)] += yy;
                }
                let gv = got.to_vec_f64().unwrap();
                assert!(gv.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-12));
                // Adjoint: <select(x), y> == <x, index_add(0, idx, y)>.
                let z = Tensor::zeros(&shape, DType::F64, Device::Cpu).unwrap();
                let lhs = dot(&s, &y);
                let rhs = dot(&x, &z.index_add(dim, &it, &y).unwrap());
                assert!((lhs - rhs).abs() < 1e-9, "{lhs} {rhs}");
            }
        }
        // Integer dtypes accumulate (u8 wraps).
        let u = Tensor::from_vec(vec![250u8, 1], &[2]).unwrap();
        let i = Tensor::from_vec(vec![0i64, 0], &[2]).unwrap();
        let s = Tensor::from_vec(vec![3u8, 4], &[2]).unwrap();
        assert_eq!(
            u.index_add(0, &i, &s).unwrap().to_vec::<u8>().unwrap(),
            vec![1, 1]
        );
    }

    /// Naive gather and scatter_add over an index of shape `ishape`.
    fn naive_gather(x: &Tensor, dim: usize, idx: &[i64], ishape: &[usize]) -> Vec<f64> {
        let xv = x.to_vec_f64().unwrap();
        (0..idx.len())
            .map(|f| {
                let mut p = unravel(f, ishape);
                p[dim] = idx[f] as usize;
                xv[ravel(&p, x.shape())]
            })
            .collect()
    }

    fn naive_scatter_add(
        x: &Tensor,
        dim: usize,
        idx: &[i64],
        ishape: &[usize],
        src: &Tensor,
    ) -> Vec<f64> {
        let mut out = x.to_vec_f64().unwrap();
        let sv = src.to_vec_f64().unwrap();
        for (f, &i) in idx.iter().enumerate() {
            let p = unravel(f, ishape);
            let s = sv[ravel(&p, src.shape())];
            let mut q = p;
            q[dim] = i as usize;
            out[ravel(&q, x.shape())] += s;
        }
        out
    }

    #[test]
    fn gather_and_scatter_add_match_naive_and_are_adjoint() {
        let mut rng = Rng::new(4);
        let x = rand(&[6, 4, 5], &mut rng).transpose(0, 2).unwrap(); // [5, 4, 6], strided
        for dim in 0..3 {
            for ishape in [[5, 4, 6], [3, 2, 1], [2, 0, 3], [1, 1, 9]] {
                let mut ishape = ishape;
                for (d, s) in ishape.iter_mut().enumerate() {
                    if d != dim {
                        *s = (*s).min(x.shape()[d]);
                    }
                }
                let n: usize = ishape.iter().product();
                let iv = ids(n, x.shape()[dim] as u64, &mut rng);
                let it = Tensor::from_vec(iv.clone(), &ishape).unwrap();
                let g = x.gather(dim, &it).unwrap();
                assert_eq!(g.shape(), &ishape[..]);
                assert_eq!(g.to_vec_f64().unwrap(), naive_gather(&x, dim, &iv, &ishape));
                // scatter_add with a src larger than the index and a strided self.
                let src = rand(&[ishape[0] + 1, ishape[1], ishape[2] + 2], &mut rng);
                let got = x.scatter_add(dim, &it, &src).unwrap();
                assert_eq!(got.shape(), x.shape());
                assert_eq!(
                    got.to_vec_f64().unwrap(),
                    naive_scatter_add(&x, dim, &iv, &ishape, &src)
                );
                // Adjoint: <gather(x), y> == <x, scatter_add(0, idx, y)>.
                let y = rand(&ishape, &mut rng);
                let z = Tensor::zeros(x.shape(), DType::F64, Device::Cpu).unwrap();
                let (lhs, rhs) = (dot(&g, &y), dot(&x, &z.scatter_add(dim, &it, &y).unwrap()));
                assert!((lhs - rhs).abs() < 1e-9, "{lhs} {rhs}");
            }
        }
        // Index as a transposed view, half and integer dtypes.
        let it = Tensor::from_vec(ids(24, 5, &mut rng), &[6, 4])
            .unwrap()
            .t()
            .unwrap();
        let m = rand(&[5, 6], &mut rng);
        let want = naive_gather(&m, 0, &it.to_vec::<i64>().unwrap(), &[4, 6]);
        assert_eq!(m.gather(0, &it).unwrap().to_vec_f64().unwrap(), want);
        let mh = m.to_dtype(DType::BF16).unwrap();
        let sh = mh
            .scatter_add(0, &it, &mh.narrow(0, 0, 4).unwrap())
            .unwrap();
        let sf = m
            .to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let sf = sf
            .scatter_add(0, &it, &sf.narrow(0, 0, 4).unwrap())
            .unwrap();
        assert_eq!(sh.dtype(), DType::BF16);
        assert_eq!(
            sh.to_vec_f64().unwrap(),
            sf.to_dtype(DType::BF16).unwrap().to_vec_f64().unwrap()
        );
        let mi = m.to_dtype(DType::I64).unwrap();
        assert_eq!(
            mi.gather(0, &it).unwrap().to_vec_f64().unwrap(),
            naive_gather(&mi, 0, &it.to_vec::<i64>().unwrap(), &[4, 6])
        );
    }

    #[test]
    fn parallel_scatter_add_matches_naive() {
        // Large enough (>= 32K index elements, dim != 0) for the parallel path.
        let mut rng = Rng::new(5);
        let x = rand(&[64, 40, 30], &mut rng);
        let iv = ids(64 * 40 * 30, 40, &mut rng);
        let it = Tensor::from_vec(iv.clone(), &[64, 40, 30]).unwrap();
        let src = rand(&[64, 40, 30], &mut rng);
        let got = x.scatter_add(1, &it, &src).unwrap();
        assert_eq!(
            got.to_vec_f64().unwrap(),
            naive_scatter_add(&x, 1, &iv, &[64, 40, 30], &src)
        );
    }

    #[test]
    fn errors_name_the_op() {
        let w = Tensor::zeros(&[4, 3], DType::F32, Device::Cpu).unwrap();
        let msg = |r: crate::Result<Tensor>| r.unwrap_err().to_string();
        let bad = |v: i64| Tensor::from_vec(vec![0i64, v], &[2]).unwrap();
        for v in [-1, 4] {
            let e = msg(Tensor::embedding(&w, &bad(v)));
            assert!(
                e.starts_with("embedding: index") && e.contains(&format!("{v}")),
                "{e}"
            );
            let dy = Tensor::zeros(&[2, 3], DType::F32, Device::Cpu).unwrap();
            assert!(msg(Tensor::embedding_backward(&bad(v), &dy, 4))
                .starts_with("embedding_backward: index"));
            assert!(msg(w.index_select(0, &bad(v))).starts_with("index_select: index"));
            assert!(msg(w.index_add(0, &bad(v), &dy)).starts_with("index_add: index"));
            let i2 = bad(v).reshape(&[2, 1]).unwrap();
            assert!(msg(w.gather(0, &i2)).starts_with("gather: index"));
            let s2 = Tensor::zeros(&[2, 1], DType::F32, Device::Cpu).unwrap();
            assert!(msg(w.scatter_add(0, &i2, &s2)).starts_with("scatter_add: index"));
        }
        let fid = Tensor::zeros(&[2], DType::F32, Device::Cpu).unwrap();
        assert!(msg(Tensor::embedding(&w, &fid)).starts_with("embedding: expected dtype i64"));
        assert!(
            msg(Tensor::embedding(&w.reshape(&[12]).unwrap(), &bad(0))).starts_with("embedding:")
        );
        let dy = Tensor::zeros(&[3, 3], DType::F32, Device::Cpu).unwrap();
        assert!(msg(Tensor::embedding_backward(&bad(0), &dy, 4))
            .starts_with("embedding_backward: shape"));
        assert!(msg(w.index_select(2, &bad(0))).starts_with("index_select: dim 2"));
        assert!(
            msg(w.index_select(0, &bad(0).reshape(&[1, 2]).unwrap())).starts_with("index_select:")
        );
        assert!(msg(w.index_add(0, &bad(0), &dy)).starts_with("index_add: shape"));
        let big = Tensor::zeros(&[2, 4], DType::I64, Device::Cpu).unwrap();
        assert!(msg(w.gather(0, &big)).starts_with("gather: shape"));
        assert!(msg(w.gather(0, &bad(0))).starts_with("gather: shape"));
        let i2 = Tensor::zeros(&[2, 3], DType::I64, Device::Cpu).unwrap();
        let small = Tensor::zeros(&[2, 2], DType::F32, Device::Cpu).unwrap();
        assert!(msg(w.scatter_add(0, &i2, &small)).starts_with("scatter_add: shape"));
        let wrong = Tensor::zeros(&[2, 3], DType::F64, Device::Cpu).unwrap();
        assert!(msg(w.scatter_add(0, &i2, &wrong)).starts_with("scatter_add: expected dtype f32"));
    }
}
