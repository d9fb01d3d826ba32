//! Elementwise ops with broadcasting (`kernels/elementwise.cu`): unary and scalar maps, binary
//! arithmetic (floats, and i64 / u8 with wrapping integer semantics), comparisons, `where_cond`, `masked_fill`, and strided copies (a view made
//! contiguous, or written into a slice of a larger buffer). Semantics are
//! tensor/src/ops/elementwise.rs's (f16/bf16 compute in f32 and round once; max/min propagate
//! NaN; comparisons give u8 1/0).
//!
//! Every operand is a [`Strided`] over the op's shape (broadcast dims have stride 0). The walk is
//! picked from the merged layouts ([`Walk::new`]):
//! - every operand contiguous: the `_contig` kernel (map1, binary, compare, where, masked_fill;
//!   copies become one `memcpy`), moving 16-byte packs when every pointer is aligned for its pack
//!   (checked on the actual addresses, so a view offset by one element takes the scalar loop);
//! - two dims, every operand stepping by one along a row (a bias row broadcast along the leading
//!   dim, a slice of a concatenation): the `_rows` kernel (binary, copy), packs when every row
//!   starts 16-byte aligned;
//! - anything else: the `_strided` kernel walks the layouts (one i64 div/mod per dim and element).

use super::{len_i64, ArithElem, FloatElem, ARITH, FLOATS};
use crate::buffer::{DeviceBuffer, DeviceElem, ElemType};
use crate::error::bail;
use crate::gpu::{arg, Gpu, Launch};
use crate::nvrtc::{kernels::ELEMENTWISE, KernelFile};
use crate::strided::{Strided, Walk};
use crate::Result;

/// Unary float functions (codes shared with elementwise.cu's `Map1Op`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Tanh,
    Erf,
    Relu,
    Sigmoid,
    Abs,
    Sqr,
    Recip,
}

/// Binary arithmetic (codes of elementwise.cu's `BinaryOp`; the scalar forms are `Map1` codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Maximum,
    Minimum,
}

/// Comparisons (codes of elementwise.cu's `CmpOp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// What `map1` computes for each element x.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Map1 {
    Unary(UnaryOp),
    /// x op s (`add_scalar`, ..., `minimum_scalar`).
    Scalar(BinaryOp, f32),
    /// x * mul + add, rounded after each operation.
    Affine {
        mul: f32,
        add: f32,
    },
    /// x ^ e.
    Powf(f32),
}

const UNARY: [(UnaryOp, &str); 12] = [
    (UnaryOp::Neg, "M_NEG"),
    (UnaryOp::Exp, "M_EXP"),
    (UnaryOp::Log, "M_LOG"),
    (UnaryOp::Sqrt, "M_SQRT"),
    (UnaryOp::Rsqrt, "M_RSQRT"),
    (UnaryOp::Tanh, "M_TANH"),
    (UnaryOp::Erf, "M_ERF"),
    (UnaryOp::Relu, "M_RELU"),
    (UnaryOp::Sigmoid, "M_SIGMOID"),
    (UnaryOp::Abs, "M_ABS"),
    (UnaryOp::Sqr, "M_SQR"),
    (UnaryOp::Recip, "M_RECIP"),
];

const BINARY: [(BinaryOp, &str, &str); 6] = [
    (BinaryOp::Add, "B_ADD", "M_ADD_SCALAR"),
    (BinaryOp::Sub, "B_SUB", "M_SUB_SCALAR"),
    (BinaryOp::Mul, "B_MUL", "M_MUL_SCALAR"),
    (BinaryOp::Div, "B_DIV", "M_DIV_SCALAR"),
    (BinaryOp::Maximum, "B_MAXIMUM", "M_MAXIMUM_SCALAR"),
    (BinaryOp::Minimum, "B_MINIMUM", "M_MINIMUM_SCALAR"),
];

const COMPARE: [(CmpOp, &str); 6] = [
    (CmpOp::Eq, "C_EQ"),
    (CmpOp::Ne, "C_NE"),
    (CmpOp::Lt, "C_LT"),
    (CmpOp::Le, "C_LE"),
    (CmpOp::Gt, "C_GT"),
    (CmpOp::Ge, "C_GE"),
];

