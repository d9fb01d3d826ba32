//! Fused cross-entropy over class logits, as `torch.nn.functional.cross_entropy(logits, targets,
//! ignore_index=...)` with mean reduction: log-softmax and the negative log-likelihood in one
//! pass, returning the per-row log-sum-exp for the backward. The mean runs over rows whose target
//! is not `ignore_index`; when every row is ignored the loss is 0 and its gradient 0 (torch gives
//! NaN). The loss has the logits' dtype; lse is f64 for f64 logits and f32 otherwise (f16/bf16
//! compute in f32).

use super::softmax::{check_dtype, check_float, is_half};
use crate::cpu::loss as kernel;
use crate::cpu::simd::VecFloat;
use crate::{CpuStorage, DType, Error, Result, Tensor};

/// The dtype lse comes in for logits of `dtype`.
fn lse_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// Checks the shapes and dtypes of logits [N, C] (float) and targets [N] (i64).
fn check_shapes(op: &'static str, logits: &Tensor, targets: &Tensor) -> Result<()> {
    check_float(op, logits)?;
    if logits.rank() != 2 {
        crate::bail!(op, "logits must be [N, C], got shape {:?}", logits.shape());
    }
    check_dtype(op, DType::I64, targets)?;
    let n = logits.shape()[0];
    if targets.shape() != [n] {
        return Err(Error::ShapeMismatch {
            op,
            lhs: logits.shape().to_vec(),
            rhs: targets.shape().to_vec(),
        });
    }
    Ok(())
}

/// Errors unless `lse` holds one log-sum-exp per target row, in the dtype the forward gives.
fn check_lse(op: &'static str, logits: &Tensor, targets: &Tensor, lse: &Tensor) -> Result<()> {
    if lse.shape() != [targets.elem_count()] {
        return Err(Error::ShapeMismatch {
            op,
            lhs: logits.shape().to_vec(),
            rhs: lse.shape().to_vec(),
        });
    }
    check_dtype(op, lse_dtype(logits.dtype()), lse)
}

/// Checks logits [N, C] and CPU targets [N] (each in 0..C or `ignore`); returns the targets and
/// the number of rows that count. (On a GPU the kernels check the targets and report a bad one
/// through the status word, `Device::check_status`: the targets are never downloaded.)
fn check_targets(
    op: &'static str,
    logits: &Tensor,
    targets: &Tensor,
    ignore: i64,
) -> Result<(Vec<i64>, usize)> {
    check_shapes(op, logits, targets)?;
    let c = logits.shape()[1];
    let t = targets.to_vec::<i64>()?;
    let mut valid = 0;
    for &v in &t {
        if v == ignore {
            continue;
        }
        if v < 0 || v as u64 >= c as u64 {
            return Err(Error::IndexOutOfRange {
                op,
                index: v,
                size: c,
            });
        }
        valid += 1;
    }
    Ok((t, valid))
}

impl Tensor {
    /// Mean cross-entropy of `logits` `[N, C]` against class indices `targets` `[N]` (i64), rows
    /// with target `ignore_index` left out. Returns (loss as a rank-0 tensor, lse `[N]`).
    pub fn cross_entropy(
        logits: &Tensor,
        targets: &Tensor,
        ignore_index: i64,
    ) -> Result<(Tensor, Tensor)> {
        const OP: &str = "cross_entropy";
        check_shapes(OP, logits, targets)?;
        #[cfg(feature = "cuda")]
        if crate::cuda::any_on_cuda(&[logits, targets]) {
            let _p = crate::profiler::scope(OP).io(&[logits, targets], &logits.shape()[..1]);
            return crate::cuda::loss::cross_entropy(logits, targets, ignore_index);
        }
        let (t, _) = check_targets(OP, logits, targets, ignore_index)?;
        if is_half(logits.dtype()) {
            let l32 = logits.to_dtype(DType::F32)?;
            let (loss, lse) = Tensor::cross_entropy(&l32, targets, ignore_index)?;
            return Ok((loss.to_dtype(logits.dtype())?, lse));
        }
        let _p = crate::profiler::scope(OP).io(&[logits, targets], &logits.shape()[..1]);
        let x = logits.contiguous()?;
        let c = x.shape()[1];
        fn run<T: VecFloat>(
            s: &CpuStorage,
            x: &Tensor,
            c: usize,
            t: &[i64],
            ignore: i64,
        ) -> Result<(CpuStorage, CpuStorage)> {
            let xs = super::softmax::contiguous_slice::<T>(OP, s, x.layout())?;
            let r = kernel::cross_entropy(xs, c, t, ignore);
            let mean = if r.n_valid == 0 {
                0.0
            } else {
                r.loss_sum / r.n_valid as f64
            };
            let loss = CpuStorage::from_vec(vec![T::from_f64(mean)]);
            Ok((loss, CpuStorage::from_vec(r.lse)))
        }
        // The CUDA path returned above, so the storage is on the CPU here.
        let s = x.cpu_storage(OP)?;
        let (loss, lse) = match x.dtype() {
            DType::F32 => run::<f32>(s, &x, c, &t, ignore_index)?,
            DType::F64 => run::<f64>(s, &x, c, &t, ignore_index)?,
            dtype => return Err(Error::UnsupportedDType { op: OP, dtype }),
        };
        Ok((
            Tensor::from_cpu(loss, &[]),
            Tensor::from_cpu(lse, &[t.len()]),
        ))
    }

