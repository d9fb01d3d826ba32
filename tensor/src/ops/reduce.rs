//! Reductions: `sum`, `mean`, `var` over a set of dims; `max`, `min`, `argmax`, `argmin` over one
//! dim; `sum_all`, `mean_all`, `norm_l2` over everything; and `sum_to_shape`, which undoes a
//! broadcast by summing (the backward of every broadcasting op).
//!
//! Semantics follow torch: `keepdim` keeps reduced dims as size 1; an empty `dims` list reduces
//! nothing (unlike torch's `sum(dim=[])`, which reduces everything: use `sum_all`). Float sums
//! accumulate in f64 whatever the dtype and round once at the end; i64 and u8 sums give i64
//! (wrapping). `mean` over zero elements is NaN, `sum` is 0; `max`/`min`/`arg*` over a zero-size
//! dim are errors. `argmax`/`argmin` return the first index of the extreme (i64), NaN counting as
//! the maximum and the minimum. `max`/`min`/`arg*` work on every dtype. The input is made
//! contiguous first; the kernel (`crate::cpu::reduce`) then streams whole rows or slices.

use crate::cpu::reduce::{self as kernel, Best, FloatSum, IntSum};
use crate::{map_cpu_storage, CpuStorage, DType, Error, Result, Tensor, WithDType};
use std::ops::Range;

/// The reduced-dims mask for `dims`, rejecting out-of-range and repeated dims.
fn reduce_mask(op: &'static str, shape: &[usize], dims: &[usize]) -> Result<Vec<bool>> {
    let rank = shape.len();
    let mut mask = vec![false; rank];
    for &d in dims {
        if d >= rank {
            return Err(Error::DimOutOfRange {
                op,
                dim: d as isize,
                rank,
            });
        }
        if std::mem::replace(&mut mask[d], true) {
            crate::bail!(op, "dim {d} repeated in {dims:?} (shape {shape:?})");
        }
    }
    Ok(mask)
}

/// The shape left after reducing the masked dims.
/// The profiler scope of a reduction: reads `x`, writes the reduced shape.
fn reduce_scope(
    op: &'static str,
    x: &Tensor,
    mask: &[bool],
    keepdim: bool,
) -> crate::profiler::Scope {
    if !crate::profiler::enabled() {
        return crate::profiler::scope(op);
    }
    crate::profiler::scope(op).io(&[x], &out_shape(x.shape(), mask, keepdim))
}

fn out_shape(shape: &[usize], mask: &[bool], keepdim: bool) -> Vec<usize> {
    shape
        .iter()
        .zip(mask)
        .filter_map(|(&d, &m)| match (m, keepdim) {
            (false, _) => Some(d),
            (true, true) => Some(1),
            (true, false) => None,
        })
        .collect()
}

/// Number of elements each output reduces over.
fn reduced_count(shape: &[usize], mask: &[bool]) -> usize {
    shape
        .iter()
        .zip(mask)
        .filter(|(_, &m)| m)
        .map(|(&d, _)| d)
        .product()
}

fn require_float(op: &'static str, dtype: DType) -> Result<()> {
    if dtype.is_float() {
        Ok(())
    } else {
        Err(Error::UnsupportedDType { op, dtype })
    }
}

fn float_sum_cpu<const SQ: bool>(
    s: &CpuStorage,
    range: Range<usize>,
    shape: &[usize],
    mask: &[bool],
    r: &FloatSum<SQ>,
) -> CpuStorage {
    map_cpu_storage!(s, b => CpuStorage::from_vec(kernel::reduce(&b.as_slice()[range], shape, mask, r)))
}

fn int_sum_cpu(
    s: &CpuStorage,
    range: Range<usize>,
    shape: &[usize],
    mask: &[bool],
) -> Result<CpuStorage> {
    let out = match s {
        CpuStorage::I64(b) => kernel::reduce(&b.as_slice()[range], shape, mask, &IntSum),
        CpuStorage::U8(b) => kernel::reduce(&b.as_slice()[range], shape, mask, &IntSum),
        _ => {
            return Err(Error::UnsupportedDType {
                op: "sum",
                dtype: s.dtype(),
            })
        }
    };
    Ok(CpuStorage::from_vec(out))
}

