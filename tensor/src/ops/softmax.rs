//! Softmax and log-softmax over the last dim with a fused scale and additive mask,
//! `softmax(x * scale + mask)` (the attention-probability op), and their backward passes. The
//! mask has the input's dtype and broadcasts to its shape (`[B,1,1,S]` against `[B,H,S,S]`); -inf
//! entries mask out. A row that is entirely -inf gives zeros from softmax and -inf from
//! log-softmax (torch gives NaN), so that exp(log_softmax) == softmax still holds and nothing
//! downstream sees a NaN. f16/bf16 compute in f32.
//!
//! Also the small argument helpers the other row-op files (layer_norm, activation, loss) share.

use crate::cpu::simd::VecFloat;
use crate::cpu::softmax::{self as kernel, RowMask};
use crate::{CpuStorage, DType, Error, Layout, Result, Tensor, WithDType};

// ---- shared argument helpers ------------------------------------------------------------------

/// Errors (naming `op`) unless `t` holds floats.
pub(crate) fn check_float(op: &'static str, t: &Tensor) -> Result<()> {
    if t.dtype().is_float() {
        Ok(())
    } else {
        Err(Error::UnsupportedDType {
            op,
            dtype: t.dtype(),
        })
    }
}

/// Errors (naming `op`) unless `a` and `b` have the same shape and dtype.
pub(crate) fn check_same(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::ShapeMismatch {
            op,
            lhs: a.shape().to_vec(),
            rhs: b.shape().to_vec(),
        });
    }
    check_dtype(op, a.dtype(), b)
}

/// Errors (naming `op`) unless `t` has dtype `expected`.
pub(crate) fn check_dtype(op: &'static str, expected: DType, t: &Tensor) -> Result<()> {
    if t.dtype() == expected {
        Ok(())
    } else {
        Err(Error::DTypeMismatch {
            op,
            expected,
            got: t.dtype(),
        })
    }
}

/// f16 and bf16, which CPU kernels widen to f32.
pub(crate) fn is_half(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16)
}

/// The elements a contiguous layout covers.
pub(crate) fn contiguous_slice<'a, T: WithDType>(
    op: &'static str,
    s: &'a CpuStorage,
    l: &Layout,
) -> Result<&'a [T]> {
    let r = l
        .contiguous_range()
        .ok_or_else(|| Error::op(op, "internal: kernel input is not contiguous"))?;
    Ok(&s.as_slice::<T>(op)?[r])
}

// ---- the ops -----------------------------------------------------------------------------------

impl Tensor {
    /// softmax(self * scale + mask) over the last dim.
    pub fn softmax_last(&self, mask: Option<&Tensor>, scale: f64) -> Result<Tensor> {
        forward("softmax_last", self, mask, scale, false)
    }

    /// log_softmax(self * scale + mask) over the last dim.
    pub fn log_softmax_last(&self, mask: Option<&Tensor>, scale: f64) -> Result<Tensor> {
        forward("log_softmax_last", self, mask, scale, true)
    }

    /// Gradient of `softmax_last` w.r.t. its input, from the output `y` and output gradient
    /// `dy`: scale * y * (dy - Σ_last dy·y).
    pub fn softmax_backward(y: &Tensor, dy: &Tensor, scale: f64) -> Result<Tensor> {
        backward("softmax_backward", y, dy, scale, false)
    }

    /// Gradient of `log_softmax_last` w.r.t. its input, from the output `logy` and output
    /// gradient `dy`: scale * (dy - exp(logy) * Σ_last dy).
    pub fn log_softmax_backward(logy: &Tensor, dy: &Tensor, scale: f64) -> Result<Tensor> {
        backward("log_softmax_backward", logy, dy, scale, true)
    }
}

fn check_rows(op: &'static str, x: &Tensor) -> Result<()> {
    check_float(op, x)?;
    if x.rank() == 0 {
        crate::bail!(op, "needs a tensor of rank >= 1, got a scalar");
    }
    Ok(())
}

/// A mask prepared for the kernel: the tensor, its per-row storage offsets after broadcasting to
/// the input's shape, and its last-dim stride (0 or 1).
pub(crate) struct PreparedMask {
    tensor: Tensor,
    row_offsets: Vec<usize>,
    stride: usize,
}