    /// Gradient of `cross_entropy`'s mean loss w.r.t. the logits, scaled by `grad_loss`:
    /// grad_loss * (softmax(row) - onehot(target)) / n_valid, zero rows where ignored.
    pub fn cross_entropy_backward(
        logits: &Tensor,
        targets: &Tensor,
        lse: &Tensor,
        ignore_index: i64,
        grad_loss: f64,
    ) -> Result<Tensor> {
        const OP: &str = "cross_entropy_backward";
        check_shapes(OP, logits, targets)?;
        check_lse(OP, logits, targets, lse)?;
        #[cfg(feature = "cuda")]
        if crate::cuda::any_on_cuda(&[logits, targets, lse]) {
            let _p = crate::profiler::scope(OP).io(&[logits, targets, lse], logits.shape());
            let (t, l) = (targets, lse);
            return crate::cuda::loss::cross_entropy_backward(
                logits,
                t,
                l,
                ignore_index,
                grad_loss,
                None,
            );
        }
        let (t, valid) = check_targets(OP, logits, targets, ignore_index)?;
        if is_half(logits.dtype()) {
            let l32 = logits.to_dtype(DType::F32)?;
            return Tensor::cross_entropy_backward(&l32, targets, lse, ignore_index, grad_loss)?
                .to_dtype(logits.dtype());
        }
        let _p = crate::profiler::scope(OP).io(&[logits, targets, lse], logits.shape());
        let (x, lse) = (logits.contiguous()?, lse.contiguous()?);
        let c = x.shape()[1];
        let coef = if valid == 0 {
            0.0
        } else {
            grad_loss / valid as f64
        };
        fn run<T: VecFloat>(
            s: &CpuStorage,
            x: &Tensor,
            lse: &Tensor,
            t: &[i64],
            ignore: i64,
            coef: f64,
        ) -> Result<CpuStorage> {
            use super::softmax::contiguous_slice;
            let xs = contiguous_slice::<T>(OP, s, x.layout())?;
            let ls = contiguous_slice::<T>(OP, lse.cpu_storage(OP)?, lse.layout())?;
            let c = x.shape()[1];
            let g = kernel::cross_entropy_backward(xs, c, t, ls, ignore, T::from_f64(coef));
            Ok(CpuStorage::from_vec(g))
        }
        // The CUDA path returned above, so the storage is on the CPU here.
        let s = x.cpu_storage(OP)?;
        let out = match x.dtype() {
            DType::F32 => run::<f32>(s, &x, &lse, &t, ignore_index, coef)?,
            DType::F64 => run::<f64>(s, &x, &lse, &t, ignore_index, coef)?,
            dtype => return Err(Error::UnsupportedDType { op: OP, dtype }),
        };
        Ok(Tensor::from_cpu(out, &[t.len(), c]))
    }

    /// [`Tensor::cross_entropy_backward`] scaled by the loss gradient `grad_loss` given as a
    /// rank-0 tensor on the logits' device: on a GPU the kernel reads it there, so the backward
    /// of a loss never waits for the device (the autograd node calls this).
    pub fn cross_entropy_backward_by(
        logits: &Tensor,
        targets: &Tensor,
        lse: &Tensor,
        ignore_index: i64,
        grad_loss: &Tensor,
    ) -> Result<Tensor> {
        const OP: &str = "cross_entropy_backward";
        if grad_loss.elem_count() != 1 {
            crate::bail!(
                OP,
                "the loss gradient must be one value, got shape {:?}",
                grad_loss.shape()
            );
        }
        #[cfg(feature = "cuda")]
        if crate::cuda::any_on_cuda(&[logits, grad_loss]) {
            check_shapes(OP, logits, targets)?;
            check_lse(OP, logits, targets, lse)?;
            let _p = crate::profiler::scope(OP).io(&[logits, targets, lse], logits.shape());
            let g = grad_loss.to_dtype(DType::F32)?.contiguous()?;
            return crate::cuda::loss::cross_entropy_backward(
                logits,
                targets,
                lse,
                ignore_index,
                1.0,
                Some(&g),
            );
        }
        let g = grad_loss.to_dtype(DType::F64)?.to_vec::<f64>()?[0];
        Tensor::cross_entropy_backward(logits, targets, lse, ignore_index, g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Device, Rng};

    const IGNORE: i64 = -100;

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        crate::testing::randn(shape, 2.0, DType::F64, seed)
    }