const M_AFFINE: i32 = 18;
const M_POWF: i32 = 19;

fn unary_code(op: UnaryOp) -> i32 {
    UNARY.iter().position(|(o, _)| *o == op).expect("listed") as i32
}

fn binary_code(op: BinaryOp) -> i32 {
    BINARY.iter().position(|(o, ..)| *o == op).expect("listed") as i32
}

fn compare_code(op: CmpOp) -> i32 {
    COMPARE.iter().position(|(o, _)| *o == op).expect("listed") as i32
}

impl Map1 {
    /// (op code, a, b) as elementwise.cu's `map1` takes them.
    fn code(self) -> (i32, f32, f32) {
        match self {
            Map1::Unary(op) => (unary_code(op), 0.0, 0.0),
            Map1::Scalar(op, s) => (UNARY.len() as i32 + binary_code(op), s, 0.0),
            Map1::Affine { mul, add } => (M_AFFINE, mul, add),
            Map1::Powf(e) => (M_POWF, e, 0.0),
        }
    }
}

/// The codes elementwise.cu must define with the same values.
pub(crate) fn mirrored_constants() -> Vec<(&'static KernelFile, String)> {
    let mut v: Vec<String> = UNARY
        .iter()
        .map(|(op, name)| format!("{name} = {}", unary_code(*op)))
        .collect();
    for (op, name, scalar) in BINARY {
        v.push(format!("{name} = {}", binary_code(op)));
        v.push(format!("{scalar} = {}", Map1::Scalar(op, 0.0).code().0));
    }
    v.push(format!("M_AFFINE = {M_AFFINE}"));
    v.push(format!("M_POWF = {M_POWF}"));
    v.extend(
        COMPARE
            .iter()
            .map(|(op, name)| format!("{name} = {}", compare_code(*op))),
    );
    v.into_iter().map(|s| (&ELEMENTWISE, s)).collect()
}

pub(crate) fn kernel_names() -> Vec<(&'static KernelFile, String)> {
    let mut v = Vec::new();
    for path in ["contig", "strided"] {
        v.extend(FLOATS.iter().map(|t| format!("map1_{t}_{path}")));
        v.extend(ARITH.iter().map(|t| format!("binary_{t}_{path}")));
    }
    v.extend(ARITH.iter().map(|t| format!("binary_{t}_rows")));
    for suffix in ["", "_contig"] {
        v.extend(ARITH.iter().map(|t| format!("compare_{t}{suffix}")));
    }
    for bits in [8, 16, 32, 64] {
        for k in ["where_w", "masked_fill_w", "copy_w"] {
            v.push(format!("{k}{bits}"));
        }
        for k in [
            "where_w{bits}_contig",
            "masked_fill_w{bits}_contig",
            "copy_w{bits}_rows",
        ] {
            v.push(k.replace("{bits}", &bits.to_string()));
        }
    }
    v.into_iter().map(|n| (&ELEMENTWISE, n)).collect()
}

