//! `matmul`: [..., m, k] x [..., k, n] -> [..., m, n] with numpy broadcasting of the batch dims,
//! as `torch.matmul` for operands of rank >= 2. Operands are read through their strides (a
//! transposed view such as `w.t()` needs no copy). f32, f64 and f16 multiply natively (`gemm`);
//! bf16 runs in the bf16 GEMM (`matmul_bf16.rs`, f32 sums, bf16 output).

use crate::cpu::matmul::{self as kernel, GemmElem};
use crate::{broadcast_shapes, CpuStorage, DType, Error, Layout, Result, Tensor};

/// Checks dtypes and the inner dim; returns (m, k, n) of the last two dims.
pub(crate) fn check_operands(
    op: &'static str,
    x: &Tensor,
    y: &Tensor,
) -> Result<(usize, usize, usize)> {
    let (a, b) = (x.shape(), y.shape());
    if a.len() < 2 || b.len() < 2 {
        crate::bail!(op, "needs operands of rank >= 2, got {a:?} and {b:?}");
    }
    let dtype = x.dtype();
    if !dtype.is_float() {
        return Err(Error::UnsupportedDType { op, dtype });
    }
    if y.dtype() != dtype {
        return Err(Error::DTypeMismatch {
            op,
            expected: dtype,
            got: y.dtype(),
        });
    }
    let (ra, rb) = (a.len(), b.len());
    if b[rb - 2] != a[ra - 1] {
        return Err(Error::ShapeMismatch {
            op,
            lhs: a.to_vec(),
            rhs: b.to_vec(),
        });
    }
    Ok((a[ra - 2], a[ra - 1], b[rb - 1]))
}