/// Values (or, with `index`, i64 indices) of the max (`MAX`) or min over the masked dim.
fn best_cpu<T: WithDType, const MAX: bool>(
    x: &[T],
    shape: &[usize],
    mask: &[bool],
    index: bool,
) -> CpuStorage {
    let v = kernel::reduce(x, shape, mask, &Best::<MAX>);
    if index {
        CpuStorage::from_vec(v.iter().map(|p| p.1).collect())
    } else {
        CpuStorage::from_vec(v.iter().map(|p| p.0).collect())
    }
}

impl Tensor {
    /// Makes the input contiguous, runs the CPU kernel on its elements, and shapes the result.
    fn reduce_with(
        &self,
        op: &'static str,
        mask: &[bool],
        keepdim: bool,
        cpu: impl FnOnce(&CpuStorage, Range<usize>) -> Result<CpuStorage>,
    ) -> Result<Tensor> {
        let x = self.contiguous()?;
        let range = x
            .layout()
            .contiguous_range()
            .ok_or_else(|| Error::op(op, "input is not contiguous after contiguous()"))?;
        // Every caller takes its CUDA path before this, so the storage is on the CPU here.
        let out = cpu(x.cpu_storage(op)?, range)?;
        Ok(Tensor::from_cpu(
            out,
            &out_shape(self.shape(), mask, keepdim),
        ))
    }

    /// The f64-accumulated sum (of squares with `SQ`), scaled and optionally square-rooted.
    fn float_sum<const SQ: bool>(
        &self,
        op: &'static str,
        mask: &[bool],
        keepdim: bool,
        r: FloatSum<SQ>,
    ) -> Result<Tensor> {
        require_float(op, self.dtype())?;
        #[cfg(feature = "cuda")]
        if crate::cuda::any_on_cuda(&[self]) {
            let out = out_shape(self.shape(), mask, keepdim);
            let how = (SQ, r.scale, r.sqrt);
            return crate::cuda::reduce::float_sum(op, self, mask, how, &out);
        }
        let shape = self.shape();
        self.reduce_with(op, mask, keepdim, |s, range| {
            Ok(float_sum_cpu(s, range, shape, mask, &r))
        })
    }

    /// Sum over `dims`. Floats keep their dtype (accumulated in f64); i64 and u8 give i64.
    pub fn sum(&self, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        let mask = reduce_mask("sum", self.shape(), dims)?;
        let _p = reduce_scope("sum", self, &mask, keepdim);
        match self.dtype() {
            DType::I64 | DType::U8 => {
                #[cfg(feature = "cuda")]
                if crate::cuda::any_on_cuda(&[self]) {
                    let out = out_shape(self.shape(), &mask, keepdim);
                    return crate::cuda::reduce::int_sum(self, &mask, &out);
                }
                self.reduce_with("sum", &mask, keepdim, |s, range| {
                    int_sum_cpu(s, range, self.shape(), &mask)
                })
            }
            _ => {
                let r = FloatSum::<false> {
                    scale: 1.0,
                    sqrt: false,
                };
                self.float_sum("sum", &mask, keepdim, r)
            }
        }
    }

    /// Mean over `dims` (float dtypes); NaN where the reduced dims hold no elements.
    pub fn mean(&self, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        let mask = reduce_mask("mean", self.shape(), dims)?;
        let _p = reduce_scope("mean", self, &mask, keepdim);
        let n = reduced_count(self.shape(), &mask);
        let r = FloatSum::<false> {
            scale: 1.0 / n as f64,
            sqrt: false,
        };
        self.float_sum("mean", &mask, keepdim, r)
    }