    /// Targets for `n` rows of `c` classes, every third row ignored.
    fn targets(n: usize, c: usize, seed: u64) -> Tensor {
        let u = Tensor::rand_uniform(
            &[n],
            0.0,
            c as f64,
            DType::F64,
            Device::Cpu,
            &mut Rng::new(seed),
        )
        .unwrap()
        .to_vec_f64()
        .unwrap();
        let t = u
            .iter()
            .enumerate()
            .map(|(i, v)| if i % 3 == 1 { IGNORE } else { *v as i64 });
        Tensor::from_vec(t.collect::<Vec<_>>(), &[n]).unwrap()
    }

    /// (mean loss, lse per row) in f64.
    fn reference(x: &Tensor, t: &Tensor) -> (f64, Vec<f64>) {
        let c = x.shape()[1];
        let (xv, tv) = (x.to_vec_f64().unwrap(), t.to_vec::<i64>().unwrap());
        let lse: Vec<f64> = xv
            .chunks(c.max(1))
            .take(tv.len())
            .map(|r| {
                let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                m + r.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
            })
            .collect();
        let valid: Vec<usize> = (0..tv.len()).filter(|&i| tv[i] != IGNORE).collect();
        let sum: f64 = valid
            .iter()
            .map(|&i| lse[i] - xv[i * c + tv[i] as usize])
            .sum();
        let mean = if valid.is_empty() {
            0.0
        } else {
            sum / valid.len() as f64
        };
        (mean, lse)
    }

