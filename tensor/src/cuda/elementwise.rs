//! CUDA dispatch of the elementwise ops (`ops/elementwise.rs`): binary arithmetic, comparisons,
//! the scalar forms, `affine`, `powf`, the unary float functions, `where_cond` and `masked_fill`,
//! each one launch of `cuda::ops::elementwise` over the operands' broadcast layouts. Arithmetic
//! runs for f32/f16/bf16 (computed in f32, as the CPU widens halves) and, for the binary ops, their
//! scalar forms and `affine`, for i64/u8 (wrapping, as the CPU; a scalar is a broadcast
//! one-element operand, `affine` a multiply then an add, and a zero integer divisor is refused on
//! the host with the CPU's error); comparisons and selection for every dtype the kernels have.

use super::{
    arith_kernel, float_kernel, map_cuda_buf, operands, strided, tensor_of, wrap, CudaElem,
};
use crate::cpu::elementwise::{BinaryOp, CmpOp, UnaryOp};
use crate::ops::elementwise::exact_scalar;
use crate::{DType, Layout, Result, Tensor, WithDType};
use cuda::ops::{elementwise as k, ArithElem};

fn binary_op(op: BinaryOp) -> k::BinaryOp {
    match op {
        BinaryOp::Add => k::BinaryOp::Add,
        BinaryOp::Sub => k::BinaryOp::Sub,
        BinaryOp::Mul => k::BinaryOp::Mul,
        BinaryOp::Div => k::BinaryOp::Div,
        BinaryOp::Maximum => k::BinaryOp::Maximum,
        BinaryOp::Minimum => k::BinaryOp::Minimum,
    }
}

fn cmp_op(op: CmpOp) -> k::CmpOp {
    match op {
        CmpOp::Eq => k::CmpOp::Eq,
        CmpOp::Ne => k::CmpOp::Ne,
        CmpOp::Lt => k::CmpOp::Lt,
        CmpOp::Le => k::CmpOp::Le,
        CmpOp::Gt => k::CmpOp::Gt,
        CmpOp::Ge => k::CmpOp::Ge,
    }
}

fn unary_op(op: UnaryOp) -> k::UnaryOp {
    match op {
        UnaryOp::Neg => k::UnaryOp::Neg,
        UnaryOp::Exp => k::UnaryOp::Exp,
        UnaryOp::Log => k::UnaryOp::Log,
        UnaryOp::Sqrt => k::UnaryOp::Sqrt,
        UnaryOp::Rsqrt => k::UnaryOp::Rsqrt,
        UnaryOp::Tanh => k::UnaryOp::Tanh,
        UnaryOp::Erf => k::UnaryOp::Erf,
        UnaryOp::Relu => k::UnaryOp::Relu,
        UnaryOp::Sigmoid => k::UnaryOp::Sigmoid,
        UnaryOp::Abs => k::UnaryOp::Abs,
        UnaryOp::Sqr => k::UnaryOp::Sqr,
        UnaryOp::Recip => k::UnaryOp::Recip,
    }
}

/// `a op b` over `shape`, `la`/`lb` the operands' layouts broadcast to it.
pub(crate) fn binary(
    op: BinaryOp,
    (a, la): (&Tensor, &Layout),
    (b, lb): (&Tensor, &Layout),
    shape: &[usize],
) -> Result<Tensor> {
    let name = op.name();
    let [sa, sb] = operands(name, [a, b])?;
    let gpu = &sa.gpu;
    arith_kernel!(name, a.dtype(), T => {
        if op == BinaryOp::Div && !T::DTYPE.is_float() && b.to_vec::<T>()?.contains(&T::from_f64(0.0)) {
            crate::bail!(name, "integer division by zero ({} divisor)", T::DTYPE);
        }
        let (x, y) = (sa.typed::<T>(name)?, sb.typed::<T>(name)?);
        let out = k::binary(gpu, binary_op(op), shape, strided(x, la), strided(y, lb))?;
        Ok(tensor_of(gpu, wrap(out), shape))
    })
}

/// `a cmp b` as u8 1/0 over `shape`.
pub(crate) fn compare(
    op: CmpOp,
    (a, la): (&Tensor, &Layout),
    (b, lb): (&Tensor, &Layout),
    shape: &[usize],
) -> Result<Tensor> {
    let name = op.name();
    let [sa, sb] = operands(name, [a, b])?;
    let gpu = &sa.gpu;
    fn run<T: CudaElem>(
        name: &'static str,
        gpu: &cuda::Gpu,
        op: CmpOp,
        (x, la): (&cuda::DeviceBuffer<T>, &Layout),
        (sb, lb): (&super::CudaStorage, &Layout),
        shape: &[usize],
    ) -> Result<cuda::DeviceBuffer<u8>> {
        let y = sb.typed::<T>(name)?;
        Ok(k::compare(
            gpu,
            cmp_op(op),
            shape,
            strided(x, la),
            strided(y, lb),
        )?)
    }
    let out = map_cuda_buf!(&*sa.buf, x => run(name, gpu, op, (x, la), (sb, lb), shape)?);
    Ok(tensor_of(gpu, wrap(out), shape))
}

