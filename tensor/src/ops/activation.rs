//! GELU, erf form (`torch.nn.functional.gelu(x)`, approximate='none'), and its backward. f32
//! uses a vectorised erf (absolute error < 1.6e-7, see `cpu::activation`); f64 the exact one;
//! f16/bf16 compute in f32. Also gelu(x + bias), a Linear layer's bias and activation, fused into
//! one kernel on CUDA.

use super::softmax::{check_float, check_same, contiguous_slice, is_half};
use crate::cpu::activation::{self as kernel, GeluFloat};
use crate::{CpuStorage, DType, Error, Result, Tensor};

impl Tensor {
    /// 0.5 * x * (1 + erf(x / √2)), elementwise.
    pub fn gelu(&self) -> Result<Tensor> {
        const OP: &str = "gelu";
        check_float(OP, self)?;
        #[cfg(feature = "cuda")]
        if crate::cuda::any_on_cuda(&[self]) {
            let _p = crate::profiler::scope(OP).io(&[self], self.shape());
            return crate::cuda::rows::gelu(self);
        }
        if is_half(self.dtype()) {
            return self.to_dtype(DType::F32)?.gelu()?.to_dtype(self.dtype());
        }
        let _p = crate::profiler::scope(OP).io(&[self], self.shape());
        let x = self.contiguous()?;
        fn run<T: GeluFloat>(s: &CpuStorage, x: &Tensor) -> Result<CpuStorage> {
            let xs = contiguous_slice::<T>(OP, s, x.layout())?;
            Ok(CpuStorage::from_vec(kernel::gelu(xs)))
        }
        // The CUDA path returned above, so the storage is on the CPU here.
        let s = x.cpu_storage(OP)?;
        let out = match x.dtype() {
            DType::F32 => run::<f32>(s, &x)?,
            DType::F64 => run::<f64>(s, &x)?,
            dtype => return Err(Error::UnsupportedDType { op: OP, dtype }),
        };
        Ok(Tensor::from_cpu(out, x.shape()))
    }

    /// dy * gelu'(x), the gradient of `gelu` at `x` for the output gradient `dy`.
    pub fn gelu_backward(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
        const OP: &str = "gelu_backward";
        check_float(OP, x)?;
        check_same(OP, x, dy)?;
        #[cfg(feature = "cuda")]
        if crate::cuda::any_on_cuda(&[x, dy]) {
            let _p = crate::profiler::scope(OP).io(&[x, dy], x.shape());
            return crate::cuda::rows::gelu_backward(x, dy);
        }
        if is_half(x.dtype()) {
            let f = |t: &Tensor| t.to_dtype(DType::F32);
            return Tensor::gelu_backward(&f(x)?, &f(dy)?)?.to_dtype(x.dtype());
        }
        let _p = crate::profiler::scope(OP).io(&[x, dy], x.shape());
        let (x, dy) = (x.contiguous()?, dy.contiguous()?);
        fn run<T: GeluFloat>(s: &CpuStorage, x: &Tensor, dy: &Tensor) -> Result<CpuStorage> {
            let xs = contiguous_slice::<T>(OP, s, x.layout())?;
            let ds = contiguous_slice::<T>(OP, dy.cpu_storage(OP)?, dy.layout())?;
            Ok(CpuStorage::from_vec(kernel::gelu_backward(xs, ds)))
        }
        // The CUDA path returned above, so the storage is on the CPU here.
        let s = x.cpu_storage(OP)?;
        let out = match x.dtype() {
            DType::F32 => run::<f32>(s, &x, &dy)?,
            DType::F64 => run::<f64>(s, &x, &dy)?,
            dtype => return Err(Error::UnsupportedDType { op: OP, dtype }),
        };
        Ok(Tensor::from_cpu(out, x.shape()))
    }

    /// gelu(self + bias) for `self` [.., h] and `bias` [h] (a Linear layer's pre-activation and
    /// its bias): on CUDA one fused kernel (bias f32 with half `self` allowed there), on the CPU
    /// `add` then `gelu`.
    pub fn bias_gelu(&self, bias: &Tensor) -> Result<Tensor> {
        const OP: &str = "bias_gelu";
        check_bias(OP, self, bias)?;
        #[cfg(feature = "cuda")]
        if crate::cuda::any_on_cuda(&[self, bias]) {
            let _p = crate::profiler::scope(OP).io(&[self, bias], self.shape());
            return crate::cuda::rows::bias_gelu(self, bias);
        }
        self.add(bias)?.gelu()
    }