    #[test]
    fn forward_matches_reference() {
        // [64, 600] takes the parallel path.
        for (seed, &(n, c)) in [(5, 7), (3, 1), (0, 4), (1, 9), (64, 600)]
            .iter()
            .enumerate()
        {
            let seed = 10 * seed as u64;
            let x = randn(&[n, c], seed);
            let t = targets(n, c, seed + 1);
            let (want, want_lse) = reference(&x, &t);
            for (dtype, tol) in [
                (DType::F64, 1e-12),
                (DType::F32, 2e-6),
                (DType::F16, 1e-2),
                (DType::BF16, 2e-2),
            ] {
                let xd = x.to_dtype(dtype).unwrap();
                let (loss, lse) = Tensor::cross_entropy(&xd, &t, IGNORE).unwrap();
                assert_eq!((loss.shape(), loss.dtype()), (&[][..], dtype));
                assert_eq!((lse.shape(), lse.dtype()), (&[n][..], lse_dtype(dtype)));
                // Half logits are rounded first: compare with their own reference.
                let (want, want_lse) = if is_half(dtype) {
                    reference(&xd, &t)
                } else {
                    (want, want_lse.clone())
                };
                let got = loss.to_vec_f64().unwrap()[0];
                assert!(
                    (got - want).abs() <= tol * (1.0 + want.abs()),
                    "{n}x{c} {dtype}: {got} vs {want}"
                );
                let lse_tol = if is_half(dtype) { 2e-6 } else { tol };
                for (g, w) in lse.to_vec_f64().unwrap().iter().zip(&want_lse) {
                    assert!((g - w).abs() <= lse_tol * (1.0 + w.abs()), "lse {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn strided_inputs_and_all_ignored() {
        let x = randn(&[6, 4], 1).t().unwrap(); // [4, 6]
        let long = Tensor::from_vec(vec![0i64, 5, 2, 9, IGNORE, 9, 3, 9], &[8]).unwrap();
        let t = long
            .reshape(&[4, 2])
            .unwrap()
            .narrow(1, 0, 1)
            .unwrap()
            .squeeze(1)
            .unwrap();
        assert_eq!(t.to_vec::<i64>().unwrap(), vec![0, 2, IGNORE, 3]);
        let (want, _) = reference(&x, &t);
        let (loss, lse) = Tensor::cross_entropy(&x, &t, IGNORE).unwrap();
        assert!((loss.to_scalar::<f64>().unwrap() - want).abs() < 1e-12);
        let g = Tensor::cross_entropy_backward(&x, &t, &lse, IGNORE, 1.0).unwrap();
        assert_eq!(g.shape(), &[4, 6]);
        assert!(g.to_vec_f64().unwrap()[12..18].iter().all(|&v| v == 0.0));
        // Every row ignored: loss 0 (torch: NaN) and zero gradient.
        let none = Tensor::from_vec(vec![IGNORE; 4], &[4]).unwrap();
        let (loss, lse) = Tensor::cross_entropy(&x, &none, IGNORE).unwrap();
        assert_eq!(loss.to_scalar::<f64>().unwrap(), 0.0);
        let g = Tensor::cross_entropy_backward(&x, &none, &lse, IGNORE, 1.0).unwrap();
        assert!(g.to_vec_f64().unwrap().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn backward_matches_finite_differences() {
        let (n, c) = (5, 6);
        let x = randn(&[n, c], 3);
        let t = targets(n, c, 4);
        let (_, lse) = Tensor::cross_entropy(&x, &t, IGNORE).unwrap();
        let g = Tensor::cross_entropy_backward(&x, &t, &lse, IGNORE, 1.7).unwrap();
        let xv = x.to_vec_f64().unwrap();
        let loss = |v: Vec<f64>| {
            let xt = Tensor::from_vec(v, &[n, c]).unwrap();
            Tensor::cross_entropy(&xt, &t, IGNORE)
                .unwrap()
                .0
                .to_scalar::<f64>()
                .unwrap()
        };
        let h = 1e-6;
        for (i, &gi) in g.to_vec_f64().unwrap().iter().enumerate() {
            let (mut p, mut q) = (xv.clone(), xv.clone());
            p[i] += h;
            q[i] -= h;
            let want = 1.7 * (loss(p) - loss(q)) / (2.0 * h);
            assert!((gi - want).abs() < 1e-7, "[{i}]: {gi} vs {want}");
        }
        // f32 and bf16 agree with f64 (bf16 on its own rounded logits).
        for (dtype, tol) in [(DType::F32, 1e-6), (DType::BF16, 1e-2)] {
            let xd = x.to_dtype(dtype).unwrap();
            let (_, lse) = Tensor::cross_entropy(&xd, &t, IGNORE).unwrap();
            let got = Tensor::cross_entropy_backward(&xd, &t, &lse, IGNORE, 1.7).unwrap();
            assert_eq!(got.dtype(), dtype);
            let x64 = xd.to_dtype(DType::F64).unwrap();
            let (_, l64) = Tensor::cross_entropy(&x64, &t, IGNORE).unwrap();
            let want = Tensor::cross_entropy_backward(&x64, &t, &l64, IGNORE, 1.7).unwrap();
            for (a, b) in got
                .to_vec_f64()
                .unwrap()
                .iter()
                .zip(want.to_vec_f64().unwrap())
            {
                assert!((a - b).abs() <= tol, "{dtype}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn errors_name_the_op() {
        let x = Tensor::zeros(&[2, 3], DType::F32, Device::Cpu).unwrap();
        let bad = Tensor::from_vec(vec![0i64, 3], &[2]).unwrap();
        let e = Tensor::cross_entropy(&x, &bad, IGNORE).unwrap_err();
        assert!(
            matches!(
                e,
                Error::IndexOutOfRange {
                    index: 3,
                    size: 3,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("cross_entropy"));
        let neg = Tensor::from_vec(vec![-1i64, 0], &[2]).unwrap();
        assert!(Tensor::cross_entropy(&x, &neg, IGNORE)
            .unwrap_err()
            .to_string()
            .contains("cross_entropy"));
        let f = Tensor::zeros(&[2], DType::F32, Device::Cpu).unwrap();
        assert!(Tensor::cross_entropy(&x, &f, IGNORE)
            .unwrap_err()
            .to_string()
            .contains("cross_entropy"));
        let short = Tensor::from_vec(vec![0i64], &[1]).unwrap();
        assert!(Tensor::cross_entropy(&x, &short, IGNORE)
            .unwrap_err()
            .to_string()
            .contains("cross_entropy"));
        let v = Tensor::zeros(&[3], DType::F32, Device::Cpu).unwrap();
        assert!(Tensor::cross_entropy(&v, &short, IGNORE)
            .unwrap_err()
            .to_string()
            .contains("cross_entropy"));
        let ok = Tensor::from_vec(vec![0i64, 2], &[2]).unwrap();
        let (_, lse) = Tensor::cross_entropy(&x, &ok, IGNORE).unwrap();
        let e = Tensor::cross_entropy_backward(
            &x,
            &ok,
            &lse.to_dtype(DType::F64).unwrap(),
            IGNORE,
            1.0,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cross_entropy_backward"), "{e}");
        let e = Tensor::cross_entropy_backward(&x, &bad, &lse, IGNORE, 1.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cross_entropy_backward"), "{e}");
    }
}
