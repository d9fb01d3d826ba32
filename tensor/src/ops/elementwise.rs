//! Elementwise ops with numpy broadcasting: arithmetic (`add`, `sub`, `mul`, `div`, `maximum`,
//! `minimum`), comparisons (`eq` ... `ge`, giving a u8 tensor of 1/0), their scalar forms,
//! `affine`, `powf`, the float unary functions (`exp`, `log`, `tanh`, `erf`, ...), `where_cond`
//! and `masked_fill`.
//!
//! Every result is a fresh contiguous tensor of the broadcast shape. Both operands of a binary op
//! must have the same dtype. f32/f64/i64/u8 compute natively (integers wrap on overflow and
//! divide truncating toward zero; a zero integer divisor is an error); f16/bf16 are widened to f32,
//! computed and rounded back. Comparisons, `where_cond` and `masked_fill` only select or compare
//! values and run natively on every dtype. Kernels: `crate::cpu::elementwise`.

use crate::cpu::elementwise::{self as kernel, Arith, BinaryOp, CmpOp, FloatKernel, UnaryOp};
use crate::{
    broadcast_shapes, map_cpu_storage, CpuStorage, DType, Error, Layout, Result, Storage, Tensor,
    WithDType,
};

fn same_dtype(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype() != b.dtype() {
        return Err(Error::DTypeMismatch {
            op,
            expected: a.dtype(),
            got: b.dtype(),
        });
    }
    Ok(())
}

/// `v` as a `T`, exactly: integer dtypes reject fractional or out-of-range scalars.
pub(crate) fn exact_scalar<T: WithDType>(op: &'static str, v: f64) -> Result<T> {
    let t = T::from_f64(v);
    if !T::DTYPE.is_float() && t.to_f64() != v {
        crate::bail!(op, "scalar {v} is not representable in {}", T::DTYPE);
    }
    Ok(t)
}

fn binary_cpu<T: Arith>(
    op: BinaryOp,
    (a, la): (&CpuStorage, &Layout),
    (b, lb): (&CpuStorage, &Layout),
    rhs_layout: &Layout,
) -> Result<CpuStorage> {
    let name = op.name();
    let (x, y) = (a.as_slice::<T>(name)?, b.as_slice::<T>(name)?);
    if op == BinaryOp::Div && !T::DTYPE.is_float() {
        let zero = T::from_f64(0.0);
        if kernel::any_strided(y, rhs_layout, |v| v == zero) {
            crate::bail!(name, "integer division by zero ({} divisor)", T::DTYPE);
        }
    }
    Ok(CpuStorage::from_vec(kernel::binary(op, x, la, y, lb)))
}

fn scalar_cpu<T: Arith>(op: BinaryOp, s: &CpuStorage, l: &Layout, v: f64) -> Result<CpuStorage> {
    let name = op.scalar_name();
    let v = exact_scalar::<T>(name, v)?;
    if op == BinaryOp::Div && !T::DTYPE.is_float() && v == T::from_f64(0.0) {
        crate::bail!(name, "integer division by zero");
    }
    let x = s.as_slice::<T>(name)?;
    Ok(CpuStorage::from_vec(kernel::binary_scalar(op, x, l, v)))
}

fn affine_cpu<T: Arith>(s: &CpuStorage, l: &Layout, mul: f64, add: f64) -> Result<CpuStorage> {
    let (m, a) = (
        exact_scalar::<T>("affine", mul)?,
        exact_scalar("affine", add)?,
    );
    let x = s.as_slice::<T>("affine")?;
    Ok(CpuStorage::from_vec(kernel::affine(x, l, m, a)))
}

fn unary_cpu<T: FloatKernel>(op: UnaryOp, s: &CpuStorage, l: &Layout) -> Result<CpuStorage> {
    let x = s.as_slice::<T>(op.name())?;
    Ok(CpuStorage::from_vec(kernel::unary(op, x, l)))
}

fn powf_cpu<T: FloatKernel>(s: &CpuStorage, l: &Layout, e: f64) -> Result<CpuStorage> {
    let x = s.as_slice::<T>("powf")?;
    Ok(CpuStorage::from_vec(kernel::powf(x, l, T::from_f64(e))))
}

fn compare_cpu<T: WithDType>(
    op: CmpOp,
    (a, la): (&[T], &Layout),
    (b, lb): (&CpuStorage, &Layout),
) -> Result<CpuStorage> {
    let y = b.as_slice::<T>(op.name())?;
    Ok(CpuStorage::from_vec(kernel::compare(op, a, la, y, lb)))
}

fn where_cpu<T: WithDType + Default>(
    cond: (&[u8], &Layout),
    (t, lt): (&[T], &Layout),
    (f, lf): (&CpuStorage, &Layout),
) -> Result<CpuStorage> {
    let f = f.as_slice::<T>("where_cond")?;
    Ok(CpuStorage::from_vec(kernel::where_cond(
        cond,
        (t, lt),
        (f, lf),
    )))
}