impl PreparedMask {
    /// The kernels' view of it.
    pub(crate) fn rows<T: WithDType>(&self, op: &'static str) -> Result<RowMask<'_, T>> {
        Ok(RowMask {
            data: self.tensor.cpu_storage(op)?.as_slice::<T>(op)?,
            row_offsets: &self.row_offsets,
            stride: self.stride,
        })
    }
}

pub(crate) fn prepare_mask(
    op: &'static str,
    mask: &Tensor,
    shape: &[usize],
) -> Result<PreparedMask> {
    let n = shape[shape.len() - 1];
    let mut tensor = mask.clone();
    let mut l = tensor.layout().broadcast_to(op, shape)?;
    let last = |l: &Layout| if n <= 1 { 1 } else { l.strides()[l.rank() - 1] };
    if last(&l) > 1 {
        // A mask strided along the last dim (a transposed view): copy it, in its own shape.
        tensor = tensor.copy()?;
        l = tensor.layout().broadcast_to(op, shape)?;
    }
    let r = l.rank();
    let rows = Layout::new(
        l.shape()[..r - 1].to_vec(),
        l.strides()[..r - 1].to_vec(),
        l.offset(),
    );
    Ok(PreparedMask {
        row_offsets: rows.offsets(),
        stride: last(&l),
        tensor,
    })
}

// ANCHOR: dispatch
fn forward(
    op: &'static str,
    x: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
    log: bool,
) -> Result<Tensor> {
    check_rows(op, x)?;
    if let Some(m) = mask {
        check_dtype(op, x.dtype(), m)?;
        m.layout().broadcast_to(op, x.shape())?;
    }
    #[cfg(feature = "cuda")]
    if crate::cuda::any_on_cuda(&[x]) || mask.is_some_and(|m| crate::cuda::any_on_cuda(&[m])) {
        let _p = crate::profiler::scope(op).io(&[x], x.shape());
        return crate::cuda::rows::softmax_last(op, x, mask, scale, log);
    }
    if is_half(x.dtype()) {
        let m32 = mask.map(|m| m.to_dtype(DType::F32)).transpose()?;
        return forward(op, &x.to_dtype(DType::F32)?, m32.as_ref(), scale, log)?
            .to_dtype(x.dtype());
    }
    let _p = crate::profiler::scope(op).io(&[x], x.shape());
    let x = x.contiguous()?;
    let mask = mask.map(|m| prepare_mask(op, m, x.shape())).transpose()?;
    let n = x.shape()[x.rank() - 1];
    fn run<T: VecFloat>(
        op: &'static str,
        s: &CpuStorage,
        x: &Tensor,
        mask: Option<&PreparedMask>,
        n: usize,
        scale: f64,
        log: bool,
    ) -> Result<CpuStorage> {
        let xs = contiguous_slice::<T>(op, s, x.layout())?;
        let m = mask.map(|pm| pm.rows::<T>(op)).transpose()?;
        let out = kernel::softmax_last(xs, n, m.as_ref(), T::from_f64(scale), log);
        Ok(CpuStorage::from_vec(out))
    }
    // The CUDA path returned above, so the storage is on the CPU here.
    let s = x.cpu_storage(op)?;
    let out = match x.dtype() {
        DType::F32 => run::<f32>(op, s, &x, mask.as_ref(), n, scale, log)?,
        DType::F64 => run::<f64>(op, s, &x, mask.as_ref(), n, scale, log)?,
        dtype => return Err(Error::UnsupportedDType { op, dtype }),
    };
    Ok(Tensor::from_cpu(out, x.shape()))
}
// ANCHOR_END: dispatch

fn backward(op: &'static str, y: &Tensor, dy: &Tensor, scale: f64, log: bool) -> Result<Tensor> {
    check_rows(op, y)?;
    check_same(op, y, dy)?;
    #[cfg(feature = "cuda")]
    if crate::cuda::any_on_cuda(&[y, dy]) {
        let _p = crate::profiler::scope(op).io(&[y, dy], y.shape());
        return crate::cuda::rows::softmax_backward(op, y, dy, scale, log);
    }
    if is_half(y.dtype()) {
        let (y32, dy32) = (y.to_dtype(DType::F32)?, dy.to_dtype(DType::F32)?);
        return backward(op, &y32, &dy32, scale, log)?.to_dtype(y.dtype());
    }
    let _p = crate::profiler::scope(op).io(&[y, dy], y.shape());
    let (y, dy) = (y.contiguous()?, dy.contiguous()?);
    let n = y.shape()[y.rank() - 1];
    fn run<T: VecFloat>(
        op: &'static str,
        s: &CpuStorage,
        y: &Tensor,
        dy: &Tensor,
        n: usize,
        scale: f64,
        log: bool,
    ) -> Result<CpuStorage> {
        let ys = contiguous_slice::<T>(op, s, y.layout())?;
        let ds = contiguous_slice::<T>(op, dy.cpu_storage(op)?, dy.layout())?;
        let out = kernel::softmax_backward(ys, ds, n, T::from_f64(scale), log);
        Ok(CpuStorage::from_vec(out))
    }
    // The CUDA path returned above, so the storage is on the CPU here.
    let s = y.cpu_storage(op)?;
    let out = match y.dtype() {
        DType::F32 => run::<f32>(op, s, &y, &dy, n, scale, log)?,
        DType::F64 => run::<f64>(op, s, &y, &dy, n, scale, log)?,
        dtype => return Err(Error::UnsupportedDType { op, dtype }),
    };
    Ok(Tensor::from_cpu(out, y.shape()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Device;

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        crate::testing::randn(shape, 1.0, DType::F64, seed)
    }

    /// softmax(x * scale + mask) (or its log) over the last dim, in f64, element by element.
    fn reference(x: &Tensor, mask: Option<&Tensor>, scale: f64, log: bool) -> Vec<f64> {
        let n = *x.shape().last().unwrap();
        let xv = x.to_vec_f64().unwrap();
        let mv = match mask {
            Some(m) => m.broadcast_to(x.shape()).unwrap().to_vec_f64().unwrap(),
            None => vec![0.0; xv.len()],
        };
        let mut out = vec![0.0; xv.len()];
        for r in 0..xv.len() / n.max(1) {
            let z: Vec<f64> = (0..n)
                .map(|i| xv[r * n + i] * scale + mv[r * n + i])
                .collect();
            let mx = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = z.iter().map(|v| (v - mx).exp()).sum();
            for i in 0..n {
                out[r * n + i] = match (log, mx == f64::NEG_INFINITY) {
                    (false, true) => 0.0,
                    (true, true) => f64::NEG_INFINITY,
                    (false, false) => (z[i] - mx).exp() / s,
                    (true, false) => z[i] - mx - s.ln(),
                };
            }
        }
        out
    }

    fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let ok = (g == w) || (g - w).abs() <= tol * (1.0 + w.abs());
            assert!(ok, "{what}: element {i}: got {g}, want {w}");
        }
    }