impl Tensor {
    /// Matrix product of the last two dims, batch dims broadcast.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        const OP: &str = "matmul";
        let (a, b) = (self.shape(), rhs.shape());
        let mismatch = || Error::ShapeMismatch {
            op: OP,
            lhs: a.to_vec(),
            rhs: b.to_vec(),
        };
        let (m, k, n) = check_operands(OP, self, rhs)?;
        let dtype = self.dtype();
        let (ra, rb) = (a.len(), b.len());
        let batch = broadcast_shapes(OP, &a[..ra - 2], &b[..rb - 2]).map_err(|_| mismatch())?;
        let with = |tail: [usize; 2]| [batch.as_slice(), &tail].concat();
        let lhs_l = self.layout().broadcast_to(OP, &with([m, k]))?;
        let rhs_l = rhs.layout().broadcast_to(OP, &with([k, n]))?;
        let bsz: usize = batch.iter().product();
        let prof = || {
            crate::profiler::scope(OP)
                .io(&[self, rhs], &with([m, n]))
                .flops(crate::profiler::flops::matmul(bsz, m, k, n))
        };
        #[cfg(feature = "cuda")]
        if crate::cuda::any_on_cuda(&[self, rhs]) {
            let _p = prof();
            let (x, y) = ((self, &lhs_l), (rhs, &rhs_l));
            return crate::cuda::matmul::matmul(x, y, &batch, (m, k, n));
        }
        if dtype == DType::BF16 {
            let _p = prof();
            return self.matmul_bf16_out(rhs, None);
        }
        let _p = prof();
        fn run<T: GemmElem>(
            x: &CpuStorage,
            xl: &Layout,
            y: &CpuStorage,
            yl: &Layout,
        ) -> Result<CpuStorage> {
            let (xs, ys) = (x.as_slice::<T>(OP)?, y.as_slice::<T>(OP)?);
            Ok(CpuStorage::from_vec(kernel::matmul(xs, xl, ys, yl)))
        }
        // The CUDA path returned above, so both storages are on the CPU here.
        let (x, y) = (self.cpu_storage(OP)?, rhs.cpu_storage(OP)?);
        let out = match dtype {
            DType::F32 => run::<f32>(x, &lhs_l, y, &rhs_l)?,
            DType::F64 => run::<f64>(x, &lhs_l, y, &rhs_l)?,
            DType::F16 => run::<half::f16>(x, &lhs_l, y, &rhs_l)?,
            dtype => return Err(Error::UnsupportedDType { op: OP, dtype }),
        };
        Ok(Tensor::from_cpu(out, &with([m, n])))
    }

    /// `self [m, k] @ rhs [k, n] + bias [n]` (torch's `addmm(bias, self, rhs)`, the linear
    /// layer): the bias is written first and the product accumulated onto it in the GEMM, which
    /// saves the separate pass over the output that `matmul(..).add(bias)` makes.
    pub fn matmul_bias(&self, rhs: &Tensor, bias: &Tensor) -> Result<Tensor> {
        const OP: &str = "matmul_bias";
        let (m, k, n) = check_operands(OP, self, rhs)?;
        if self.rank() != 2 || rhs.rank() != 2 || bias.shape() != [n] {
            crate::bail!(
                OP,
                "expects [m, k] @ [k, n] + [n], got {:?} @ {:?} + {:?}",
                self.shape(),
                rhs.shape(),
                bias.shape()
            );
        }
        let dtype = self.dtype();
        if bias.dtype() != dtype {
            return Err(Error::DTypeMismatch {
                op: OP,
                expected: dtype,
                got: bias.dtype(),
            });
        }
        let prof = || {
            crate::profiler::scope(OP)
                .io(&[self, rhs, bias], &[m, n])
                .flops(crate::profiler::flops::matmul(1, m, k, n))
        };
        #[cfg(feature = "cuda")]
        if crate::cuda::any_on_cuda(&[self, rhs, bias]) {
            let _p = prof();
            return crate::cuda::matmul::matmul_bias(self, rhs, bias);
        }
        if dtype == DType::BF16 {
            let _p = prof();
            return self.matmul_bf16_out(rhs, Some(bias));
        }
        let _p = prof();
        let bias = bias.contiguous()?;
        let bias_range = bias.layout().contiguous_range().unwrap_or(0..n);
        fn run<T: GemmElem>(
            x: &CpuStorage,
            xl: &Layout,
            y: &CpuStorage,
            yl: &Layout,
            b: &[T],
        ) -> Result<CpuStorage> {
            let (xs, ys) = (x.as_slice::<T>(OP)?, y.as_slice::<T>(OP)?);
            Ok(CpuStorage::from_vec(kernel::matmul_bias(xs, xl, ys, yl, b)))
        }
        let (xl, yl) = (self.layout(), rhs.layout());
        // The CUDA path returned above, so every storage is on the CPU here.
        let (x, y, b) = (
            self.cpu_storage(OP)?,
            rhs.cpu_storage(OP)?,
            bias.cpu_storage(OP)?,
        );
        let out = match dtype {
            DType::F32 => run::<f32>(x, xl, y, yl, &b.as_slice(OP)?[bias_range])?,
            DType::F64 => run::<f64>(x, xl, y, yl, &b.as_slice(OP)?[bias_range])?,
            DType::F16 => run::<half::f16>(x, xl, y, yl, &b.as_slice(OP)?[bias_range])?,
            dtype => return Err(Error::UnsupportedDType { op: OP, dtype }),
        };
        Ok(Tensor::from_cpu(out, &[m, n]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Device;

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        crate::testing::randn(shape, 1.0, DType::F64, seed)
    }

    /// The broadcast batched product in f64, summing in index order.
    fn reference(a: &Tensor, b: &Tensor) -> (Vec<usize>, Vec<f64>) {
        let (ra, rb) = (a.rank(), b.rank());
        let (m, k, n) = (a.shape()[ra - 2], a.shape()[ra - 1], b.shape()[rb - 1]);
        let batch = broadcast_shapes("ref", &a.shape()[..ra - 2], &b.shape()[..rb - 2]).unwrap();
        let full = |t: &Tensor, tail: [usize; 2]| {
            t.broadcast_to(&[batch.as_slice(), &tail].concat())
                .unwrap()
                .to_vec_f64()
                .unwrap()
        };
        let (av, bv) = (full(a, [m, k]), full(b, [k, n]));
        let nb: usize = batch.iter().product();
        let mut out = vec![0.0; nb * m * n];
        for p in 0..nb {
            for i in 0..m {
                for j in 0..n {
                    out[(p * m + i) * n + j] = (0..k)
                        .map(|l| av[(p * m + i) * k + l] * bv[(p * k + l) * n + j])
                        .sum();
                }
            }
        }
        ([batch.as_slice(), &[m, n]].concat(), out)
    }

    fn check(a: &Tensor, b: &Tensor, dtype: DType, tol: f64) {
        let (shape, want) = reference(a, b);
        let (ad, bd) = (a.to_dtype(dtype).unwrap(), b.to_dtype(dtype).unwrap());
        let got = ad.matmul(&bd).unwrap();
        assert_eq!(got.shape(), shape.as_slice());
        assert_eq!(got.dtype(), dtype);
        let k = a.shape()[a.rank() - 1] as f64;
        for (i, (g, w)) in got.to_vec_f64().unwrap().iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= tol * k.sqrt().max(1.0) * (1.0 + w.abs()),
                "{:?} x {:?} {dtype} [{i}]: got {g}, want {w}",
                a.shape(),
                b.shape()
            );
        }
    }

    #[test]
    fn matches_reference_on_random_shapes_and_dtypes() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[3, 4], &[4, 5]),
            (&[1, 1], &[1, 1]),
            (&[1, 7], &[7, 1]),
            (&[2, 3, 4], &[4, 6]),       // shared rhs: folded into one product
            (&[4, 6], &[2, 6, 3]),       // lhs broadcast over the batch
            (&[2, 1, 3, 4], &[5, 4, 2]), // both broadcast: [2, 5, 3, 2]
            (&[3, 0], &[0, 4]),          // k = 0 gives zeros
            (&[0, 3], &[3, 4]),
            (&[2, 0, 3], &[3, 4]),
            (&[17, 33], &[33, 65]),
            (&[6, 16, 8], &[6, 8, 16]), // a batch of small products, one per task
        ];
        for (seed, &(sa, sb)) in cases.iter().enumerate() {
            let (a, b) = (randn(sa, 2 * seed as u64), randn(sb, 2 * seed as u64 + 1));
            check(&a, &b, DType::F64, 1e-14);
            check(&a, &b, DType::F32, 1e-6);
            check(&a, &b, DType::F16, 2e-2);
            check(&a, &b, DType::BF16, 2e-2);
        }
    }

    #[test]
    fn strided_operands_need_no_copy_and_are_right() {
        // x.t() on both sides, a permuted batch, a narrowed lhs and a broadcast view.
        let w = randn(&[5, 7], 1); // used as w.t(): [7, 5]
        let x = randn(&[2, 3, 7], 2);
        check(&x, &w.t().unwrap(), DType::F32, 1e-6);
        check(&x, &w.t().unwrap(), DType::F64, 1e-14);
        let q = randn(&[2, 4, 3, 6], 3).permute(&[0, 2, 1, 3]).unwrap(); // [2, 3, 4, 6]
        let kt = randn(&[2, 3, 5, 6], 4).t().unwrap(); // [2, 3, 6, 5]
        check(&q, &kt, DType::F32, 1e-6);
        check(&q, &kt, DType::F64, 1e-14);
        let lhs_t = randn(&[3, 9, 4], 5).t().unwrap().narrow(2, 2, 6).unwrap(); // [3, 4, 6]
        check(&lhs_t, &randn(&[6, 2], 6), DType::F64, 1e-14);
        let shared = randn(&[1, 6, 2], 7).broadcast_to(&[3, 6, 2]).unwrap();
        check(&lhs_t, &shared, DType::F64, 1e-14);
        // A dW-style product: x^T [k, rows] @ dy [rows, n], lhs column-major.
        let (xx, dy) = (randn(&[40, 24], 8), randn(&[40, 12], 9));
        check(&xx.t().unwrap(), &dy, DType::F32, 1e-6);
    }

    #[test]
    fn large_products_thread_inside_gemm() {
        // One product big enough for gemm's own threading, and a batch of two of them.
        let (a, b) = (randn(&[2, 96, 200], 10), randn(&[200, 130], 11));
        let b2 = randn(&[2, 200, 130], 12);
        check(&a, &b, DType::F32, 1e-6);
        check(&a, &b2, DType::F32, 1e-6);
    }

    #[test]
    fn errors_name_the_op_and_shapes() {
        let a = Tensor::zeros(&[2, 3], DType::F32, Device::Cpu).unwrap();
        let b = Tensor::zeros(&[4, 5], DType::F32, Device::Cpu).unwrap();
        let e = a.matmul(&b).unwrap_err().to_string();
        assert!(
            e.contains("matmul") && e.contains("[2, 3]") && e.contains("[4, 5]"),
            "{e}"
        );
        let c = Tensor::zeros(&[2, 3, 4], DType::F32, Device::Cpu).unwrap();
        let d = Tensor::zeros(&[3, 4, 5], DType::F32, Device::Cpu).unwrap();
        let e = c.matmul(&d).unwrap_err().to_string();
        assert!(
            e.contains("matmul") && e.contains("[2, 3, 4]") && e.contains("[3, 4, 5]"),
            "{e}"
        );
        let v = Tensor::zeros(&[3], DType::F32, Device::Cpu).unwrap();
        assert!(a.matmul(&v).unwrap_err().to_string().contains("matmul"));
        let f = Tensor::zeros(&[3, 2], DType::F64, Device::Cpu).unwrap();
        assert!(a.matmul(&f).unwrap_err().to_string().contains("matmul"));
        let i = Tensor::zeros(&[3, 3], DType::I64, Device::Cpu).unwrap();
        assert!(i.matmul(&i).unwrap_err().to_string().contains("matmul"));
    }
    #[test]
    fn matmul_bias_equals_matmul_plus_bias() {
        // (m, k, n), a plain or transposed rhs (the linear layer's `w.t()`), a strided bias.
        for (seed, &(m, k, n)) in [(3, 4, 5), (1, 1, 1), (0, 3, 4), (3, 0, 4), (37, 70, 50)]
            .iter()
            .enumerate()
        {
            let seed = 3 * seed as u64;
            let a = randn(&[m, k], seed);
            let w = randn(&[n, k], seed + 1);
            let bias = randn(&[n, 2], seed + 2)
                .narrow(1, 1, 1)
                .unwrap()
                .squeeze(1)
                .unwrap();
            for rhs in [w.t().unwrap(), w.t().unwrap().contiguous().unwrap()] {
                let want = a
                    .matmul(&rhs)
                    .unwrap()
                    .add(&bias)
                    .unwrap()
                    .to_vec_f64()
                    .unwrap();
                for (dtype, tol) in [(DType::F64, 1e-13), (DType::F32, 1e-5), (DType::BF16, 3e-2)] {
                    let c = |t: &Tensor| t.to_dtype(dtype).unwrap();
                    let got = c(&a).matmul_bias(&c(&rhs), &c(&bias)).unwrap();
                    assert_eq!((got.shape(), got.dtype()), (&[m, n][..], dtype));
                    for (g, w) in got.to_vec_f64().unwrap().iter().zip(&want) {
                        let scale = (k as f64).sqrt().max(1.0) * (1.0 + w.abs());
                        assert!(
                            (g - w).abs() <= tol * scale,
                            "{m}x{k}x{n} {dtype}: {g} vs {w}"
                        );
                    }
                }
            }
        }
        let a = randn(&[2, 3], 0);
        let e = a
            .matmul_bias(&randn(&[3, 4], 1), &randn(&[3], 2))
            .unwrap_err();
        assert!(e.to_string().contains("matmul_bias"), "{e}");
        let e = randn(&[2, 2, 3], 0).matmul_bias(&randn(&[3, 4], 1), &randn(&[4], 2));
        assert!(e.unwrap_err().to_string().contains("matmul_bias"));
    }
}