/// `f(x)` elementwise for one of the kernel's maps (unary, scalar, affine, powf).
fn map1(name: &'static str, x: &Tensor, f: k::Map1) -> Result<Tensor> {
    let [s] = operands(name, [x])?;
    let gpu = &s.gpu;
    float_kernel!(name, x.dtype(), T => {
        let out = k::map1(gpu, f, x.shape(), strided(s.typed::<T>(name)?, x.layout()))?;
        Ok(tensor_of(gpu, wrap(out), x.shape()))
    })
}

/// `x op v` for an integer tensor and a scalar already converted to its type: one binary launch
/// with `v` as a one-element operand broadcast over `x`'s shape.
fn int_scalar<T: CudaElem + ArithElem>(
    name: &'static str,
    op: BinaryOp,
    x: &Tensor,
    v: T,
) -> Result<Tensor> {
    let [s] = operands(name, [x])?;
    let gpu = &s.gpu;
    let (value, broadcast) = (gpu.upload(&[v])?, vec![0; x.rank()]);
    let out = k::binary(
        gpu,
        binary_op(op),
        x.shape(),
        strided(s.typed::<T>(name)?, x.layout()),
        cuda::Strided::new(&value, 0, &broadcast),
    )?;
    Ok(tensor_of(gpu, wrap(out), x.shape()))
}

/// `x op v` for a scalar `v` (integer tensors need an integral `v` of their range, nonzero for
/// division, as on the CPU).
pub(crate) fn scalar(op: BinaryOp, x: &Tensor, v: f64) -> Result<Tensor> {
    let name = op.scalar_name();
    fn int<T: CudaElem + ArithElem>(
        name: &'static str,
        op: BinaryOp,
        x: &Tensor,
        v: f64,
    ) -> Result<Tensor> {
        let v = exact_scalar::<T>(name, v)?;
        if op == BinaryOp::Div && v == T::from_f64(0.0) {
            crate::bail!(name, "integer division by zero");
        }
        int_scalar(name, op, x, v)
    }
    match x.dtype() {
        DType::I64 => int::<i64>(name, op, x, v),
        DType::U8 => int::<u8>(name, op, x, v),
        _ => map1(name, x, k::Map1::Scalar(binary_op(op), v as f32)),
    }
}

/// `x * mul + add` (integer tensors: integral `mul` and `add`, wrapping).
pub(crate) fn affine(x: &Tensor, mul: f64, add: f64) -> Result<Tensor> {
    const OP: &str = "affine";
    fn int<T: CudaElem + ArithElem>(x: &Tensor, mul: f64, add: f64) -> Result<Tensor> {
        let (mul, add) = (exact_scalar::<T>(OP, mul)?, exact_scalar::<T>(OP, add)?);
        int_scalar(
            OP,
            BinaryOp::Add,
            &int_scalar(OP, BinaryOp::Mul, x, mul)?,
            add,
        )
    }
    match x.dtype() {
        DType::I64 => int::<i64>(x, mul, add),
        DType::U8 => int::<u8>(x, mul, add),
        _ => {
            let (mul, add) = (mul as f32, add as f32);
            map1(OP, x, k::Map1::Affine { mul, add })
        }
    }
}

/// `x ^ e`.
pub(crate) fn powf(x: &Tensor, e: f64) -> Result<Tensor> {
    map1("powf", x, k::Map1::Powf(e as f32))
}

/// A unary float function.
pub(crate) fn unary(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    map1(op.name(), x, k::Map1::Unary(unary_op(op)))
}

/// `cond ? t : f` over `shape`, each layout broadcast to it.
pub(crate) fn where_cond(
    (c, lc): (&Tensor, &Layout),
    (t, lt): (&Tensor, &Layout),
    (f, lf): (&Tensor, &Layout),
    shape: &[usize],
) -> Result<Tensor> {
    const OP: &str = "where_cond";
    let [sc, st, sf] = operands(OP, [c, t, f])?;
    let (gpu, cond) = (&sc.gpu, strided(sc.typed::<u8>(OP)?, lc));
    let out = map_cuda_buf!(&*st.buf, x => wrap(k::where_cond(
        gpu,
        shape,
        cond,
        strided(x, lt),
        strided(sf.typed(OP)?, lf),
    )?));
    Ok(tensor_of(gpu, out, shape))
}

/// `x` with `value` wherever `mask` (broadcast to `x`'s shape by `lm`) is nonzero.
pub(crate) fn masked_fill(x: &Tensor, (m, lm): (&Tensor, &Layout), value: f64) -> Result<Tensor> {
    const OP: &str = "masked_fill";
    let [sx, sm] = operands(OP, [x, m])?;
    let (gpu, mask, shape) = (&sx.gpu, strided(sm.typed::<u8>(OP)?, lm), x.shape());
    let out = map_cuda_buf!(&*sx.buf, b => wrap(k::masked_fill(
        gpu,
        shape,
        strided(b, x.layout()),
        mask,
        crate::WithDType::from_f64(value),
    )?));
    Ok(tensor_of(gpu, out, shape))
}