    /// A mask of the given shape with -inf at about a quarter of its entries and small values
    /// elsewhere.
    fn mask(shape: &[usize], seed: u64) -> Tensor {
        let v: Vec<f64> = randn(shape, seed)
            .to_vec_f64()
            .unwrap()
            .into_iter()
            .map(|u| if u > 0.7 { f64::NEG_INFINITY } else { u * 0.5 })
            .collect();
        Tensor::from_vec(v, shape).unwrap()
    }

    #[test]
    fn forward_matches_reference_with_broadcast_masks() {
        let cases: &[(&[usize], Option<&[usize]>)] = &[
            (&[3, 5, 7], None),
            (&[3, 5, 7], Some(&[3, 1, 7])),
            (&[2, 3, 4, 9], Some(&[2, 1, 1, 9])),
            (&[4, 6], Some(&[4, 1])),
            (&[4, 6], Some(&[4, 6])),
            (&[5, 1], Some(&[1])),
            (&[6], Some(&[6])),
            (&[0, 4], Some(&[4])),
            (&[3, 0], None),
            (&[40, 1000], Some(&[40, 1000])), // large enough for the parallel path
        ];
        for (seed, &(shape, mshape)) in cases.iter().enumerate() {
            let x = randn(shape, seed as u64);
            let m = mshape.map(|s| mask(s, 100 + seed as u64));
            for log in [false, true] {
                let want = reference(&x, m.as_ref(), 0.37, log);
                for dtype in [DType::F64, DType::F32] {
                    let xd = x.to_dtype(dtype).unwrap();
                    let md = m.as_ref().map(|m| m.to_dtype(dtype).unwrap());
                    let y = if log {
                        xd.log_softmax_last(md.as_ref(), 0.37)
                    } else {
                        xd.softmax_last(md.as_ref(), 0.37)
                    }
                    .unwrap();
                    assert_eq!(y.shape(), shape);
                    assert_eq!(y.dtype(), dtype);
                    let tol = if dtype == DType::F64 { 1e-12 } else { 2e-6 };
                    let what = format!("{shape:?} mask {mshape:?} log {log} {dtype}");
                    assert_close(&y.to_vec_f64().unwrap(), &want, tol, &what);
                }
            }
        }
    }

