//! LayerNorm over the last dim H, as `torch.native_layer_norm` with a weight and bias of shape
//! `[H]`: y = (x - mean) / sqrt(var + eps) * weight + bias with the biased variance. Returns the
//! saved statistics (mean, rstd = 1/sqrt(var + eps)), shaped like x without its last dim, for
//! the backward pass. Statistics are f64 for f64 input and f32 otherwise: f16/bf16 inputs compute
//! in f32, and may then come with f32 weights (mixed precision); dweight/dbias take the weight's
//! dtype, dx the input's.

use super::softmax::{check_dtype, check_float, check_same, contiguous_slice, is_half};
use crate::cpu::layer_norm as kernel;
use crate::cpu::simd::VecFloat;
use crate::{CpuStorage, DType, Error, Result, Tensor};

/// The dtype of the saved statistics for an input of `dtype`.
fn stat_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// Checks x (float, rank >= 1) and weight/bias-like `params` ([H], x's dtype, or f32 for a
/// half-precision x).
fn check_params(op: &'static str, x: &Tensor, params: &[&Tensor]) -> Result<()> {
    check_float(op, x)?;
    if x.rank() == 0 {
        crate::bail!(op, "needs a tensor of rank >= 1, got a scalar");
    }
    let h = x.shape()[x.rank() - 1];
    let wdtype = params[0].dtype();
    for p in params {
        if p.shape() != [h] {
            return Err(Error::ShapeMismatch {
                op,
                lhs: x.shape().to_vec(),
                rhs: p.shape().to_vec(),
            });
        }
        if !(p.dtype() == x.dtype() || (is_half(x.dtype()) && p.dtype() == DType::F32)) {
            check_dtype(op, x.dtype(), p)?;
        }
        check_dtype(op, wdtype, p)?;
    }
    Ok(())
}

impl Tensor {
    /// LayerNorm over the last dim: (y, mean, rstd).
    pub fn layer_norm(
        &self,
        weight: &Tensor,
        bias: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        const OP: &str = "layer_norm";
        check_params(OP, self, &[weight, bias])?;
        #[cfg(feature = "cuda")]
        if crate::cuda::any_on_cuda(&[self, weight, bias]) {
            let _p = crate::profiler::scope(OP).io(&[self, weight, bias], self.shape());
            return crate::cuda::layer_norm::layer_norm(self, weight, bias, eps);
        }
        if is_half(self.dtype()) {
            let f = |t: &Tensor| t.to_dtype(DType::F32);
            let (y, mean, rstd) = f(self)?.layer_norm(&f(weight)?, &f(bias)?, eps)?;
            return Ok((y.to_dtype(self.dtype())?, mean, rstd));
        }
        let _p = crate::profiler::scope(OP).io(&[self, weight, bias], self.shape());
        let (x, w, b) = (self.contiguous()?, weight.contiguous()?, bias.contiguous()?);
        let stat_shape = &x.shape()[..x.rank() - 1];
        let rows: usize = stat_shape.iter().product();
        fn run<T: VecFloat>(
            x: &CpuStorage,
            xt: &Tensor,
            w: &Tensor,
            b: &Tensor,
            rows: usize,
            eps: f64,
        ) -> Result<[CpuStorage; 3]> {
            let xs = contiguous_slice::<T>(OP, x, xt.layout())?;
            let ws = contiguous_slice::<T>(OP, w.cpu_storage(OP)?, w.layout())?;
            let bs = contiguous_slice::<T>(OP, b.cpu_storage(OP)?, b.layout())?;
            let (y, m, r) = kernel::layer_norm(xs, rows, ws, bs, T::from_f64(eps));
            Ok([y, m, r].map(CpuStorage::from_vec))
        }
        // The CUDA path returned above, so the storage is on the CPU here.
        let s = x.cpu_storage(OP)?;
        let [y, m, r] = match x.dtype() {
            DType::F32 => run::<f32>(s, &x, &w, &b, rows, eps)?,
            DType::F64 => run::<f64>(s, &x, &w, &b, rows, eps)?,
            dtype => return Err(Error::UnsupportedDType { op: OP, dtype }),
        };
        Ok((
            Tensor::from_cpu(y, x.shape()),
            Tensor::from_cpu(m, stat_shape),
            Tensor::from_cpu(r, stat_shape),
        ))
    }