    /// Variance over `dims`: the sum of squared deviations from the mean divided by
    /// `max(0, N - correction)` (torch; `correction = 1` is the unbiased estimate). Float dtypes.
    pub fn var(&self, dims: &[usize], keepdim: bool, correction: usize) -> Result<Tensor> {
        let mask = reduce_mask("var", self.shape(), dims)?;
        require_float("var", self.dtype())?;
        let _p = reduce_scope("var", self, &mask, keepdim);
        if matches!(self.dtype(), DType::F16 | DType::BF16) {
            let wide = self.to_dtype(DType::F32)?;
            return wide.var(dims, keepdim, correction)?.to_dtype(self.dtype());
        }
        let centred = self.sub(&self.mean(dims, true)?)?;
        let n = reduced_count(self.shape(), &mask);
        let r = FloatSum::<true> {
            scale: 1.0 / n.saturating_sub(correction) as f64,
            sqrt: false,
        };
        centred.float_sum("var", &mask, keepdim, r)
    }

    /// Sum of every element, as a rank-0 tensor.
    pub fn sum_all(&self) -> Result<Tensor> {
        self.sum(&(0..self.rank()).collect::<Vec<_>>(), false)
    }

    /// Mean of every element, as a rank-0 tensor (NaN for an empty tensor).
    pub fn mean_all(&self) -> Result<Tensor> {
        self.mean(&(0..self.rank()).collect::<Vec<_>>(), false)
    }

    /// `sqrt(sum(x^2))` over every element, accumulated in f64, as a rank-0 tensor.
    pub fn norm_l2(&self) -> Result<Tensor> {
        let mask = vec![true; self.rank()];
        let _p = reduce_scope("norm_l2", self, &mask, false);
        let r = FloatSum::<true> {
            scale: 1.0,
            sqrt: true,
        };
        self.float_sum("norm_l2", &mask, false, r)
    }

    /// Max over `dim` (NaN if the slice holds a NaN).
    pub fn max(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        self.best("max", dim, keepdim, true, false)
    }

    /// Min over `dim` (NaN if the slice holds a NaN).
    pub fn min(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        self.best("min", dim, keepdim, false, false)
    }

    /// Index (i64) of the first max over `dim`; a NaN counts as the max.
    pub fn argmax(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        self.best("argmax", dim, keepdim, true, true)
    }

    /// Index (i64) of the first min over `dim`; a NaN counts as the min.
    pub fn argmin(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        self.best("argmin", dim, keepdim, false, true)
    }

    fn best(
        &self,
        op: &'static str,
        dim: usize,
        keepdim: bool,
        max: bool,
        index: bool,
    ) -> Result<Tensor> {
        let mask = reduce_mask(op, self.shape(), &[dim])?;
        if self.shape()[dim] == 0 {
            crate::bail!(
                op,
                "cannot reduce over dim {dim} of size 0 (shape {:?})",
                self.shape()
            );
        }
        let _p = reduce_scope(op, self, &mask, keepdim);
        #[cfg(feature = "cuda")]
        if crate::cuda::any_on_cuda(&[self]) {
            let out = out_shape(self.shape(), &mask, keepdim);
            return crate::cuda::reduce::best(op, self, dim, (max, index), &out);
        }
        let shape = self.shape();
        self.reduce_with(op, &mask, keepdim, |s, range| {
            Ok(map_cpu_storage!(s, b => {
                let x = &b.as_slice()[range];
                if max {
                    best_cpu::<_, true>(x, shape, &mask, index)
                } else {
                    best_cpu::<_, false>(x, shape, &mask, index)
                }
            }))
        })
    }