    #[test]
    fn fully_masked_rows_give_zeros_not_nan() {
        let x = randn(&[2, 3, 5], 1).to_dtype(DType::F32).unwrap();
        let mut mv = vec![0f32; 2 * 5];
        mv[5..].fill(f32::NEG_INFINITY); // batch 1 fully masked
        let m = Tensor::from_vec(mv, &[2, 1, 5]).unwrap();
        let y = x
            .softmax_last(Some(&m), 1.0)
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        assert!(y[15..].iter().all(|&v| v == 0.0), "{y:?}");
        let s: f32 = y[..5].iter().sum();
        assert!((s - 1.0).abs() < 1e-6);
        let ly = x.log_softmax_last(Some(&m), 1.0).unwrap();
        let lv = ly.to_vec::<f32>().unwrap();
        assert!(lv[15..].iter().all(|&v| v == f32::NEG_INFINITY));
        // The backward of such a row is finite.
        let dy = Tensor::ones(&[2, 3, 5], DType::F32, Device::Cpu).unwrap();
        let dx = Tensor::log_softmax_backward(&ly, &dy, 1.0).unwrap();
        assert!(dx.to_vec::<f32>().unwrap().iter().all(|v| v.is_finite()));
    }

    #[test]
    fn non_contiguous_inputs_and_masks() {
        let base = randn(&[6, 5, 8], 3);
        let x = base.transpose(0, 2).unwrap().narrow(1, 1, 3).unwrap(); // [8, 3, 6]
        assert!(!x.is_contiguous());
        // A transposed mask (last-dim stride > 1) and a broadcast view of one.
        let mt = mask(&[6, 3], 4).t().unwrap(); // [3, 6], last-dim stride 3
        let mb = mask(&[3, 1], 5).broadcast_to(&[8, 3, 6]).unwrap();
        let x32 = base
            .to_dtype(DType::F32)
            .unwrap()
            .transpose(0, 2)
            .unwrap()
            .narrow(1, 1, 3)
            .unwrap();
        for m in [&mt, &mb] {
            let m32 = m.to_dtype(DType::F32).unwrap();
            for log in [false, true] {
                let want = reference(&x, Some(m), 1.3, log);
                let run = |x: &Tensor, m: &Tensor| {
                    if log {
                        x.log_softmax_last(Some(m), 1.3)
                    } else {
                        x.softmax_last(Some(m), 1.3)
                    }
                    .unwrap()
                    .to_vec_f64()
                    .unwrap()
                };
                assert_close(&run(&x32, &m32), &want, 2e-6, "strided f32");
                assert_close(&run(&x, m), &want, 1e-12, "strided f64");
            }
        }
    }

    #[test]
    fn half_precision_computes_in_f32() {
        let x = randn(&[4, 33], 6);
        let m = mask(&[33], 7);
        for dtype in [DType::F16, DType::BF16] {
            let want = reference(
                &x.to_dtype(dtype).unwrap(),
                Some(&m.to_dtype(dtype).unwrap()),
                0.5,
                false,
            );
            let y = x
                .to_dtype(dtype)
                .unwrap()
                .softmax_last(Some(&m.to_dtype(dtype).unwrap()), 0.5)
                .unwrap();
            assert_eq!(y.dtype(), dtype);
            assert_close(&y.to_vec_f64().unwrap(), &want, 1e-2, "half");
        }
    }