    /// Gradients of `layer_norm` w.r.t. (x, weight, bias), given the forward input, weight, the
    /// saved mean/rstd and the output gradient `dy`.
    pub fn layer_norm_backward(
        x: &Tensor,
        weight: &Tensor,
        mean: &Tensor,
        rstd: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        const OP: &str = "layer_norm_backward";
        check_params(OP, x, &[weight])?;
        check_same(OP, x, dy)?;
        let stat_shape = &x.shape()[..x.rank() - 1];
        for s in [mean, rstd] {
            if s.shape() != stat_shape {
                return Err(Error::ShapeMismatch {
                    op: OP,
                    lhs: x.shape().to_vec(),
                    rhs: s.shape().to_vec(),
                });
            }
            check_dtype(OP, stat_dtype(x.dtype()), s)?;
        }
        #[cfg(feature = "cuda")]
        if crate::cuda::any_on_cuda(&[x, weight, mean, rstd, dy]) {
            let _p = ln_backward_scope(x, weight, mean, rstd, dy);
            return crate::cuda::layer_norm::layer_norm_backward(x, weight, mean, rstd, dy);
        }
        if is_half(x.dtype()) {
            let f = |t: &Tensor| t.to_dtype(DType::F32);
            let (dx, dw, db) =
                Tensor::layer_norm_backward(&f(x)?, &f(weight)?, mean, rstd, &f(dy)?)?;
            let wd = weight.dtype();
            return Ok((dx.to_dtype(x.dtype())?, dw.to_dtype(wd)?, db.to_dtype(wd)?));
        }
        let _p = ln_backward_scope(x, weight, mean, rstd, dy);
        let xc = x.contiguous()?;
        let others = [weight, mean, rstd, dy].map(|t| t.contiguous());
        let [w, m, r, g] = others;
        let (w, m, r, g) = (w?, m?, r?, g?);
        fn run<T: VecFloat>(x: &CpuStorage, ts: [&Tensor; 5]) -> Result<[CpuStorage; 3]> {
            fn s<T: VecFloat>(t: &Tensor) -> Result<&[T]> {
                contiguous_slice::<T>(OP, t.cpu_storage(OP)?, t.layout())
            }
            let xs = contiguous_slice::<T>(OP, x, ts[0].layout())?;
            let (ws, ms, rs, gs) = (
                s::<T>(ts[1])?,
                s::<T>(ts[2])?,
                s::<T>(ts[3])?,
                s::<T>(ts[4])?,
            );
            let (dx, dw, db) = kernel::layer_norm_backward(xs, ws, ms, rs, gs);
            Ok([dx, dw, db].map(CpuStorage::from_vec))
        }
        let ts = [&xc, &w, &m, &r, &g];
        // The CUDA path returned above, so the storage is on the CPU here.
        let s = xc.cpu_storage(OP)?;
        let [dx, dw, db] = match xc.dtype() {
            DType::F32 => run::<f32>(s, ts)?,
            DType::F64 => run::<f64>(s, ts)?,
            dtype => return Err(Error::UnsupportedDType { op: OP, dtype }),
        };
        Ok((
            Tensor::from_cpu(dx, x.shape()),
            Tensor::from_cpu(dw, weight.shape()),
            Tensor::from_cpu(db, weight.shape()),
        ))
    }
}