    /// The gradients of `bias_gelu` for the output gradient `dy`: (dx, dbias) with
    /// dx = dy * gelu'(x + bias) and dbias the sum of dx over every dim but the last (in bias's
    /// dtype).
    pub fn bias_gelu_backward(x: &Tensor, bias: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        const OP: &str = "bias_gelu_backward";
        check_bias(OP, x, bias)?;
        check_same(OP, x, dy)?;
        #[cfg(feature = "cuda")]
        if crate::cuda::any_on_cuda(&[x, bias, dy]) {
            // Writes dx and the bias gradient.
            let _p = crate::profiler::scope(OP)
                .io(&[x, bias, dy], x.shape())
                .extra_bytes((bias.elem_count() * bias.dtype().size_in_bytes()) as u64);
            return crate::cuda::rows::bias_gelu_backward(x, bias, dy);
        }
        let dx = Tensor::gelu_backward(&x.add(bias)?, dy)?;
        let db = dx.sum_to_shape(bias.shape())?.to_dtype(bias.dtype())?;
        Ok((dx, db))
    }
}

/// Errors (naming `op`) unless `x` is a float tensor of rank >= 1 and `bias` a float vector of
/// its last dim.
fn check_bias(op: &'static str, x: &Tensor, bias: &Tensor) -> Result<()> {
    check_float(op, x)?;
    check_float(op, bias)?;
    let h = x.shape().last().copied();
    if h.is_none() || bias.shape() != [h.unwrap_or(0)] {
        crate::bail!(
            op,
            "bias {:?} does not match the last dim of {:?}",
            bias.shape(),
            x.shape()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::math::erf_f64;
    use crate::Device;

    fn randn(shape: &[usize], std: f64, seed: u64) -> Tensor {
        crate::testing::randn(shape, std, DType::F64, seed)
    }

    fn gelu_ref(x: f64) -> f64 {
        0.5 * x * (1.0 + erf_f64(x / std::f64::consts::SQRT_2))
    }

    #[test]
    fn forward_matches_reference_for_every_dtype_and_layout() {
        // [40, 1000] takes the parallel path; the permuted view is non-contiguous.
        let shapes: &[&[usize]] = &[&[7], &[3, 1], &[0, 5], &[40, 1000]];
        for (seed, &shape) in shapes.iter().enumerate() {
            let x = randn(shape, 3.0, seed as u64);
            let want: Vec<f64> = x.to_vec_f64().unwrap().into_iter().map(gelu_ref).collect();
            for (dtype, tol) in [
                (DType::F64, 1e-14),
                (DType::F32, 1e-6),
                (DType::F16, 1e-2),
                (DType::BF16, 2e-2),
            ] {
                let y = x.to_dtype(dtype).unwrap().gelu().unwrap();
                assert_eq!((y.shape(), y.dtype()), (shape, dtype));
                for (i, (g, w)) in y.to_vec_f64().unwrap().iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= tol * (1.0 + w.abs()),
                        "{dtype} [{i}]: {g} vs {w}"
                    );
                }
            }
        }
        let x = randn(&[4, 6, 5], 2.0, 9).permute(&[2, 0, 1]).unwrap();
        let want: Vec<f64> = x.to_vec_f64().unwrap().into_iter().map(gelu_ref).collect();
        let base = randn(&[4, 6, 5], 2.0, 9).to_dtype(DType::F32).unwrap();
        let x32 = base.permute(&[2, 0, 1]).unwrap();
        assert!(!x32.is_contiguous());
        let got = x32.gelu().unwrap();
        for (g, w) in got.to_vec_f64().unwrap().iter().zip(&want) {
            assert!((g - w).abs() <= 1e-6 * (1.0 + w.abs()));
        }
        for (g, w) in x.gelu().unwrap().to_vec_f64().unwrap().iter().zip(&want) {
            assert!((g - w).abs() <= 1e-15 * (1.0 + w.abs()));
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let x = randn(&[5, 9], 2.5, 4);
        let dy = randn(&[5, 9], 1.0, 5).t().unwrap(); // [9, 5], strided
        let x = x.t().unwrap();
        let dx = Tensor::gelu_backward(&x, &dy).unwrap();
        let (xv, dv) = (x.to_vec_f64().unwrap(), dy.to_vec_f64().unwrap());
        let h = 1e-6;
        let want: Vec<f64> = xv
            .iter()
            .zip(&dv)
            .map(|(&v, &d)| d * (gelu_ref(v + h) - gelu_ref(v - h)) / (2.0 * h))
            .collect();
        for (g, w) in dx.to_vec_f64().unwrap().iter().zip(&want) {
            assert!((g - w).abs() <= 1e-7 * (1.0 + w.abs()), "{g} vs {w}");
        }
        // The forward used for the differences is the op itself (f64 path).
        let fwd = |v: f64| {
            Tensor::from_vec(vec![v], &[1])
                .unwrap()
                .gelu()
                .unwrap()
                .to_vec_f64()
                .unwrap()[0]
        };
        assert!((fwd(0.7) - gelu_ref(0.7)).abs() < 1e-16);
        for (dtype, tol) in [(DType::F32, 1e-6), (DType::BF16, 3e-2)] {
            let c = |t: &Tensor| t.to_dtype(dtype).unwrap();
            let got = Tensor::gelu_backward(&c(&x), &c(&dy)).unwrap();
            assert_eq!(got.dtype(), dtype);
            let want = Tensor::gelu_backward(
                &c(&x).to_dtype(DType::F64).unwrap(),
                &c(&dy).to_dtype(DType::F64).unwrap(),
            )
            .unwrap();
            for (g, w) in got
                .to_vec_f64()
                .unwrap()
                .iter()
                .zip(want.to_vec_f64().unwrap())
            {
                assert!(
                    (g - w).abs() <= tol * (1.0 + w.abs()),
                    "{dtype}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn bias_gelu_is_add_then_gelu_with_the_column_sum_gradient() {
        let (rows, h) = (3, 4);
        let x = randn(&[rows, h], 1.5, 6);
        let b = randn(&[h], 1.0, 7);
        let w = randn(&[rows, h], 1.0, 8);
        for dtype in [DType::F64, DType::F32, DType::F16, DType::BF16] {
            let c = |t: &Tensor| t.to_dtype(dtype).unwrap();
            let y = c(&x).bias_gelu(&c(&b)).unwrap();
            let want = c(&x).add(&c(&b)).unwrap().gelu().unwrap();
            assert_eq!(
                y.to_vec_f64().unwrap(),
                want.to_vec_f64().unwrap(),
                "{dtype}"
            );
            let (dx, db) = Tensor::bias_gelu_backward(&c(&x), &c(&b), &c(&w)).unwrap();
            assert_eq!(
                (dx.dtype(), db.dtype(), db.shape()),
                (dtype, dtype, &[h][..])
            );
        }
        // Against central differences of sum(w * gelu(x + b)) in f64.
        let f = |x: &Tensor, b: &Tensor| -> f64 {
            let y = x.bias_gelu(b).unwrap().mul(&w).unwrap();
            y.sum_all().unwrap().to_scalar::<f64>().unwrap()
        };
        let (dx, db) = Tensor::bias_gelu_backward(&x, &b, &w).unwrap();
        let eps = 1e-6;
        let bump = |t: &Tensor, i: usize, d: f64| {
            let mut v = t.to_vec_f64().unwrap();
            v[i] += d;
            Tensor::from_vec(v, t.shape()).unwrap()
        };
        for (i, g) in dx.to_vec_f64().unwrap().into_iter().enumerate() {
            let num = (f(&bump(&x, i, eps), &b) - f(&bump(&x, i, -eps), &b)) / (2.0 * eps);
            assert!(
                (g - num).abs() < 1e-7 * (1.0 + num.abs()),
                "dx[{i}] {g} vs {num}"
            );
        }
        for (i, g) in db.to_vec_f64().unwrap().into_iter().enumerate() {
            let num = (f(&x, &bump(&b, i, eps)) - f(&x, &bump(&b, i, -eps))) / (2.0 * eps);
            assert!(
                (g - num).abs() < 1e-7 * (1.0 + num.abs()),
                "db[{i}] {g} vs {num}"
            );
        }
        let e = x
            .bias_gelu(&randn(&[h + 1], 1.0, 9))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("bias_gelu:"), "{e}");
    }

    #[test]
    fn errors_name_the_op() {
        let i = Tensor::zeros(&[3], DType::I64, Device::Cpu).unwrap();
        assert!(i.gelu().unwrap_err().to_string().contains("gelu"));
        let x = Tensor::zeros(&[3], DType::F32, Device::Cpu).unwrap();
        let d = Tensor::zeros(&[4], DType::F32, Device::Cpu).unwrap();
        let e = Tensor::gelu_backward(&x, &d).unwrap_err().to_string();
        assert!(e.contains("gelu_backward") && e.contains("[4]"), "{e}");
        let d = Tensor::zeros(&[3], DType::F64, Device::Cpu).unwrap();
        assert!(Tensor::gelu_backward(&x, &d)
            .unwrap_err()
            .to_string()
            .contains("gelu_backward"));
    }
}