    /// d/dx Σ w·f(x) by central differences, f = softmax or log-softmax with a mask.
    fn numeric_grad(x: &Tensor, m: &Tensor, w: &[f64], scale: f64, log: bool) -> Vec<f64> {
        let xv = x.to_vec_f64().unwrap();
        let f = |v: &[f64]| -> f64 {
            let t = Tensor::from_vec(v.to_vec(), x.shape()).unwrap();
            let y = if log {
                t.log_softmax_last(Some(m), scale)
            } else {
                t.softmax_last(Some(m), scale)
            };
            // Masked outputs of log-softmax are -inf whatever x is; they do not take part.
            let y = y.unwrap().to_vec_f64().unwrap();
            y.iter()
                .zip(w)
                .filter(|(a, _)| a.is_finite())
                .map(|(a, b)| a * b)
                .sum()
        };
        let h = 1e-6;
        (0..xv.len())
            .map(|i| {
                let (mut p, mut q) = (xv.clone(), xv.clone());
                p[i] += h;
                q[i] -= h;
                (f(&p) - f(&q)) / (2.0 * h)
            })
            .collect()
    }

    #[test]
    fn backward_matches_finite_differences() {
        let x = randn(&[3, 2, 5], 8);
        // One -inf column so masked entries carry zero gradient (but no row is fully masked).
        let mut mv = vec![0.0f64; 5];
        mv[2] = f64::NEG_INFINITY;
        let m = Tensor::from_vec(mv, &[5]).unwrap();
        // dy is zero where the output is masked (as autograd would give through a sum over finite
        // outputs).
        let wv: Vec<f64> = randn(&[3, 2, 5], 9)
            .to_vec_f64()
            .unwrap()
            .into_iter()
            .enumerate()
            .map(|(i, v)| if i % 5 == 2 { 0.0 } else { v })
            .collect();
        let w = Tensor::from_vec(wv, &[3, 2, 5]).unwrap();
        for log in [false, true] {
            let y = if log {
                x.log_softmax_last(Some(&m), 0.8)
            } else {
                x.softmax_last(Some(&m), 0.8)
            }
            .unwrap();
            let dx = if log {
                Tensor::log_softmax_backward(&y, &w, 0.8)
            } else {
                Tensor::softmax_backward(&y, &w, 0.8)
            }
            .unwrap();
            let want = numeric_grad(&x, &m, &w.to_vec_f64().unwrap(), 0.8, log);
            assert_close(&dx.to_vec_f64().unwrap(), &want, 1e-6, "grad");
            // f32 and a transposed dy agree with the f64 result.
            let wt = w
                .to_dtype(DType::F32)
                .unwrap()
                .transpose(0, 1)
                .unwrap()
                .copy()
                .unwrap();
            let wt = wt.transpose(0, 1).unwrap();
            let y32 = y.to_dtype(DType::F32).unwrap();
            let dx32 = if log {
                Tensor::log_softmax_backward(&y32, &wt, 0.8)
            } else {
                Tensor::softmax_backward(&y32, &wt, 0.8)
            }
            .unwrap();
            assert_close(
                &dx32.to_vec_f64().unwrap(),
                &dx.to_vec_f64().unwrap(),
                1e-5,
                "f32 grad",
            );
        }
    }

    #[test]
    fn errors_name_the_op() {
        let x = Tensor::zeros(&[2, 3], DType::F32, Device::Cpu).unwrap();
        let bad_mask = Tensor::zeros(&[2, 2], DType::F32, Device::Cpu).unwrap();
        let e = x
            .softmax_last(Some(&bad_mask), 1.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("softmax_last") && e.contains("[2, 2]"), "{e}");
        let m64 = Tensor::zeros(&[3], DType::F64, Device::Cpu).unwrap();
        let e = x.log_softmax_last(Some(&m64), 1.0).unwrap_err().to_string();
        assert!(e.contains("log_softmax_last"), "{e}");
        let i = Tensor::zeros(&[2, 3], DType::I64, Device::Cpu).unwrap();
        assert!(i
            .softmax_last(None, 1.0)
            .unwrap_err()
            .to_string()
            .contains("softmax_last"));
        let s = Tensor::scalar(1.0f32);
        assert!(s.softmax_last(None, 1.0).is_err());
        let dy = Tensor::zeros(&[3, 2], DType::F32, Device::Cpu).unwrap();
        let e = Tensor::softmax_backward(&x, &dy, 1.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("softmax_backward"), "{e}");
        let e = Tensor::log_softmax_backward(&x, &x.to_dtype(DType::F64).unwrap(), 1.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("log_softmax_backward"), "{e}");
    }
}