/// The profiler scope of `layer_norm_backward`: reads x, the weight, the saved statistics and
/// dy; writes dx and the weight and bias gradients.
fn ln_backward_scope(
    x: &Tensor,
    weight: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
) -> crate::profiler::Scope {
    let params = 2 * weight.elem_count() * weight.dtype().size_in_bytes();
    crate::profiler::scope("layer_norm_backward")
        .io(&[x, weight, mean, rstd, dy], x.shape())
        .extra_bytes(params as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Device;

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        crate::testing::randn(shape, 1.0, DType::F64, seed)
    }

    /// (y, mean, rstd) in f64, row by row.
    fn reference(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> [Vec<f64>; 3] {
        let h = w.elem_count();
        let (xv, wv, bv) = (
            x.to_vec_f64().unwrap(),
            w.to_vec_f64().unwrap(),
            b.to_vec_f64().unwrap(),
        );
        let (mut y, mut ms, mut rs) = (vec![], vec![], vec![]);
        for row in xv.chunks(h) {
            let m = row.iter().sum::<f64>() / h as f64;
            let var = row.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / h as f64;
            let r = 1.0 / (var + eps).sqrt();
            y.extend(
                row.iter()
                    .zip(&wv)
                    .zip(&bv)
                    .map(|((v, w), b)| (v - m) * r * w + b),
            );
            ms.push(m);
            rs.push(r);
        }
        [y, ms, rs]
    }

    fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol * (1.0 + w.abs()),
                "{what} [{i}]: got {g}, want {w}"
            );
        }
    }

    fn params(h: usize, seed: u64) -> (Tensor, Tensor) {
        (randn(&[h], seed), randn(&[h], seed + 1))
    }

    #[test]
    fn forward_matches_reference() {
        let shapes: &[&[usize]] = &[&[4, 7], &[2, 3, 16], &[5, 1], &[9], &[0, 8], &[50, 700]];
        for (seed, &shape) in shapes.iter().enumerate() {
            let seed = 10 * seed as u64;
            // Offset the data so the mean is far from zero, as after a residual add.
            let x = (randn(shape, seed)
                .to_vec_f64()
                .unwrap()
                .iter()
                .map(|v| v * 3.0 + 5.0))
            .collect::<Vec<_>>();
            let x = Tensor::from_vec(x, shape).unwrap();
            let (w, b) = params(shape[shape.len() - 1], seed + 1);
            let want = reference(&x, &w, &b, 1e-5);
            for (dtype, tol) in [
                (DType::F64, 1e-12),
                (DType::F32, 2e-6),
                (DType::F16, 1e-2),
                (DType::BF16, 3e-2),
            ] {
                let c = |t: &Tensor| t.to_dtype(dtype).unwrap();
                let (y, m, r) = c(&x).layer_norm(&c(&w), &c(&b), 1e-5).unwrap();
                assert_eq!((y.shape(), y.dtype()), (shape, dtype));
                assert_eq!(m.shape(), &shape[..shape.len() - 1]);
                assert_eq!(m.dtype(), stat_dtype(dtype));
                let what = format!("{shape:?} {dtype}");
                // Half inputs are rounded before normalising; compare with their own reference.
                let want = if is_half(dtype) {
                    reference(&c(&x), &c(&w), &c(&b), 1e-5)
                } else {
                    want.clone()
                };
                assert_close(&y.to_vec_f64().unwrap(), &want[0], tol, &what);
                let stol = if is_half(dtype) { 2e-6 } else { tol };
                assert_close(&m.to_vec_f64().unwrap(), &want[1], stol, &what);
                assert_close(&r.to_vec_f64().unwrap(), &want[2], stol, &what);
            }
        }
    }

    #[test]
    fn strided_inputs_and_mixed_precision_weights() {
        let x = randn(&[6, 4, 3], 1).permute(&[2, 0, 1]).unwrap(); // [3, 6, 4]
        let w = randn(&[4, 2], 2)
            .narrow(1, 1, 1)
            .unwrap()
            .squeeze(1)
            .unwrap(); // stride 2
        let b = randn(&[4], 3);
        let want = reference(&x, &w, &b, 1e-6);
        let (y, _, _) = x.layer_norm(&w, &b, 1e-6).unwrap();
        assert_close(&y.to_vec_f64().unwrap(), &want[0], 1e-12, "strided");
        // bf16 input with f32 weights.
        let xb = x.to_dtype(DType::BF16).unwrap();
        let c = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let (y, _, _) = xb.layer_norm(&c(&w), &c(&b), 1e-6).unwrap();
        assert_eq!(y.dtype(), DType::BF16);
        let want = reference(&xb, &w, &b, 1e-6);
        assert_close(&y.to_vec_f64().unwrap(), &want[0], 3e-2, "bf16 x f32 w");
    }

    /// (dx, dw, db) of L = Σ gy·y by central differences in f64.
    fn numeric(x: &Tensor, w: &Tensor, b: &Tensor, gy: &[f64]) -> [Vec<f64>; 3] {
        let loss = |x: &Tensor, w: &Tensor, b: &Tensor| -> f64 {
            let (y, _, _) = x.layer_norm(w, b, 1e-5).unwrap();
            y.to_vec_f64()
                .unwrap()
                .iter()
                .zip(gy)
                .map(|(a, b)| a * b)
                .sum()
        };
        let h = 1e-6;
        let grad = |which: usize| -> Vec<f64> {
            let t = [x, w, b][which];
            let v = t.to_vec_f64().unwrap();
            (0..v.len())
                .map(|i| {
                    let mut d = [0.0, 0.0];
                    for (k, s) in [1.0, -1.0].iter().enumerate() {
                        let mut p = v.clone();
                        p[i] += s * h;
                        let p = Tensor::from_vec(p, t.shape()).unwrap();
                        let mut args = [x.clone(), w.clone(), b.clone()];
                        args[which] = p;
                        d[k] = loss(&args[0], &args[1], &args[2]);
                    }
                    (d[0] - d[1]) / (2.0 * h)
                })
                .collect()
        };
        [grad(0), grad(1), grad(2)]
    }

    #[test]
    fn backward_matches_finite_differences() {
        let x = randn(&[3, 2, 6], 4);
        let (w, b) = params(6, 5);
        let gy = randn(&[3, 2, 6], 7);
        let (_, m, r) = x.layer_norm(&w, &b, 1e-5).unwrap();
        let (dx, dw, db) = Tensor::layer_norm_backward(&x, &w, &m, &r, &gy).unwrap();
        let want = numeric(&x, &w, &b, &gy.to_vec_f64().unwrap());
        for (got, want, what) in [
            (dx, &want[0], "dx"),
            (dw, &want[1], "dw"),
            (db, &want[2], "db"),
        ] {
            assert_close(&got.to_vec_f64().unwrap(), want, 1e-6, what);
        }
    }

    #[test]
    fn backward_in_f32_and_half_agrees_with_f64_on_large_inputs() {
        // 60 x 700 spans several row blocks, so dw/db are reduced from parallel partial sums.
        let x = randn(&[60, 700], 8);
        let (w, b) = params(700, 9);
        let gy = randn(&[60, 700], 11);
        let (_, m, r) = x.layer_norm(&w, &b, 1e-5).unwrap();
        let want = Tensor::layer_norm_backward(&x, &w, &m, &r, &gy).unwrap();
        for (dtype, tol) in [(DType::F32, 1e-4), (DType::F16, 5e-2)] {
            let c = |t: &Tensor| t.to_dtype(dtype).unwrap();
            let (_, m, r) = c(&x).layer_norm(&c(&w), &c(&b), 1e-5).unwrap();
            // A transposed dy exercises the strided path.
            let gyt = c(&gy).t().unwrap().copy().unwrap().t().unwrap();
            let got = Tensor::layer_norm_backward(&c(&x), &c(&w), &m, &r, &gyt).unwrap();
            for (g, w) in [(&got.0, &want.0), (&got.1, &want.1), (&got.2, &want.2)] {
                assert_eq!(g.dtype(), dtype);
                let scale = w
                    .to_vec_f64()
                    .unwrap()
                    .iter()
                    .fold(0f64, |a, v| a.max(v.abs()));
                let (g, w) = (g.to_vec_f64().unwrap(), w.to_vec_f64().unwrap());
                for (i, (a, e)) in g.iter().zip(&w).enumerate() {
                    assert!((a - e).abs() <= tol * scale, "{dtype} [{i}]: {a} vs {e}");
                }
            }
        }
        // Empty inputs: zero rows give zero dw/db.
        let e = Tensor::zeros(&[0, 5], DType::F32, Device::Cpu).unwrap();
        let (w5, b5) = params(5, 12);
        let c = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let (y, m, r) = e.layer_norm(&c(&w5), &c(&b5), 1e-5).unwrap();
        assert_eq!((y.shape(), m.shape()), (&[0, 5][..], &[0][..]));
        let (dx, dw, db) = Tensor::layer_norm_backward(&e, &c(&w5), &m, &r, &e).unwrap();
        assert_eq!(dx.shape(), &[0, 5]);
        assert_eq!(dw.to_vec::<f32>().unwrap(), vec![0.0; 5]);
        assert_eq!(db.to_vec::<f32>().unwrap(), vec![0.0; 5]);
    }

    #[test]
    fn errors_name_the_op() {
        let x = Tensor::zeros(&[2, 3], DType::F32, Device::Cpu).unwrap();
        let w = Tensor::zeros(&[4], DType::F32, Device::Cpu).unwrap();
        let b = Tensor::zeros(&[3], DType::F32, Device::Cpu).unwrap();
        let e = x.layer_norm(&w, &b, 1e-5).unwrap_err().to_string();
        assert!(e.contains("layer_norm") && e.contains("[4]"), "{e}");
        let e = x
            .layer_norm(&b.to_dtype(DType::F64).unwrap(), &b, 1e-5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer_norm"), "{e}");
        let (_, m, r) = x.layer_norm(&b, &b, 1e-5).unwrap();
        let e = Tensor::layer_norm_backward(&x, &b, &r.reshape(&[1, 2]).unwrap(), &r, &x)
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer_norm_backward"), "{e}");
        let e = Tensor::layer_norm_backward(&x, &b, &m, &r, &b)
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer_norm_backward"), "{e}");
        let i = Tensor::zeros(&[2, 3], DType::I64, Device::Cpu).unwrap();
        assert!(i
            .layer_norm(&b, &b, 1e-5)
            .unwrap_err()
            .to_string()
            .contains("layer_norm"));
    }
}
