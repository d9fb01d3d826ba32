//! `topk` and `sort_last` along the last dim, as torch.topk / torch.sort(stable=True): values in
//! the input's dtype and i64 positions, both shaped like the input with the last dim replaced by
//! `k`. Largest first (NaN counts as the largest), equal values by lower index first. The kernel
//! is `crate::cpu::topk`.

use crate::{map_cpu_storage, CpuStorage, Error, Result, Storage, Tensor};

impl Tensor {
    /// The `k` largest elements of each row along the last dim, largest first, and their indices.
    pub fn topk(&self, k: usize) -> Result<(Tensor, Tensor)> {
        self.ranked_last("topk", k, true)
    }

    /// Every row along the last dim sorted (stably: equal values keep their order), and the
    /// permutation that sorts it. NaN sorts as the largest value.
    pub fn sort_last(&self, descending: bool) -> Result<(Tensor, Tensor)> {
        let n = self.shape().last().copied().unwrap_or(0);
        self.ranked_last("sort_last", n, descending)
    }

    fn ranked_last(
        &self,
        op: &'static str,
        k: usize,
        descending: bool,
    ) -> Result<(Tensor, Tensor)> {
        let Some(&n) = self.shape().last() else {
            return Err(Error::op(op, "needs a tensor of rank >= 1, got a scalar"));
        };
        if k > n {
            return Err(Error::op(
                op,
                format!("k = {k} exceeds the last dim of shape {:?}", self.shape()),
            ));
        }
        let _p = crate::profiler::scope(op);
        let mut out_shape = self.shape().to_vec();
        *out_shape.last_mut().expect("rank >= 1") = k;
        let src = self.contiguous()?;
        let range = src.layout().contiguous_range().expect("contiguous");
        let (vals, idx) = match src.storage() {
            Storage::Cpu(s) => map_cpu_storage!(s, b => {
                let (v, i) = crate::cpu::topk::topk(&b.as_slice()[range], n, k, descending);
                (CpuStorage::from_vec(v), i)
            }),
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => {
                return crate::cuda::topk::ranked(op, &src, k, descending, &out_shape)
            }
        };
        Ok((
            Tensor::from_cpu(vals, &out_shape),
            Tensor::from_vec(idx, &out_shape)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use crate::{DType, Device, Rng, Tensor};

    /// Rows of `n` values drawn from 5 distinct numbers (many ties), optionally with NaNs.
    fn tied(rows: usize, n: usize, nan: bool, rng: &mut Rng) -> Vec<f32> {
        let pool = [-1.5f32, 0.0, 0.25, 2.0, if nan { f32::NAN } else { 7.0 }];
        rng.uniform_vec(rows * n)
            .iter()
            .map(|&u| pool[(u * 5.0) as usize])
            .collect()
    }

    /// Reference: stable sort of positions by value (NaN largest), descending or ascending.
    fn reference(row: &[f64], descending: bool) -> Vec<usize> {
        let key = |x: f64| if x.is_nan() { f64::INFINITY } else { x };
        let mut p: Vec<usize> = (0..row.len()).collect();
        p.sort_by(|&a, &b| {
            let o = key(row[a]).total_cmp(&key(row[b]));
            if descending {
                o.reverse()
            } else {
                o
            }
        });
        p
    }

    fn check(t: &Tensor, k: usize) {
        let (v, i) = t.topk(k).unwrap();
        let n = *t.shape().last().unwrap();
        let mut want_shape = t.shape().to_vec();
        *want_shape.last_mut().unwrap() = k;
        assert_eq!(v.shape(), &want_shape[..]);
        assert_eq!(
            (i.shape(), i.dtype(), v.dtype()),
            (v.shape(), DType::I64, t.dtype())
        );
        let x = t.to_vec_f64().unwrap();
        let (vv, ii) = (v.to_vec_f64().unwrap(), i.to_vec::<i64>().unwrap());
        for r in 0..x.len().checked_div(n).unwrap_or(0) {
            let row = &x[r * n..(r + 1) * n];
            let want = &reference(row, true)[..k];
            let got: Vec<usize> = ii[r * k..(r + 1) * k].iter().map(|&j| j as usize).collect();
            assert_eq!(got, want, "row {r} k {k} shape {:?}", t.shape());
            for (j, &w) in want.iter().enumerate() {
                assert_eq!(vv[r * k + j].to_bits(), row[w].to_bits());
            }
        }
    }

    #[test]
    fn topk_matches_stable_sort_with_ties_and_nan() {
        let mut rng = Rng::new(11);
        for &(rows, n) in &[(3, 200), (1, 1), (4, 37), (2, 1000)] {
            for nan in [false, true] {
                let t = Tensor::from_vec(tied(rows, n, nan, &mut rng), &[rows, n]).unwrap();
                // k spanning the heap path (k < n/4) and the sort path.
                for k in [0, 1, n / 10, n / 4, n / 2, n] {
                    check(&t, k);
                }
            }
        }
    }

    #[test]
    fn topk_on_views_dtypes_and_empty() {
        let mut rng = Rng::new(4);
        let base = Tensor::from_vec(tied(6, 40, true, &mut rng), &[6, 40]).unwrap();
        // Transposed view: rows of 6.
        check(&base.t().unwrap(), 3);
        // Narrowed 3-D view.
        let v = base.reshape(&[2, 3, 40]).unwrap().narrow(2, 5, 30).unwrap();
        check(&v, 4);
        for dt in [DType::F64, DType::F16, DType::BF16, DType::I64, DType::U8] {
            let t = base.to_dtype(dt).unwrap();
            check(&t, 7);
        }
        // Zero rows, zero-length rows.
        check(&Tensor::zeros(&[0, 5], DType::F32, Device::Cpu).unwrap(), 2);
        check(&Tensor::zeros(&[3, 0], DType::F32, Device::Cpu).unwrap(), 0);
        // A large row takes the parallel, heap path and returns the top values in order.
        let big = Tensor::from_vec(rng.uniform_vec(50_000), &[50_000]).unwrap();
        check(&big, 100);
    }

    #[test]
    fn sort_last_is_stable_both_ways() {
        let mut rng = Rng::new(2);
        let t = Tensor::from_vec(tied(3, 50, true, &mut rng), &[3, 50]).unwrap();
        let x = t.to_vec_f64().unwrap();
        for desc in [true, false] {
            let (v, i) = t.sort_last(desc).unwrap();
            let (vv, ii) = (v.to_vec_f64().unwrap(), i.to_vec::<i64>().unwrap());
            for r in 0..3 {
                let row = &x[r * 50..(r + 1) * 50];
                let want = reference(row, desc);
                let got: Vec<usize> = ii[r * 50..(r + 1) * 50]
                    .iter()
                    .map(|&j| j as usize)
                    .collect();
                assert_eq!(got, want);
                assert!(want
                    .iter()
                    .enumerate()
                    .all(|(j, &w)| vv[r * 50 + j].to_bits() == row[w].to_bits()));
            }
        }
    }

    #[test]
    fn errors_name_the_op() {
        let t = Tensor::zeros(&[2, 3], DType::F32, Device::Cpu).unwrap();
        let e = t.topk(4).unwrap_err().to_string();
        assert!(e.starts_with("topk:") && e.contains("k = 4"), "{e}");
        let s = Tensor::scalar(1f32).topk(0).unwrap_err().to_string();
        assert!(s.starts_with("topk:"), "{s}");
        assert!(Tensor::scalar(1f32)
            .sort_last(true)
            .unwrap_err()
            .to_string()
            .starts_with("sort_last:"));
    }
}