    /// Sums `self` down to `shape`, a shape that broadcasts to `self.shape()`: leading extra dims
    /// are summed away and dims where `shape` has 1 are summed with keepdim. When nothing needs
    /// summing, the result is `self` reshaped (a view).
    pub fn sum_to_shape(&self, shape: &[usize]) -> Result<Tensor> {
        const OP: &str = "sum_to_shape";
        let src = self.shape();
        let fits = shape.len() <= src.len() && {
            let extra = src.len() - shape.len();
            shape
                .iter()
                .zip(&src[extra..])
                .all(|(&want, &have)| want == have || want == 1)
        };
        if !fits {
            return Err(Error::Broadcast {
                op: OP,
                lhs: shape.to_vec(),
                rhs: src.to_vec(),
            });
        }
        let extra = src.len() - shape.len();
        let dims: Vec<usize> = (0..src.len())
            .filter(|&d| d < extra || (shape[d - extra] == 1 && src[d] != 1))
            .collect();
        if dims.is_empty() {
            return self.reshape(shape);
        }
        let _p = crate::profiler::scope(OP);
        self.sum(&dims, true)?.reshape(shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Device, Rng};

    /// The values each output reduces over (row-major over the kept dims), each list in
    /// row-major order over the reduced dims: a naive reference for every reduction.
    fn groups(x: &Tensor, dims: &[usize]) -> Vec<Vec<f64>> {
        let shape = x.shape();
        let kept: Vec<usize> = (0..shape.len()).filter(|d| !dims.contains(d)).collect();
        let outputs: usize = kept.iter().map(|&d| shape[d]).product();
        let mut out = vec![vec![]; outputs];
        for (i, v) in x.to_vec_f64().unwrap().into_iter().enumerate() {
            let (mut rest, mut idx) = (i, vec![0; shape.len()]);
            for d in (0..shape.len()).rev() {
                idx[d] = rest % shape[d];
                rest /= shape[d];
            }
            let o = kept.iter().fold(0, |acc, &d| acc * shape[d] + idx[d]);
            out[o].push(v);
        }
        out
    }

    fn expected_shape(shape: &[usize], dims: &[usize], keepdim: bool) -> Vec<usize> {
        let mut s = vec![];
        for (d, &n) in shape.iter().enumerate() {
            if !dims.contains(&d) {
                s.push(n);
            } else if keepdim {
                s.push(1);
            }
        }
        s
    }

    fn check(got: &Tensor, want: &[f64], shape: &[usize], tol: f64, what: &str) {
        assert_eq!(got.shape(), shape, "{what}: shape");
        let g = got.to_vec_f64().unwrap();
        assert_eq!(g.len(), want.len(), "{what}: count");
        for (i, (&g, &w)) in g.iter().zip(want).enumerate() {
            let ok = if w.is_nan() {
                g.is_nan()
            } else {
                g == w || (g - w).abs() <= tol * w.abs().max(1.0)
            };
            assert!(ok, "{what}: output {i}: got {g}, want {w}");
        }
    }

    fn ref_sum(g: &[f64]) -> f64 {
        g.iter().sum()
    }
    fn ref_var(g: &[f64], c: usize) -> f64 {
        let m = ref_sum(g) / g.len() as f64;
        g.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / g.len().saturating_sub(c) as f64
    }
    /// (value, first index) of the extreme; NaN wins.
    fn ref_best(g: &[f64], max: bool) -> (f64, f64) {
        let mut b = (g[0], 0);
        for (i, &v) in g.iter().enumerate() {
            let beats = if max { v > b.0 } else { v < b.0 };
            if (beats || v.is_nan()) && !b.0.is_nan() {
                b = (v, i);
            }
        }
        (b.0, b.1 as f64)
    }

    /// Random shapes of rank 0..=4 with sizes from {0, 1, 2, 3, 5}, as contiguous tensors and
    /// as transposed views, with random dim sets.
    fn random_cases(rng: &mut Rng, count: usize) -> Vec<(Tensor, Vec<usize>)> {
        let sizes = [0, 1, 2, 3, 5];
        let mut out = vec![];
        for _ in 0..count {
            let rank = rng.below(5) as usize;
            let mut shape: Vec<usize> = (0..rank).map(|_| sizes[rng.below(5) as usize]).collect();
            if rng.below(4) != 0 {
                // Mostly non-empty.
                shape.iter_mut().for_each(|d| *d = (*d).max(1));
            }
            let mut x = Tensor::randn(&shape, 0.0, 1.0, DType::F32, Device::Cpu, rng).unwrap();
            if rank >= 2 && rng.below(2) == 0 {
                x = x.t().unwrap().contiguous().unwrap().t().unwrap();
            }
            let dims: Vec<usize> = (0..rank).filter(|_| rng.below(2) == 0).collect();
            out.push((x, dims));
        }
        out
    }

    /// Shapes large enough for every parallel path, with the dims that select each one.
    fn large_cases(rng: &mut Rng) -> Vec<(Tensor, Vec<usize>)> {
        let mut r = |s: &[usize]| Tensor::randn(s, 0.0, 1.0, DType::F32, Device::Cpu, rng).unwrap();
        vec![
            (r(&[300, 200]), vec![1]),              // many outputs, slices
            (r(&[300, 200]), vec![0]),              // one row, split over reduced rows
            (r(&[200, 300]).t().unwrap(), vec![0]), // transposed input
            (r(&[2, 40000]), vec![1]),              // few outputs, split slices
            (r(&[40000, 2]), vec![0]),              // few narrow rows, split
            (r(&[3, 20000]), vec![0]),              // three reduced rows only
            (r(&[64, 30, 40]), vec![1]),            // many output rows
            (r(&[20, 50, 40]), vec![0, 2]),         // mixed groups
            (r(&[40000]), vec![0]),                 // everything
        ]
    }

    #[test]
    fn sum_mean_var_match_reference() {
        let mut rng = Rng::new(11);
        let mut cases = random_cases(&mut rng, 120);
        cases.extend(large_cases(&mut rng));
        for (x, dims) in &cases {
            let gs = groups(x, dims);
            for keepdim in [false, true] {
                let shape = expected_shape(x.shape(), dims, keepdim);
                let what = format!("{:?} dims {dims:?} keepdim {keepdim}", x.shape());
                let sums: Vec<f64> = gs.iter().map(|g| ref_sum(g)).collect();
                check(
                    &x.sum(dims, keepdim).unwrap(),
                    &sums,
                    &shape,
                    1e-6,
                    &format!("sum {what}"),
                );
                let means: Vec<f64> = gs.iter().map(|g| ref_sum(g) / g.len() as f64).collect();
                check(
                    &x.mean(dims, keepdim).unwrap(),
                    &means,
                    &shape,
                    1e-6,
                    &format!("mean {what}"),
                );
                for c in [0, 1] {
                    let vars: Vec<f64> = gs.iter().map(|g| ref_var(g, c)).collect();
                    let got = x.var(dims, keepdim, c).unwrap();
                    check(&got, &vars, &shape, 1e-5, &format!("var({c}) {what}"));
                }
            }
        }
    }

    #[test]
    fn max_min_and_arg_match_reference_with_ties() {
        let mut rng = Rng::new(12);
        let mut cases: Vec<(Tensor, usize)> = vec![];
        for (x, _) in random_cases(&mut rng, 80)
            .into_iter()
            .chain(large_cases(&mut rng))
        {
            for d in 0..x.rank() {
                if x.shape()[d] > 0 {
                    // Few distinct values, so ties are everywhere.
                    let xi = x.mul_scalar(1.5).unwrap().to_dtype(DType::I64).unwrap();
                    cases.push((xi.to_dtype(DType::F32).unwrap(), d));
                    cases.push((xi, d));
                }
            }
        }
        for (x, d) in &cases {
            let gs = groups(x, &[*d]);
            for keepdim in [false, true] {
                let shape = expected_shape(x.shape(), &[*d], keepdim);
                let what = format!("{} {:?} dim {d} keepdim {keepdim}", x.dtype(), x.shape());
                for max in [true, false] {
                    let best: Vec<(f64, f64)> = gs.iter().map(|g| ref_best(g, max)).collect();
                    let vals: Vec<f64> = best.iter().map(|b| b.0).collect();
                    let idx: Vec<f64> = best.iter().map(|b| b.1).collect();
                    let (v, i) = if max {
                        (x.max(*d, keepdim).unwrap(), x.argmax(*d, keepdim).unwrap())
                    } else {
                        (x.min(*d, keepdim).unwrap(), x.argmin(*d, keepdim).unwrap())
                    };
                    assert_eq!((v.dtype(), i.dtype()), (x.dtype(), DType::I64));
                    check(&v, &vals, &shape, 0.0, &format!("max={max} {what}"));
                    check(&i, &idx, &shape, 0.0, &format!("argmax={max} {what}"));
                }
            }
        }
    }

    #[test]
    fn nan_is_the_max_and_the_min() {
        let x = Tensor::from_vec(vec![1.0f32, f32::NAN, 5.0, f32::NAN, 0.0, 2.0], &[2, 3]).unwrap();
        assert_eq!(
            x.argmax(1, false).unwrap().to_vec::<i64>().unwrap(),
            vec![1, 0]
        );
        assert_eq!(
            x.argmin(1, false).unwrap().to_vec::<i64>().unwrap(),
            vec![1, 0]
        );
        assert!(x.max(1, false).unwrap().to_vec::<f32>().unwrap()[1].is_nan());
        assert_eq!(
            x.argmax(0, false).unwrap().to_vec::<i64>().unwrap(),
            vec![1, 0, 0]
        );
    }

    #[test]
    fn sums_accumulate_in_f64() {
        // 1e8 followed by 100000 ones: an f32 running sum never moves off 1e8.
        let n = 100_000;
        let mut v = vec![1f32; n + 1];
        v[0] = 1e8;
        let want = 1e8 + n as f32;
        let row = Tensor::from_vec(v.clone(), &[1, n + 1]).unwrap();
        assert_eq!(
            row.sum(&[1], false).unwrap().to_vec::<f32>().unwrap(),
            vec![want]
        );
        assert_eq!(row.sum_all().unwrap().to_scalar::<f32>().unwrap(), want);
        let col = Tensor::from_vec(v, &[n + 1, 1])
            .unwrap()
            .broadcast_to(&[n + 1, 2])
            .unwrap();
        assert_eq!(
            col.sum(&[0], false).unwrap().to_vec::<f32>().unwrap(),
            vec![want; 2]
        );
        // f16 rounds once at the end.
        let h = Tensor::full(0.1, &[1000], DType::F16, Device::Cpu).unwrap();
        let exact = 1000.0 * half::f16::from_f64(0.1).to_f64();
        let got = h.sum_all().unwrap();
        assert_eq!(got.dtype(), DType::F16);
        assert_eq!(
            got.to_vec_f64().unwrap(),
            vec![half::f16::from_f64(exact).to_f64()]
        );
        // The L2 norm does not overflow f32 on the way.
        let big = Tensor::from_vec(vec![3e30f32, 4e30], &[2]).unwrap();
        let norm = big.norm_l2().unwrap();
        assert_eq!(norm.shape(), &[] as &[usize]);
        assert!((norm.to_scalar::<f32>().unwrap() / 5e30 - 1.0).abs() < 1e-6);
    }

    #[test]
    fn whole_tensor_reductions_and_empty_inputs() {
        let mut rng = Rng::new(13);
        let x = Tensor::randn(&[7, 9], 0.0, 1.0, DType::F64, Device::Cpu, &mut rng).unwrap();
        let v = x.to_vec_f64().unwrap();
        let s: f64 = v.iter().sum();
        let near = |t: Tensor, w: f64| {
            assert_eq!(t.rank(), 0);
            let g = t.to_scalar::<f64>().unwrap();
            assert!((g - w).abs() < 1e-12, "{g} vs {w}");
        };
        near(x.sum_all().unwrap(), s);
        near(x.mean_all().unwrap(), s / 63.0);
        near(
            x.t().unwrap().norm_l2().unwrap(),
            v.iter().map(|a| a * a).sum::<f64>().sqrt(),
        );

        let e = Tensor::zeros(&[0, 3], DType::F32, Device::Cpu).unwrap();
        assert_eq!(
            e.sum(&[0], false).unwrap().to_vec::<f32>().unwrap(),
            vec![0.0; 3]
        );
        assert!(e
            .mean(&[0], false)
            .unwrap()
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .all(|m| m.is_nan()));
        assert!(e.mean_all().unwrap().to_scalar::<f32>().unwrap().is_nan());
        assert_eq!(e.sum(&[1], true).unwrap().shape(), &[0, 1]);
        assert_eq!(e.argmax(1, false).unwrap().shape(), &[0]);
        let one = Tensor::from_vec(vec![2.0f32], &[1]).unwrap();
        assert!(one
            .var(&[0], false, 1)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .is_nan());
        // No dims: nothing reduced.
        assert_eq!(x.sum(&[], false).unwrap().to_vec_f64().unwrap(), v);
    }

    #[test]
    fn integer_sums() {
        let i = Tensor::from_vec(vec![i64::MAX, 1, 5, -6], &[2, 2]).unwrap();
        assert_eq!(
            i.sum(&[1], false).unwrap().to_vec::<i64>().unwrap(),
            vec![i64::MIN, -1]
        );
        assert_eq!(
            i.sum(&[0], false).unwrap().to_vec::<i64>().unwrap(),
            vec![i64::MIN + 4, -5]
        );
        let u = Tensor::from_vec(vec![200u8, 100, 7], &[3]).unwrap();
        let s = u.sum_all().unwrap();
        assert_eq!(
            (s.dtype(), s.to_scalar::<i64>().unwrap()),
            (DType::I64, 307)
        );
        assert_eq!(
            i.argmax(1, false).unwrap().to_vec::<i64>().unwrap(),
            vec![0, 0]
        );
        assert_eq!(u.max(0, true).unwrap().to_vec::<u8>().unwrap(), vec![200]);
    }

    #[test]
    fn sum_to_shape_undoes_broadcast() {
        let mut rng = Rng::new(14);
        let x = Tensor::randn(&[2, 3, 4], 0.0, 1.0, DType::F32, Device::Cpu, &mut rng).unwrap();
        for (target, dims) in [
            (&[3, 1][..], &[0, 2][..]),
            (&[4], &[0, 1]),
            (&[1, 1, 1], &[0, 1, 2]),
            (&[], &[0, 1, 2]),
            (&[2, 1, 4], &[1]),
            (&[1, 4], &[0, 1]),
        ] {
            let sums: Vec<f64> = groups(&x, dims).iter().map(|g| ref_sum(g)).collect();
            let got = x.sum_to_shape(target).unwrap();
            check(
                &got,
                &sums,
                target,
                1e-6,
                &format!("sum_to_shape {target:?}"),
            );
            // Round trip: broadcasting back gives the original shape.
            assert_eq!(got.broadcast_to(x.shape()).unwrap().shape(), x.shape());
        }
        assert_eq!(
            x.sum_to_shape(&[2, 3, 4]).unwrap().to_vec_f64().unwrap(),
            x.to_vec_f64().unwrap()
        );
        for bad in [&[5][..], &[3, 4, 1], &[1, 2, 3, 4], &[2, 3, 2]] {
            let e = x.sum_to_shape(bad).unwrap_err().to_string();
            assert!(e.starts_with("sum_to_shape:"), "{e}");
        }
    }

    #[test]
    fn errors_name_the_op() {
        let x = Tensor::zeros(&[2, 0], DType::F32, Device::Cpu).unwrap();
        let i = Tensor::zeros(&[2], DType::I64, Device::Cpu).unwrap();
        for (e, op) in [
            (x.sum(&[2], false).unwrap_err(), "sum:"),
            (x.sum(&[0, 0], false).unwrap_err(), "sum:"),
            (x.mean(&[1, 0, 1], true).unwrap_err(), "mean:"),
            (x.var(&[5], true, 1).unwrap_err(), "var:"),
            (x.max(1, false).unwrap_err(), "max:"),
            (x.min(1, false).unwrap_err(), "min:"),
            (x.argmax(1, false).unwrap_err(), "argmax:"),
            (x.argmin(2, false).unwrap_err(), "argmin:"),
            (i.mean(&[0], false).unwrap_err(), "mean:"),
            (i.var(&[0], false, 0).unwrap_err(), "var:"),
            (i.norm_l2().unwrap_err(), "norm_l2:"),
        ] {
            assert!(e.to_string().starts_with(op), "{e} (want {op})");
        }
        assert!(x.max(1, false).unwrap_err().to_string().contains("size 0"));
    }
}