fn masked_fill_cpu<T: WithDType + Default>(
    (x, lx): (&[T], &Layout),
    (m, lm): (&[u8], &Layout),
    value: f64,
) -> CpuStorage {
    CpuStorage::from_vec(kernel::masked_fill(x, lx, m, lm, T::from_f64(value)))
}

impl Tensor {
    // ---- binary arithmetic ----------------------------------------------------------------

    /// `self + rhs` with broadcasting.
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Add)
    }
    /// `self - rhs` with broadcasting.
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Sub)
    }
    /// `self * rhs` with broadcasting.
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Mul)
    }
    /// `self / rhs` with broadcasting; integers truncate toward zero and reject a zero divisor.
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Div)
    }
    /// Elementwise max (NaN if either side is NaN, as torch.maximum).
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Maximum)
    }
    /// Elementwise min (NaN if either side is NaN, as torch.minimum).
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Minimum)
    }

    /// The checks and layouts every broadcasting pair op starts with: same dtype, the broadcast
    /// shape, and both operands' layouts stretched to it.
    fn broadcast_pair(
        &self,
        rhs: &Tensor,
        name: &'static str,
    ) -> Result<(Vec<usize>, Layout, Layout)> {
        same_dtype(name, self, rhs)?;
        let shape = broadcast_shapes(name, self.shape(), rhs.shape())?;
        let la = self.layout().broadcast_to(name, &shape)?;
        let lb = rhs.layout().broadcast_to(name, &shape)?;
        Ok((shape, la, lb))
    }

    fn binary_op(&self, rhs: &Tensor, op: BinaryOp) -> Result<Tensor> {
        let name = op.name();
        let (shape, la, lb) = self.broadcast_pair(rhs, name)?;
        let _p = crate::profiler::scope(name).io(&[self, rhs], &shape);
        let out = match (self.storage(), rhs.storage()) {
            (Storage::Cpu(a), Storage::Cpu(b)) => {
                let (a, b, lr) = ((a, &la), (b, &lb), rhs.layout());
                match self.dtype() {
                    DType::F32 => binary_cpu::<f32>(op, a, b, lr)?,
                    DType::F64 => binary_cpu::<f64>(op, a, b, lr)?,
                    DType::I64 => binary_cpu::<i64>(op, a, b, lr)?,
                    DType::U8 => binary_cpu::<u8>(op, a, b, lr)?,
                    DType::F16 | DType::BF16 => {
                        let rhs = rhs.to_dtype(DType::F32)?;
                        return self.via_f32(|t| t.binary_op(&rhs, op));
                    }
                }
            }
            #[cfg(feature = "cuda")]
            _ => return crate::cuda::elementwise::binary(op, (self, &la), (rhs, &lb), &shape),
        };
        Ok(Tensor::from_cpu(out, &shape))
    }

    // ---- comparisons ----------------------------------------------------------------------

    /// `self == rhs` as a u8 tensor of 1/0, with broadcasting.
    pub fn eq(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare_op(rhs, CmpOp::Eq)
    }
    /// `self != rhs` as a u8 tensor of 1/0, with broadcasting.
    pub fn ne(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare_op(rhs, CmpOp::Ne)
    }
    /// `self < rhs` as a u8 tensor of 1/0, with broadcasting.
    pub fn lt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare_op(rhs, CmpOp::Lt)
    }
    /// `self <= rhs` as a u8 tensor of 1/0, with broadcasting.
    pub fn le(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare_op(rhs, CmpOp::Le)
    }
    /// `self > rhs` as a u8 tensor of 1/0, with broadcasting.
    pub fn gt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare_op(rhs, CmpOp::Gt)
    }
    /// `self >= rhs` as a u8 tensor of 1/0, with broadcasting.
    pub fn ge(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare_op(rhs, CmpOp::Ge)
    }

    fn compare_op(&self, rhs: &Tensor, op: CmpOp) -> Result<Tensor> {
        let name = op.name();
        let (shape, la, lb) = self.broadcast_pair(rhs, name)?;
        let _p = crate::profiler::scope(name).io(&[self, rhs], &shape);
        let out = match (self.storage(), rhs.storage()) {
            (Storage::Cpu(a), Storage::Cpu(b)) => {
                map_cpu_storage!(a, x => compare_cpu(op, (x.as_slice(), &la), (b, &lb))?)
            }
            #[cfg(feature = "cuda")]
            _ => return crate::cuda::elementwise::compare(op, (self, &la), (rhs, &lb), &shape),
        };
        Ok(Tensor::from_cpu(out, &shape))
    }

    // ---- scalar forms ---------------------------------------------------------------------

    /// `self + v`. Integer tensors need an integral `v` that fits the dtype.
    pub fn add_scalar(&self, v: f64) -> Result<Tensor> {
        self.scalar_op(BinaryOp::Add, v)
    }
    /// `self - v`.
    pub fn sub_scalar(&self, v: f64) -> Result<Tensor> {
        self.scalar_op(BinaryOp::Sub, v)
    }
    /// `self * v`.
    pub fn mul_scalar(&self, v: f64) -> Result<Tensor> {
        self.scalar_op(BinaryOp::Mul, v)
    }
    /// `self / v` (integers: truncating, `v` nonzero).
    pub fn div_scalar(&self, v: f64) -> Result<Tensor> {
        self.scalar_op(BinaryOp::Div, v)
    }
    /// `max(self, v)` elementwise (NaN propagates).
    pub fn maximum_scalar(&self, v: f64) -> Result<Tensor> {
        self.scalar_op(BinaryOp::Maximum, v)
    }
    /// `min(self, v)` elementwise (NaN propagates).
    pub fn minimum_scalar(&self, v: f64) -> Result<Tensor> {
        self.scalar_op(BinaryOp::Minimum, v)
    }

    /// Runs `f` on the f32 widening of an f16/bf16 tensor and rounds the result back.
    fn via_f32(&self, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        f(&self.to_dtype(DType::F32)?)?.to_dtype(self.dtype())
    }

    fn scalar_op(&self, op: BinaryOp, v: f64) -> Result<Tensor> {
        let name = op.scalar_name();
        let _p = crate::profiler::scope(name);
        let l = self.layout();
        let out = match self.storage() {
            Storage::Cpu(s) => match self.dtype() {
                DType::F32 => scalar_cpu::<f32>(op, s, l, v)?,
                DType::F64 => scalar_cpu::<f64>(op, s, l, v)?,
                DType::I64 => scalar_cpu::<i64>(op, s, l, v)?,
                DType::U8 => scalar_cpu::<u8>(op, s, l, v)?,
                DType::F16 | DType::BF16 => return self.via_f32(|t| t.scalar_op(op, v)),
            },
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => return crate::cuda::elementwise::scalar(op, self, v),
        };
        Ok(Tensor::from_cpu(out, self.shape()))
    }

    /// `self * mul + add` in one pass. Integer tensors need integral `mul` and `add`.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Tensor> {
        let _p = crate::profiler::scope("affine");
        let l = self.layout();
        let out = match self.storage() {
            Storage::Cpu(s) => match self.dtype() {
                DType::F32 => affine_cpu::<f32>(s, l, mul, add)?,
                DType::F64 => affine_cpu::<f64>(s, l, mul, add)?,
                DType::I64 => affine_cpu::<i64>(s, l, mul, add)?,
                DType::U8 => affine_cpu::<u8>(s, l, mul, add)?,
                DType::F16 | DType::BF16 => return self.via_f32(|t| t.affine(mul, add)),
            },
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => return crate::cuda::elementwise::affine(self, mul, add),
        };
        Ok(Tensor::from_cpu(out, self.shape()))
    }

    /// `self ^ e` elementwise (float dtypes).
    pub fn powf(&self, e: f64) -> Result<Tensor> {
        let _p = crate::profiler::scope("powf");
        let l = self.layout();
        let out = match self.storage() {
            Storage::Cpu(s) => match self.dtype() {
                DType::F32 => powf_cpu::<f32>(s, l, e)?,
                DType::F64 => powf_cpu::<f64>(s, l, e)?,
                DType::F16 | DType::BF16 => return self.via_f32(|t| t.powf(e)),
                dtype @ (DType::I64 | DType::U8) => {
                    return Err(Error::UnsupportedDType { op: "powf", dtype })
                }
            },
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => return crate::cuda::elementwise::powf(self, e),
        };
        Ok(Tensor::from_cpu(out, self.shape()))
    }

    // ---- unary float functions ------------------------------------------------------------

    /// `-self`.
    pub fn neg(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Neg)
    }
    /// `e^self` (f32 uses the vectorised polynomial exp).
    pub fn exp(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Exp)
    }
    /// Natural log.
    pub fn log(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Log)
    }
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Sqrt)
    }
    /// `1 / sqrt(self)`.
    pub fn rsqrt(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Rsqrt)
    }
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Tanh)
    }
    pub fn erf(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Erf)
    }
    /// `max(self, 0)`; NaN stays NaN.
    pub fn relu(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Relu)
    }
    /// `1 / (1 + e^-self)`.
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Sigmoid)
    }
    pub fn abs(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Abs)
    }
    /// `self * self`.
    pub fn sqr(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Sqr)
    }
    /// `1 / self`.
    pub fn recip(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Recip)
    }

    fn unary_op(&self, op: UnaryOp) -> Result<Tensor> {
        let name = op.name();
        let _p = crate::profiler::scope(name);
        let l = self.layout();
        let out = match self.storage() {
            Storage::Cpu(s) => match self.dtype() {
                DType::F32 => unary_cpu::<f32>(op, s, l)?,
                DType::F64 => unary_cpu::<f64>(op, s, l)?,
                DType::F16 | DType::BF16 => return self.via_f32(|t| t.unary_op(op)),
                dtype @ (DType::I64 | DType::U8) => {
                    return Err(Error::UnsupportedDType { op: name, dtype })
                }
            },
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => return crate::cuda::elementwise::unary(op, self),
        };
        Ok(Tensor::from_cpu(out, self.shape()))
    }

    // ---- selection ------------------------------------------------------------------------

    /// `self ? on_true : on_false` elementwise, `self` a u8 condition (nonzero is true); the
    /// three broadcast together and `on_true`/`on_false` share a dtype, which the result has.
    pub fn where_cond(&self, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        const OP: &str = "where_cond";
        if self.dtype() != DType::U8 {
            return Err(Error::DTypeMismatch {
                op: OP,
                expected: DType::U8,
                got: self.dtype(),
            });
        }
        same_dtype(OP, on_true, on_false)?;
        let shape = broadcast_shapes(OP, self.shape(), on_true.shape())?;
        let shape = broadcast_shapes(OP, &shape, on_false.shape())?;
        let _p = crate::profiler::scope(OP);
        let lc = self.layout().broadcast_to(OP, &shape)?;
        let lt = on_true.layout().broadcast_to(OP, &shape)?;
        let lf = on_false.layout().broadcast_to(OP, &shape)?;
        let out = match (self.storage(), on_true.storage(), on_false.storage()) {
            (Storage::Cpu(c), Storage::Cpu(t), Storage::Cpu(f)) => {
                let c = (c.as_slice::<u8>(OP)?, &lc);
                map_cpu_storage!(t, t => where_cpu(c, (t.as_slice(), &lt), (f, &lf))?)
            }
            #[cfg(feature = "cuda")]
            _ => {
                let (c, t, f) = ((self, &lc), (on_true, &lt), (on_false, &lf));
                return crate::cuda::elementwise::where_cond(c, t, f, &shape);
            }
        };
        Ok(Tensor::from_cpu(out, &shape))
    }

    /// `self` with `value` (converted to the dtype; integers truncate) wherever `mask` (u8,
    /// broadcastable to `self`'s shape) is nonzero.
    pub fn masked_fill(&self, mask: &Tensor, value: f64) -> Result<Tensor> {
        const OP: &str = "masked_fill";
        if mask.dtype() != DType::U8 {
            return Err(Error::DTypeMismatch {
                op: OP,
                expected: DType::U8,
                got: mask.dtype(),
            });
        }
        let lm = mask.layout().broadcast_to(OP, self.shape())?;
        let _p = crate::profiler::scope(OP);
        let out = match (self.storage(), mask.storage()) {
            (Storage::Cpu(s), Storage::Cpu(m)) => {
                let m = (m.as_slice::<u8>(OP)?, &lm);
                map_cpu_storage!(s, x => masked_fill_cpu((x.as_slice(), self.layout()), m, value))
            }
            #[cfg(feature = "cuda")]
            _ => return crate::cuda::elementwise::masked_fill(self, (mask, &lm), value),
        };
        Ok(Tensor::from_cpu(out, self.shape()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Device, Rng};

    fn rand(shape: &[usize], dtype: DType, rng: &mut Rng) -> Tensor {
        Tensor::randn(shape, 0.0, 1.0, dtype, Device::Cpu, rng).unwrap()
    }

    /// A tensor of `shape` made four ways: contiguous, a transposed view, a narrowed view and a
    /// broadcast view (the last dim stretched from 1).
    fn variants(shape: &[usize], dtype: DType, rng: &mut Rng) -> Vec<Tensor> {
        let mut v = vec![rand(shape, dtype, rng)];
        let r = shape.len();
        if r >= 2 {
            let mut s = shape.to_vec();
            s.swap(r - 2, r - 1);
            v.push(rand(&s, dtype, rng).t().unwrap());
        }
        if r >= 1 {
            let mut s = shape.to_vec();
            s[0] += 2;
            v.push(rand(&s, dtype, rng).narrow(0, 1, shape[0]).unwrap());
            let mut s = shape.to_vec();
            s[r - 1] = 1;
            v.push(rand(&s, dtype, rng).broadcast_to(shape).unwrap());
        }
        v
    }

    fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
        let mut idx = vec![0; shape.len()];
        for d in (0..shape.len()).rev() {
            idx[d] = i % shape[d];
            i /= shape[d];
        }
        idx
    }

    /// Row-major index into a tensor of `shape` of the element broadcast to output index `out`.
    fn source_index(out: &[usize], shape: &[usize]) -> usize {
        let extra = out.len() - shape.len();
        let pick = |(d, &n): (usize, &usize)| if n == 1 { 0 } else { out[extra + d] };
        shape
            .iter()
            .enumerate()
            .fold(0, |acc, (d, n)| acc * n + pick((d, n)))
    }

    /// `f` over the broadcast of `ts`, computed naively in f64.
    fn reference(ts: &[&Tensor], f: impl Fn(&[f64]) -> f64) -> (Vec<usize>, Vec<f64>) {
        let shape = ts.iter().fold(vec![], |s, t| {
            broadcast_shapes("ref", &s, t.shape()).unwrap()
        });
        let vals: Vec<Vec<f64>> = ts.iter().map(|t| t.to_vec_f64().unwrap()).collect();
        let n: usize = shape.iter().product();
        let out = (0..n)
            .map(|i| {
                let idx = unravel(i, &shape);
                let args: Vec<f64> = ts
                    .iter()
                    .zip(&vals)
                    .map(|(t, v)| v[source_index(&idx, t.shape())])
                    .collect();
                f(&args)
            })
            .collect();
        (shape, out)
    }

    fn assert_close(got: &Tensor, want: &(Vec<usize>, Vec<f64>), tol: f64, what: &str) {
        assert_eq!(got.shape(), &want.0[..], "{what}: shape");
        assert!(got.is_contiguous(), "{what}: output not contiguous");
        let g = got.to_vec_f64().unwrap();
        for (i, (&g, &w)) in g.iter().zip(&want.1).enumerate() {
            let ok = if w.is_nan() {
                g.is_nan()
            } else {
                g == w || (g - w).abs() <= tol * w.abs().max(1.0)
            };
            assert!(ok, "{what}: element {i}: got {g}, want {w}");
        }
    }

    type BinFn = fn(&Tensor, &Tensor) -> Result<Tensor>;
    type Ref2 = fn(f64, f64) -> f64;

    fn binary_cases() -> Vec<(&'static str, BinFn, Ref2)> {
        vec![
            ("add", Tensor::add, |x, y| x + y),
            ("sub", Tensor::sub, |x, y| x - y),
            ("mul", Tensor::mul, |x, y| x * y),
            ("div", Tensor::div, |x, y| x / y),
            ("maximum", Tensor::maximum, f64::max),
            ("minimum", Tensor::minimum, f64::min),
        ]
    }

    const SHAPE_PAIRS: &[(&[usize], &[usize])] = &[
        (&[3, 4], &[3, 4]),
        (&[2, 3, 4], &[4]),
        (&[2, 1, 4], &[3, 1]),
        (&[4, 1, 3], &[1, 5, 1]),
        (&[5], &[]),
        (&[], &[]),
        (&[1], &[1, 1]),
        (&[0, 3], &[3]),
        (&[2, 0], &[1, 0]),
        // Large enough for the parallel path.
        (&[64, 600], &[600]),
        (&[300, 130], &[300, 1]),
    ];

    #[test]
    fn binary_ops_match_reference_on_views_and_broadcasts() {
        let mut rng = Rng::new(1);
        for dtype in [DType::F32, DType::F64] {
            let tol = if dtype == DType::F32 { 1e-6 } else { 1e-14 };
            for &(sa, sb) in SHAPE_PAIRS {
                let (va, vb) = (variants(sa, dtype, &mut rng), variants(sb, dtype, &mut rng));
                for (i, a) in va.iter().enumerate() {
                    let b = &vb[i % vb.len()];
                    for (name, op, f) in binary_cases() {
                        let what = format!("{name} {dtype} {sa:?}#{i} {sb:?}");
                        let want = reference(&[a, b], |v| f(v[0], v[1]));
                        assert_close(&op(a, b).unwrap(), &want, tol, &what);
                        // And with the operands swapped (the broadcast side moves).
                        let want = reference(&[b, a], |v| f(v[0], v[1]));
                        assert_close(&op(b, a).unwrap(), &want, tol, &what);
                    }
                }
            }
        }
    }

    #[test]
    fn half_dtypes_compute_in_f32_and_round_back() {
        let mut rng = Rng::new(2);
        for dtype in [DType::F16, DType::BF16] {
            let a = rand(&[3, 5], dtype, &mut rng);
            let b = rand(&[5], dtype, &mut rng);
            for (name, op, f) in binary_cases() {
                let got = op(&a, &b).unwrap();
                assert_eq!(got.dtype(), dtype);
                let want = reference(&[&a, &b], |v| f(v[0], v[1]));
                assert_close(&got, &want, 1e-2, name);
            }
            let got = a.exp().unwrap();
            assert_eq!(got.dtype(), dtype);
            assert_close(&got, &reference(&[&a], |v| v[0].exp()), 1e-2, "exp");
            let got = a.mul_scalar(3.0).unwrap();
            assert_close(&got, &reference(&[&a], |v| v[0] * 3.0), 1e-2, "mul_scalar");
        }
    }

    #[test]
    fn integer_ops_wrap_and_truncate() {
        let a = Tensor::from_vec(vec![i64::MAX, -7, 7, 5], &[4]).unwrap();
        let b = Tensor::from_vec(vec![1i64, 2, -2, 5], &[4]).unwrap();
        let v = |t: Result<Tensor>| t.unwrap().to_vec::<i64>().unwrap();
        assert_eq!(v(a.add(&b)), vec![i64::MIN, -5, 5, 10]);
        assert_eq!(v(a.sub(&b)), vec![i64::MAX - 1, -9, 9, 0]);
        assert_eq!(v(a.mul(&b)), vec![i64::MAX, -14, -14, 25]);
        assert_eq!(v(a.div(&b)), vec![i64::MAX, -3, -3, 1]);
        assert_eq!(v(a.maximum(&b)), vec![i64::MAX, 2, 7, 5]);
        assert_eq!(v(a.minimum(&b)), vec![1, -7, -2, 5]);
        // Broadcast against a column, through a transposed view.
        let m = Tensor::from_vec(vec![1i64, 2, 3, 4, 5, 6], &[3, 2]).unwrap();
        let col = Tensor::from_vec(vec![10i64, 20], &[2, 1]).unwrap();
        assert_eq!(v(m.t().unwrap().add(&col)), vec![11, 13, 15, 22, 24, 26]);

        let x = Tensor::from_vec(vec![250u8, 3, 10], &[3]).unwrap();
        let y = Tensor::from_vec(vec![10u8, 5, 3], &[3]).unwrap();
        let u = |t: Result<Tensor>| t.unwrap().to_vec::<u8>().unwrap();
        assert_eq!(u(x.add(&y)), vec![4, 8, 13]);
        assert_eq!(u(x.sub(&y)), vec![240, 254, 7]);
        assert_eq!(u(x.div(&y)), vec![25, 0, 3]);
        assert_eq!(u(x.mul(&y)), vec![196, 15, 30]);

        let zero = Tensor::from_vec(vec![1i64, 0], &[2]).unwrap();
        let e = a
            .narrow(0, 0, 2)
            .unwrap()
            .div(&zero)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("div:") && e.contains("zero"), "{e}");
        // A zero outside the divisor's view is not an error.
        let ok = a
            .narrow(0, 0, 1)
            .unwrap()
            .div(&zero.narrow(0, 0, 1).unwrap());
        assert_eq!(v(ok), vec![i64::MAX]);
    }

    #[test]
    fn maximum_and_minimum_propagate_nan() {
        let a = Tensor::from_vec(vec![f32::NAN, 1.0, 2.0], &[3]).unwrap();
        let b = Tensor::from_vec(vec![0.0f32, f32::NAN, 1.0], &[3]).unwrap();
        for t in [a.maximum(&b).unwrap(), a.minimum(&b).unwrap()] {
            let v = t.to_vec::<f32>().unwrap();
            assert!(v[0].is_nan() && v[1].is_nan(), "{v:?}");
        }
        assert_eq!(a.maximum(&b).unwrap().to_vec::<f32>().unwrap()[2], 2.0);
        assert_eq!(a.minimum(&b).unwrap().to_vec::<f32>().unwrap()[2], 1.0);
    }

    #[test]
    fn comparisons_on_every_dtype() {
        let mut rng = Rng::new(3);
        type CmpFn = fn(&Tensor, &Tensor) -> Result<Tensor>;
        type CmpRef = fn(f64, f64) -> bool;
        let cases: [(CmpFn, CmpRef); 6] = [
            (Tensor::eq, |x, y| x == y),
            (Tensor::ne, |x, y| x != y),
            (Tensor::lt, |x, y| x < y),
            (Tensor::le, |x, y| x <= y),
            (Tensor::gt, |x, y| x > y),
            (Tensor::ge, |x, y| x >= y),
        ];
        // Small integers so equal values are common; u8 takes them non-negative.
        let small = |shape: &[usize], rng: &mut Rng| {
            Tensor::rand_uniform(shape, 0.0, 4.0, DType::F64, Device::Cpu, rng)
                .unwrap()
                .to_dtype(DType::I64)
                .unwrap()
        };
        for dtype in [
            DType::F32,
            DType::F64,
            DType::F16,
            DType::BF16,
            DType::I64,
            DType::U8,
        ] {
            let a = small(&[4, 3], &mut rng).to_dtype(dtype).unwrap();
            let b = small(&[3, 4], &mut rng)
                .to_dtype(dtype)
                .unwrap()
                .t()
                .unwrap();
            let c = small(&[3], &mut rng).to_dtype(dtype).unwrap();
            for (op, f) in cases {
                for (x, y) in [(&a, &b), (&a, &c), (&c, &b)] {
                    let got = op(x, y).unwrap();
                    assert_eq!(got.dtype(), DType::U8);
                    let want = reference(&[x, y], |v| f(v[0], v[1]) as u8 as f64);
                    assert_close(&got, &want, 0.0, &format!("cmp {dtype}"));
                }
            }
        }
        let n = Tensor::from_vec(vec![f32::NAN, 1.0], &[2]).unwrap();
        assert_eq!(n.eq(&n).unwrap().to_vec::<u8>().unwrap(), vec![0, 1]);
        assert_eq!(n.ne(&n).unwrap().to_vec::<u8>().unwrap(), vec![1, 0]);
        assert_eq!(n.ge(&n).unwrap().to_vec::<u8>().unwrap(), vec![0, 1]);
    }

    #[test]
    fn unary_ops_match_reference() {
        type UnFn = fn(&Tensor) -> Result<Tensor>;
        type Ref1 = fn(f64) -> f64;
        let cases: [(UnFn, Ref1); 12] = [
            (Tensor::neg, |x| -x),
            (Tensor::exp, f64::exp),
            (Tensor::log, f64::ln),
            (Tensor::sqrt, f64::sqrt),
            (Tensor::rsqrt, |x| 1.0 / x.sqrt()),
            (Tensor::tanh, f64::tanh),
            (Tensor::erf, crate::cpu::math::erf_f64),
            (Tensor::relu, |x| x.max(0.0)),
            (Tensor::sigmoid, |x| 1.0 / (1.0 + (-x).exp())),
            (Tensor::abs, f64::abs),
            (Tensor::sqr, |x| x * x),
            (Tensor::recip, |x| 1.0 / x),
        ];
        let mut rng = Rng::new(4);
        for dtype in [DType::F32, DType::F64] {
            let tol = if dtype == DType::F32 { 2e-6 } else { 1e-13 };
            for shape in [&[7, 5][..], &[1], &[], &[0, 4], &[40, 1000]] {
                for (i, x) in variants(shape, dtype, &mut rng).iter().enumerate() {
                    // Scale up so exp and sigmoid see large arguments too.
                    let x = x.mul_scalar(8.0).unwrap();
                    for (j, (op, f)) in cases.iter().enumerate() {
                        let what = format!("unary #{j} {dtype} {shape:?} variant {i}");
                        assert_close(&op(&x).unwrap(), &reference(&[&x], |v| f(v[0])), tol, &what);
                    }
                }
            }
        }
        let nan = Tensor::from_vec(vec![f32::NAN, -1.0, -200.0, 200.0], &[4]).unwrap();
        let r = nan.relu().unwrap().to_vec::<f32>().unwrap();
        assert!(r[0].is_nan() && r[1] == 0.0);
        let s = nan.sigmoid().unwrap().to_vec::<f32>().unwrap();
        assert_eq!((s[2], s[3]), (0.0, 1.0));
        let i = Tensor::from_vec(vec![1i64], &[1]).unwrap();
        let e = i.exp().unwrap_err().to_string();
        assert!(e.starts_with("exp:") && e.contains("i64"), "{e}");
        assert!(i.sqr().unwrap_err().to_string().starts_with("sqr:"));
    }

    #[test]
    fn scalar_ops_affine_and_powf() {
        let mut rng = Rng::new(5);
        type ScFn = fn(&Tensor, f64) -> Result<Tensor>;
        let cases: [(ScFn, Ref2); 6] = [
            (Tensor::add_scalar, |x, s| x + s),
            (Tensor::sub_scalar, |x, s| x - s),
            (Tensor::mul_scalar, |x, s| x * s),
            (Tensor::div_scalar, |x, s| x / s),
            (Tensor::maximum_scalar, f64::max),
            (Tensor::minimum_scalar, f64::min),
        ];
        for x in variants(&[6, 7], DType::F32, &mut rng) {
            for (op, f) in cases {
                assert_close(
                    &op(&x, 0.3).unwrap(),
                    &reference(&[&x], |v| f(v[0], 0.3)),
                    1e-6,
                    "scalar",
                );
            }
            let want = reference(&[&x], |v| v[0] * 2.5 - 1.0);
            assert_close(&x.affine(2.5, -1.0).unwrap(), &want, 1e-6, "affine");
            let want = reference(&[&x], |v| v[0].abs().powf(1.7));
            assert_close(&x.abs().unwrap().powf(1.7).unwrap(), &want, 2e-6, "powf");
        }
        let i = Tensor::from_vec(vec![-7i64, 3, 9], &[3]).unwrap();
        let v = |t: Result<Tensor>| t.unwrap().to_vec::<i64>().unwrap();
        assert_eq!(v(i.add_scalar(2.0)), vec![-5, 5, 11]);
        assert_eq!(v(i.div_scalar(2.0)), vec![-3, 1, 4]);
        assert_eq!(v(i.maximum_scalar(4.0)), vec![4, 4, 9]);
        assert_eq!(v(i.affine(-2.0, 1.0)), vec![15, -5, -17]);
        let u = Tensor::from_vec(vec![1u8, 200], &[2]).unwrap();
        assert_eq!(
            u.sub_scalar(2.0).unwrap().to_vec::<u8>().unwrap(),
            vec![255, 198]
        );
        for (e, op) in [
            (i.add_scalar(1.5).unwrap_err(), "add_scalar:"),
            (i.div_scalar(0.0).unwrap_err(), "div_scalar:"),
            (u.mul_scalar(300.0).unwrap_err(), "mul_scalar:"),
            (u.mul_scalar(-1.0).unwrap_err(), "mul_scalar:"),
            (i.affine(0.5, 0.0).unwrap_err(), "affine:"),
            (i.powf(2.0).unwrap_err(), "powf:"),
        ] {
            assert!(e.to_string().starts_with(op), "{e}");
        }
    }

    #[test]
    fn where_cond_and_masked_fill_broadcast() {
        let mut rng = Rng::new(6);
        let cond = Tensor::bernoulli(&[2, 1, 4], 0.5, Device::Cpu, &mut rng).unwrap();
        for dtype in [DType::F32, DType::BF16, DType::I64] {
            let t = rand(&[3, 1], DType::F32, &mut rng).to_dtype(dtype).unwrap();
            let f = rand(&[4, 3], DType::F32, &mut rng)
                .to_dtype(dtype)
                .unwrap()
                .t()
                .unwrap();
            let f = f.narrow(0, 0, 1).unwrap(); // [1, 4], strided
            let got = cond.where_cond(&t, &f).unwrap();
            assert_eq!(got.dtype(), dtype);
            let want = reference(&[&cond, &t, &f], |v| if v[0] != 0.0 { v[1] } else { v[2] });
            assert_close(&got, &want, 0.0, "where_cond");
        }
        let x = rand(&[3, 4], DType::F32, &mut rng);
        let mask = Tensor::bernoulli(&[4], 0.5, Device::Cpu, &mut rng).unwrap();
        let got = x.masked_fill(&mask, f64::NEG_INFINITY).unwrap();
        let want = reference(&[&mask, &x], |v| {
            if v[0] != 0.0 {
                f64::NEG_INFINITY
            } else {
                v[1]
            }
        });
        assert_close(&got, &(vec![3, 4], want.1), 0.0, "masked_fill");
        let h = x.to_dtype(DType::F16).unwrap().t().unwrap();
        let col = Tensor::from_vec(vec![1u8, 0, 1, 0], &[4, 1]).unwrap();
        let got = h.masked_fill(&col, -1e4).unwrap();
        let want = reference(&[&col, &h], |v| if v[0] != 0.0 { -1e4 } else { v[1] });
        assert_close(&got, &want, 0.0, "masked_fill f16");

        let e = x.where_cond(&x, &x).unwrap_err().to_string();
        assert!(e.starts_with("where_cond:") && e.contains("u8"), "{e}");
        let e = cond.where_cond(&t_f64(), &x).unwrap_err().to_string();
        assert!(e.starts_with("where_cond:"), "{e}");
        let e = x
            .masked_fill(&mask.narrow(0, 0, 3).unwrap(), 0.0)
            .unwrap_err();
        assert!(e.to_string().starts_with("masked_fill:"), "{e}");
        let e = x.masked_fill(&x, 0.0).unwrap_err();
        assert!(e.to_string().starts_with("masked_fill:"), "{e}");
    }

    fn t_f64() -> Tensor {
        Tensor::from_vec(vec![1.0f64], &[1]).unwrap()
    }

    #[test]
    fn binary_errors_name_the_op() {
        let a = Tensor::from_vec(vec![1.0f32, 2.0], &[2]).unwrap();
        let e = a.add(&t_f64()).unwrap_err().to_string();
        assert!(e.starts_with("add:") && e.contains("f64"), "{e}");
        let e = a.gt(&t_f64()).unwrap_err().to_string();
        assert!(e.starts_with("gt:"), "{e}");
        let b = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[3]).unwrap();
        let e = a.mul(&b).unwrap_err().to_string();
        assert!(
            e.starts_with("mul:") && e.contains("[2]") && e.contains("[3]"),
            "{e}"
        );
        let e = a.le(&b).unwrap_err().to_string();
        assert!(e.starts_with("le:"), "{e}");
    }
}