fn elems(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Errors unless every operand lives on `gpu`.
fn check_devices<T: DeviceElem>(
    gpu: &Gpu,
    op: &'static str,
    ops: &[&Strided<'_, T>],
) -> Result<()> {
    for s in ops {
        gpu.same_device(op, s.buf)?;
    }
    Ok(())
}

/// 1 when every address is 16-byte aligned (vector loads allowed).
fn aligned(addrs: &[u64]) -> i32 {
    addrs.iter().all(|a| a % 16 == 0) as i32
}

/// 1 when packs of `t` may move: the `wide` addresses (elements of `t`) 16-byte aligned and the
/// `bytes` addresses (u8 conditions, masks, comparison results: as many bytes as a pack has
/// elements) aligned to that count.
fn packs_aligned(t: ElemType, wide: &[u64], bytes: &[u64]) -> i32 {
    let lanes = (16 / t.size_in_bytes()) as u64;
    (aligned(wide) == 1 && bytes.iter().all(|a| a.is_multiple_of(lanes))) as i32
}

/// Elements of `t` in one 16-byte pack.
fn lanes(t: ElemType) -> usize {
    16 / t.size_in_bytes()
}

/// Launches the `_contig` entry `name` over n elements of `t`: one thread per pack.
///
/// # Safety
/// `args` must match the entry's parameters, and every pointer among them must hold n elements.
unsafe fn launch_packs(
    gpu: &Gpu,
    name: &str,
    n: usize,
    t: ElemType,
    args: &mut [*mut std::ffi::c_void],
) -> Result<()> {
    gpu.launch(
        &ELEMENTWISE,
        name,
        Launch::grid_stride(n.div_ceil(lanes(t))),
        args,
    )
}

/// The units a `_rows` kernel walks per row: packs and a scalar tail, or single elements.
fn row_units(cols: i64, t: ElemType, packs: bool) -> usize {
    let (cols, v) = (cols as usize, lanes(t));
    if packs {
        cols / v + cols % v
    } else {
        cols
    }
}

/// `f(x)` elementwise over `shape` (f32, f16 or bf16).
pub fn map1<T: FloatElem>(
    gpu: &Gpu,
    op: Map1,
    shape: &[usize],
    x: Strided<'_, T>,
) -> Result<DeviceBuffer<T>> {
    const OP: &str = "map1";
    check_devices(gpu, OP, &[&x])?;
    let xa = x.address(OP, shape)?;
    let n = elems(shape);
    let out = gpu.alloc::<T>(n)?;
    if n == 0 {
        return Ok(out);
    }
    let (code, a, b) = op.code();
    let (n64, oa) = (len_i64(OP, n)?, out.device_address());
    let (walk, contiguous) = Walk::new(OP, shape, &[x.strides])?;
    let t = T::TYPE;
    // SAFETY: the argument lists match elementwise.cu's map1 entries; the input's extent was
    // checked by `address`, the output holds n elements.
    unsafe {
        if contiguous {
            let al = aligned(&[xa, oa]);
            gpu.launch(
                &ELEMENTWISE,
                &format!("map1_{t}_contig"),
                Launch::grid_stride(n.div_ceil(16 / t.size_in_bytes())),
                &mut [
                    arg(&xa),
                    arg(&oa),
                    arg(&n64),
                    arg(&al),
                    arg(&code),
                    arg(&a),
                    arg(&b),
                ],
            )?;
        } else {
            gpu.launch(
                &ELEMENTWISE,
                &format!("map1_{t}_strided"),
                Launch::grid_stride(n),
                &mut [
                    arg(&walk),
                    arg(&xa),
                    arg(&oa),
                    arg(&n64),
                    arg(&code),
                    arg(&a),
                    arg(&b),
                ],
            )?;
        }
    }
    Ok(out)
}

/// `a op b` elementwise over `shape` (both operands broadcast to it). Integers wrap; integer
/// division truncates toward zero and gives 0 for a zero divisor (callers reject those first).
pub fn binary<T: ArithElem>(
    gpu: &Gpu,
    op: BinaryOp,
    shape: &[usize],
    a: Strided<'_, T>,
    b: Strided<'_, T>,
) -> Result<DeviceBuffer<T>> {
    const OP: &str = "binary";
    check_devices(gpu, OP, &[&a, &b])?;
    let (aa, ba) = (a.address(OP, shape)?, b.address(OP, shape)?);
    let n = elems(shape);
    let out = gpu.alloc::<T>(n)?;
    if n == 0 {
        return Ok(out);
    }
    let code = binary_code(op);
    let (n64, oa) = (len_i64(OP, n)?, out.device_address());
    let (walk, contiguous) = Walk::new(OP, shape, &[a.strides, b.strides])?;
    let t = T::TYPE;
    // SAFETY: as in `map1`, for the binary entries.
    unsafe {
        if contiguous {
            let al = aligned(&[aa, ba, oa]);
            gpu.launch(
                &ELEMENTWISE,
                &format!("binary_{t}_contig"),
                Launch::grid_stride(n.div_ceil(16 / t.size_in_bytes())),
                &mut [
                    arg(&aa),
                    arg(&ba),
                    arg(&oa),
                    arg(&n64),
                    arg(&al),
                    arg(&code),
                ],
            )?;
        } else if let Some(rw) = walk.rows(2) {
            let packs = rw.packs_aligned(t.size_in_bytes(), &[aa, ba, oa], rw.cols);
            let al = packs as i32;
            gpu.launch(
                &ELEMENTWISE,
                &format!("binary_{t}_rows"),
                Launch::rows(rw.rows as usize, row_units(rw.cols, t, packs)),
                &mut [
                    arg(&aa),
                    arg(&ba),
                    arg(&oa),
                    arg(&rw.rows),
                    arg(&rw.cols),
                    arg(&rw.row_stride[0]),
                    arg(&rw.row_stride[1]),
                    arg(&al),
                    arg(&code),
                ],
            )?;
        } else {
            gpu.launch(
                &ELEMENTWISE,
                &format!("binary_{t}_strided"),
                Launch::grid_stride(n),
                &mut [
                    arg(&walk),
                    arg(&aa),
                    arg(&ba),
                    arg(&oa),
                    arg(&n64),
                    arg(&code),
                ],
            )?;
        }
    }
    Ok(out)
}

/// `a cmp b` as u8 1/0 over `shape`, for f32, f16, bf16, i64 and u8.
pub fn compare<T: DeviceElem>(
    gpu: &Gpu,
    op: CmpOp,
    shape: &[usize],
    a: Strided<'_, T>,
    b: Strided<'_, T>,
) -> Result<DeviceBuffer<u8>> {
    const OP: &str = "compare";
    if !ARITH.contains(&T::TYPE) {
        bail!(OP, "no comparison kernel for {}", T::TYPE);
    }
    check_devices(gpu, OP, &[&a, &b])?;
    let (aa, ba) = (a.address(OP, shape)?, b.address(OP, shape)?);
    let n = elems(shape);
    let out = gpu.alloc::<u8>(n)?;
    if n == 0 {
        return Ok(out);
    }
    let code = compare_code(op);
    let (n64, oa) = (len_i64(OP, n)?, out.device_address());
    let (walk, contiguous) = Walk::new(OP, shape, &[a.strides, b.strides])?;
    let t = T::TYPE;
    if contiguous {
        let al = packs_aligned(t, &[aa, ba], &[oa]);
        // SAFETY: matches `compare_<t>_contig(const T*, const T*, u8*, i64, int, int)`; both
        // inputs hold n elements from their addresses (checked), the output n bytes.
        let args = &mut [
            arg(&aa),
            arg(&ba),
            arg(&oa),
            arg(&n64),
            arg(&al),
            arg(&code),
        ];
        return unsafe { launch_packs(gpu, &format!("compare_{t}_contig"), n, t, args) }
            .map(|()| out);
    }
    // SAFETY: matches `compare_<t>(Walk, const T*, const T*, u8*, i64, int)`.
    unsafe {
        gpu.launch(
            &ELEMENTWISE,
            &format!("compare_{}", T::TYPE),
            Launch::grid_stride(n),
            &mut [
                arg(&walk),
                arg(&aa),
                arg(&ba),
                arg(&oa),
                arg(&n64),
                arg(&code),
            ],
        )?;
    }
    Ok(out)
}

/// The bits of `v` zero-extended to 64 (little-endian: the low bytes are `v`'s), which a kernel
/// parameter of `v`'s width reads.
fn bits_of<T: DeviceElem>(v: T) -> u64 {
    let mut bits = 0u64;
    let size = std::mem::size_of::<T>();
    assert!(size <= 8, "device elements are at most 8 bytes");
    // SAFETY: copies `size` <= 8 bytes of a plain value into a u64.
    unsafe {
        std::ptr::copy_nonoverlapping(
            &v as *const T as *const u8,
            &mut bits as *mut u64 as *mut u8,
            size,
        )
    };
    bits
}

fn width(t: ElemType) -> usize {
    t.size_in_bytes() * 8
}

/// `cond ? on_true : on_false` over `shape` (cond u8, nonzero true), any element type.
pub fn where_cond<T: DeviceElem>(
    gpu: &Gpu,
    shape: &[usize],
    cond: Strided<'_, u8>,
    on_true: Strided<'_, T>,
    on_false: Strided<'_, T>,
) -> Result<DeviceBuffer<T>> {
    const OP: &str = "where_cond";
    gpu.same_device(OP, cond.buf)?;
    check_devices(gpu, OP, &[&on_true, &on_false])?;
    let ca = cond.address(OP, shape)?;
    let (ta, fa) = (on_true.address(OP, shape)?, on_false.address(OP, shape)?);
    let n = elems(shape);
    let out = gpu.alloc::<T>(n)?;
    if n == 0 {
        return Ok(out);
    }
    let (n64, oa) = (len_i64(OP, n)?, out.device_address());
    let (walk, contiguous) = Walk::new(
        OP,
        shape,
        &[cond.strides, on_true.strides, on_false.strides],
    )?;
    let t = T::TYPE;
    if contiguous {
        let al = packs_aligned(t, &[ta, fa, oa], &[ca]);
        // SAFETY: matches `where_w<bits>_contig(const u8*, const W*, const W*, W*, i64, int)`;
        // every operand holds n elements from its address (checked).
        return unsafe {
            gpu.launch(
                &ELEMENTWISE,
                &format!("where_w{}_contig", width(t)),
                Launch::grid_stride(n.div_ceil(lanes(t))),
                &mut [arg(&ca), arg(&ta), arg(&fa), arg(&oa), arg(&n64), arg(&al)],
            )
        }
        .map(|()| out);
    }
    // SAFETY: matches `where_w<bits>(Walk, const u8*, const W*, const W*, W*, i64)` with W of
    // T's width.
    unsafe {
        gpu.launch(
            &ELEMENTWISE,
            &format!("where_w{}", width(T::TYPE)),
            Launch::grid_stride(n),
            &mut [
                arg(&walk),
                arg(&ca),
                arg(&ta),
                arg(&fa),
                arg(&oa),
                arg(&n64),
            ],
        )?;
    }
    Ok(out)
}

/// `x` with `value` wherever `mask` (u8, broadcast to `shape`) is nonzero.
pub fn masked_fill<T: DeviceElem>(
    gpu: &Gpu,
    shape: &[usize],
    x: Strided<'_, T>,
    mask: Strided<'_, u8>,
    value: T,
) -> Result<DeviceBuffer<T>> {
    const OP: &str = "masked_fill";
    check_devices(gpu, OP, &[&x])?;
    gpu.same_device(OP, mask.buf)?;
    let (xa, ma) = (x.address(OP, shape)?, mask.address(OP, shape)?);
    let n = elems(shape);
    let out = gpu.alloc::<T>(n)?;
    if n == 0 {
        return Ok(out);
    }
    let (n64, oa, bits) = (len_i64(OP, n)?, out.device_address(), bits_of(value));
    let (walk, contiguous) = Walk::new(OP, shape, &[x.strides, mask.strides])?;
    let t = T::TYPE;
    if contiguous {
        let al = packs_aligned(t, &[xa, oa], &[ma]);
        // SAFETY: matches `masked_fill_w<bits>_contig(const W*, const u8*, W, W*, i64, int)`;
        // the value parameter reads the low bytes of `bits`; every operand holds n elements.
        let args = &mut [
            arg(&xa),
            arg(&ma),
            arg(&bits),
            arg(&oa),
            arg(&n64),
            arg(&al),
        ];
        let name = format!("masked_fill_w{}_contig", width(t));
        return unsafe { launch_packs(gpu, &name, n, t, args) }.map(|()| out);
    }
    // SAFETY: matches `masked_fill_w<bits>(Walk, const W*, const u8*, W, W*, i64)`; the value
    // parameter reads the low bytes of `bits`.
    unsafe {
        gpu.launch(
            &ELEMENTWISE,
            &format!("masked_fill_w{}", width(T::TYPE)),
            Launch::grid_stride(n),
            &mut [
                arg(&walk),
                arg(&xa),
                arg(&ma),
                arg(&bits),
                arg(&oa),
                arg(&n64),
            ],
        )?;
    }
    Ok(out)
}

/// A contiguous row-major copy of `x` over `shape` (any element type).
pub fn copy_strided<T: DeviceElem>(
    gpu: &Gpu,
    shape: &[usize],
    x: Strided<'_, T>,
) -> Result<DeviceBuffer<T>> {
    let n = elems(shape);
    let mut out = gpu.alloc::<T>(n)?;
    let strides = crate::contiguous_strides(shape);
    copy_into(gpu, shape, x, &mut out, 0, &strides)?;
    Ok(out)
}

/// Copies `x` (over `shape`) into `dst` laid out by `dst_offset` and `dst_strides` over the same
/// shape, e.g. a slice of a concatenation's output. The destination layout must not map two
/// elements to one place (it is written in parallel).
pub fn copy_into<T: DeviceElem>(
    gpu: &Gpu,
    shape: &[usize],
    x: Strided<'_, T>,
    dst: &mut DeviceBuffer<T>,
    dst_offset: usize,
    dst_strides: &[usize],
) -> Result<()> {
    const OP: &str = "copy";
    check_devices(gpu, OP, &[&x])?;
    gpu.same_device(OP, dst)?;
    let xa = x.address(OP, shape)?;
    let da = Strided::new(&*dst, dst_offset, dst_strides).address(OP, shape)?;
    let n = elems(shape);
    if n == 0 {
        return Ok(());
    }
    if shape
        .iter()
        .zip(dst_strides)
        .any(|(&d, &s)| d > 1 && s == 0)
    {
        bail!(
            OP,
            "destination strides {dst_strides:?} write several elements of {shape:?} to one place"
        );
    }
    let (walk, contiguous) = Walk::new(OP, shape, &[x.strides, dst_strides])?;
    if contiguous {
        return gpu.copy(x.buf, x.offset, dst, dst_offset, n);
    }
    let t = T::TYPE;
    if let Some(rw) = walk.rows(2) {
        let packs = rw.packs_aligned(t.size_in_bytes(), &[xa, da], rw.row_stride[1]);
        let al = packs as i32;
        // SAFETY: matches `copy_w<bits>_rows(const W*, W*, i64, i64, i64, i64, int)`; both
        // walks' extents were checked.
        return unsafe {
            gpu.launch(
                &ELEMENTWISE,
                &format!("copy_w{}_rows", width(t)),
                Launch::rows(rw.rows as usize, row_units(rw.cols, t, packs)),
                &mut [
                    arg(&xa),
                    arg(&da),
                    arg(&rw.rows),
                    arg(&rw.cols),
                    arg(&rw.row_stride[0]),
                    arg(&rw.row_stride[1]),
                    arg(&al),
                ],
            )
        };
    }
    let n64 = len_i64(OP, n)?;
    // SAFETY: matches `copy_w<bits>(Walk, const W*, W*, i64)`; both extents were checked.
    unsafe {
        gpu.launch(
            &ELEMENTWISE,
            &format!("copy_w{}", width(T::TYPE)),
            Launch::grid_stride(n),
            &mut [arg(&walk), arg(&xa), arg(&da), arg(&n64)],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_codes_follow_the_unary_ones() {
        assert_eq!(Map1::Unary(UnaryOp::Recip).code().0, 11);
        assert_eq!(Map1::Scalar(BinaryOp::Add, 2.0).code(), (12, 2.0, 0.0));
        assert_eq!(Map1::Scalar(BinaryOp::Minimum, 1.0).code().0, 17);
        assert_eq!(Map1::Affine { mul: 2.0, add: 3.0 }.code(), (18, 2.0, 3.0));
        assert_eq!(bits_of(half::f16::from_f32(1.0)), 0x3c00);
        assert_eq!(bits_of(-1i64), u64::MAX);
    }
}
