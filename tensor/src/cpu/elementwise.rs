//! Elementwise CPU kernels: maps of one, two or three strided inputs into a fresh contiguous
//! (row-major) output.
//!
//! Every input arrives with a `Layout` already broadcast to the output shape (stride 0 on
//! stretched dims). [`Walk`] drops size-1 dims and merges neighbouring dims that every operand
//! walks with compatible strides, so `[B, T, H] + [H]` becomes two dims `[B*T, H]` and a
//! contiguous tensor becomes one run. The output is then filled run by run (a run is a stretch of
//! the last merged dim); each run picks a tight slice loop when the operands are contiguous
//! (stride 1) or a broadcast scalar (stride 0), and a strided loop otherwise. Large outputs are
//! split into chunks filled in parallel by rayon.
//!
//! The op sets ([`UnaryOp`], [`BinaryOp`], [`CmpOp`]) are enums; each op is one closure handed to
//! the shared map loops, so LLVM sees (and vectorises) a plain loop per op and type.

use crate::cpu::math::exp_f32;
use crate::{Float, Layout, WithDType};
use rayon::prelude::*;
use std::ops::Range;

/// Output elements per rayon task (and the size below which a map runs serially).
const CHUNK: usize = 1 << 15;

/// Arithmetic the binary ops need: IEEE for f32/f64, wrapping (two's complement) for i64/u8.
/// Integer division truncates toward zero; callers reject zero divisors first.
pub trait Arith: WithDType + Default {
    fn wadd(self, o: Self) -> Self;
    fn wsub(self, o: Self) -> Self;
    fn wmul(self, o: Self) -> Self;
    fn wdiv(self, o: Self) -> Self;
    /// The larger of the two; NaN if either is NaN (torch.maximum).
    #[inline(always)]
    fn maximum(self, o: Self) -> Self {
        #[allow(clippy::eq_op)]
        let nan = self != self;
        if self > o || nan {
            self
        } else {
            o
        }
    }
    /// The smaller of the two; NaN if either is NaN (torch.minimum).
    #[inline(always)]
    fn minimum(self, o: Self) -> Self {
        #[allow(clippy::eq_op)]
        let nan = self != self;
        if self < o || nan {
            self
        } else {
            o
        }
    }
}

macro_rules! arith_float {
    ($t:ty) => {
        impl Arith for $t {
            #[inline(always)]
            fn wadd(self, o: Self) -> Self {
                self + o
            }
            #[inline(always)]
            fn wsub(self, o: Self) -> Self {
                self - o
            }
            #[inline(always)]
            fn wmul(self, o: Self) -> Self {
                self * o
            }
            #[inline(always)]
            fn wdiv(self, o: Self) -> Self {
                self / o
            }
        }
    };
}

macro_rules! arith_int {
    ($t:ty) => {
        impl Arith for $t {
            #[inline(always)]
            fn wadd(self, o: Self) -> Self {
                self.wrapping_add(o)
            }
            #[inline(always)]
            fn wsub(self, o: Self) -> Self {
                self.wrapping_sub(o)
            }
            #[inline(always)]
            fn wmul(self, o: Self) -> Self {
                self.wrapping_mul(o)
            }
            #[inline(always)]
            fn wdiv(self, o: Self) -> Self {
                self.wrapping_div(o)
            }
        }
    };
}

arith_float!(f32);
arith_float!(f64);
arith_int!(i64);
arith_int!(u8);

/// The float types unary kernels compute in, with the exp each should use: the vectorisable
/// polynomial for f32, the libm one for f64.
pub trait FloatKernel: Float + Arith {
    fn fast_exp(self) -> Self;
}

impl FloatKernel for f32 {
    #[inline(always)]
    fn fast_exp(self) -> f32 {
        exp_f32(self)
    }
}

impl FloatKernel for f64 {
    #[inline(always)]
    fn fast_exp(self) -> f64 {
        self.exp()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Maximum,
    Minimum,
}

impl BinaryOp {
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Maximum => "maximum",
            BinaryOp::Minimum => "minimum",
        }
    }

    /// The name of the op with a scalar right-hand side (`add_scalar`, ...).
    pub fn scalar_name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add_scalar",
            BinaryOp::Sub => "sub_scalar",
            BinaryOp::Mul => "mul_scalar",
            BinaryOp::Div => "div_scalar",
            BinaryOp::Maximum => "maximum_scalar",
            BinaryOp::Minimum => "minimum_scalar",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn name(self) -> &'static str {
        match self {
            CmpOp::Eq => "eq",
            CmpOp::Ne => "ne",
            CmpOp::Lt => "lt",
            CmpOp::Le => "le",
            CmpOp::Gt => "gt",
            CmpOp::Ge => "ge",
        }
    }
}

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

impl UnaryOp {
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Erf => "erf",
            UnaryOp::Relu => "relu",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Abs => "abs",
            UnaryOp::Sqr => "sqr",
            UnaryOp::Recip => "recip",
        }
    }
}

// ---- the shared walk ------------------------------------------------------------------------

/// How `N` operands, all laid out over the same (output) shape, are walked in row-major order:
/// outer dims with one stride per operand, then an inner run.
struct Walk<const N: usize> {
    outer: Vec<(usize, [usize; N])>,
    inner: usize,
    inner_strides: [usize; N],
    base: [usize; N],
}

impl<const N: usize> Walk<N> {
    fn new(layouts: [&Layout; N]) -> Self {
        let shape = layouts[0].shape();
        debug_assert!(layouts.iter().all(|l| l.shape() == shape));
        let mut dims: Vec<(usize, [usize; N])> = Vec::with_capacity(shape.len());
        for (d, &size) in shape.iter().enumerate() {
            if size == 1 {
                continue;
            }
            let st: [usize; N] = std::array::from_fn(|i| layouts[i].strides()[d]);
            if let Some((prev_size, prev)) = dims.last_mut() {
                // Dim d-1 steps over exactly one full sweep of dim d for every operand: merge.
                if (0..N).all(|i| prev[i] == st[i] * size) {
                    *prev_size *= size;
                    *prev = st;
                    continue;
                }
            }
            dims.push((size, st));
        }
        let (inner, inner_strides) = dims.pop().unwrap_or((1, [0; N]));
        Walk {
            outer: dims,
            inner,
            inner_strides,
            base: std::array::from_fn(|i| layouts[i].offset()),
        }
    }

    /// Calls `f(out_pos, len, starts)` for each run covering output elements `range`, in order:
    /// output elements `out_pos..out_pos+len` read operand `i` at `starts[i] + j *
    /// inner_strides[i]`.
    fn for_runs(&self, range: Range<usize>, mut f: impl FnMut(usize, usize, [usize; N])) {
        if range.is_empty() {
            return;
        }
        let nd = self.outer.len();
        let mut idx = vec![0usize; nd];
        let mut offs = self.base;
        let mut row = range.start / self.inner;
        for d in (0..nd).rev() {
            let (size, st) = self.outer[d];
            idx[d] = row % size;
            row /= size;
            for i in 0..N {
                offs[i] += idx[d] * st[i];
            }
        }
        let mut col = range.start % self.inner;
        let mut pos = range.start;
        loop {
            let len = (self.inner - col).min(range.end - pos);
            f(
                pos,
                len,
                std::array::from_fn(|i| offs[i] + col * self.inner_strides[i]),
            );
            pos += len;
            if pos >= range.end {
                return;
            }
            col = 0;
            // Next row: increment the outer multi-index.
            for d in (0..nd).rev() {
                let (size, st) = self.outer[d];
                idx[d] += 1;
                for i in 0..N {
                    offs[i] += st[i];
                }
                if idx[d] < size {
                    break;
                }
                for i in 0..N {
                    offs[i] -= st[i] * size;
                }
                idx[d] = 0;
            }
        }
    }
}

/// Fills `out` (row-major over the walk's shape) run by run, in parallel chunks when large.
fn fill<O: Send, const N: usize>(
    out: &mut [O],
    walk: &Walk<N>,
    run: impl Fn(&mut [O], [usize; N]) + Sync,
) {
    if out.len() <= CHUNK {
        walk.for_runs(0..out.len(), |pos, len, starts| {
            run(&mut out[pos..pos + len], starts)
        });
    } else {
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, chunk)| {
                let s = c * CHUNK;
                walk.for_runs(s..s + chunk.len(), |pos, len, starts| {
                    run(&mut chunk[pos - s..pos - s + len], starts)
                });
            });
    }
}

// ---- generic maps ---------------------------------------------------------------------------

/// `f` over every element of `a` (viewed through `la`), row-major.
pub fn unary_map<A, O>(a: &[A], la: &Layout, f: impl Fn(A) -> O + Sync) -> Vec<O>
where
    A: Copy + Sync,
    O: Copy + Default + Send,
{
    let mut out = vec![O::default(); la.elem_count()];
    let walk = Walk::new([la]);
    let [sa] = walk.inner_strides;
    fill(&mut out, &walk, |o, [oa]| match sa {
        1 => {
            let n = o.len();
            for (o, &x) in o.iter_mut().zip(&a[oa..oa + n]) {
                *o = f(x);
            }
        }
        0 => o.fill(f(a[oa])),
        _ => {
            for (j, o) in o.iter_mut().enumerate() {
                *o = f(a[oa + j * sa]);
            }
        }
    });
    out
}

/// `f(a, b)` elementwise; `la` and `lb` must have the same (output) shape.
pub fn binary_map<A, B, O>(
    a: &[A],
    la: &Layout,
    b: &[B],
    lb: &Layout,
    f: impl Fn(A, B) -> O + Sync,
) -> Vec<O>
where
    A: Copy + Sync,
    B: Copy + Sync,
    O: Copy + Default + Send,
{
    let mut out = vec![O::default(); la.elem_count()];
    let walk = Walk::new([la, lb]);
    let [sa, sb] = walk.inner_strides;
    fill(&mut out, &walk, |o, [oa, ob]| {
        let n = o.len();
        match (sa, sb) {
            (1, 1) => {
                for ((o, &x), &y) in o.iter_mut().zip(&a[oa..oa + n]).zip(&b[ob..ob + n]) {
                    *o = f(x, y);
                }
            }
            (1, 0) => {
                let y = b[ob];
                for (o, &x) in o.iter_mut().zip(&a[oa..oa + n]) {
                    *o = f(x, y);
                }
            }
            (0, 1) => {
                let x = a[oa];
                for (o, &y) in o.iter_mut().zip(&b[ob..ob + n]) {
                    *o = f(x, y);
                }
            }
            _ => {
                for (j, o) in o.iter_mut().enumerate() {
                    *o = f(a[oa + j * sa], b[ob + j * sb]);
                }
            }
        }
    });
    out
}

/// `f(a, b, c)` elementwise; the three layouts must have the same (output) shape.
pub fn ternary_map<A, B, C, O>(
    (a, la): (&[A], &Layout),
    (b, lb): (&[B], &Layout),
    (c, lc): (&[C], &Layout),
    f: impl Fn(A, B, C) -> O + Sync,
) -> Vec<O>
where
    A: Copy + Sync,
    B: Copy + Sync,
    C: Copy + Sync,
    O: Copy + Default + Send,
{
    let mut out = vec![O::default(); la.elem_count()];
    let walk = Walk::new([la, lb, lc]);
    let [sa, sb, sc] = walk.inner_strides;
    fill(&mut out, &walk, |o, [oa, ob, oc]| {
        let n = o.len();
        if (sa, sb, sc) == (1, 1, 1) {
            let it = a[oa..oa + n].iter().zip(&b[ob..ob + n]).zip(&c[oc..oc + n]);
            for (o, ((&x, &y), &z)) in o.iter_mut().zip(it) {
                *o = f(x, y, z);
            }
        } else {
            for (j, o) in o.iter_mut().enumerate() {
                *o = f(a[oa + j * sa], b[ob + j * sb], c[oc + j * sc]);
            }
        }
    });
    out
}

/// True when `pred` holds for some element `layout` selects from `x`.
pub fn any_strided<T: Copy>(x: &[T], layout: &Layout, pred: impl Fn(T) -> bool) -> bool {
    let mut found = false;
    layout.for_each_block(|start, len, stride| {
        found = found || (0..len).any(|j| pred(x[start + j * stride]));
    });
    found
}

/// A layout of `shape` that reads one element (offset 0) everywhere: a broadcast scalar.
pub fn scalar_layout(shape: &[usize]) -> Layout {
    Layout::new(shape.to_vec(), vec![0; shape.len()], 0)
}

// ---- the ops ----------------------------------------------------------------------------------

/// `a op b` elementwise (broadcast layouts of the output shape).
pub fn binary<T: Arith>(op: BinaryOp, a: &[T], la: &Layout, b: &[T], lb: &Layout) -> Vec<T> {
    match op {
        BinaryOp::Add => binary_map(a, la, b, lb, T::wadd),
        BinaryOp::Sub => binary_map(a, la, b, lb, T::wsub),
        BinaryOp::Mul => binary_map(a, la, b, lb, T::wmul),
        BinaryOp::Div => binary_map(a, la, b, lb, T::wdiv),
        BinaryOp::Maximum => binary_map(a, la, b, lb, T::maximum),
        BinaryOp::Minimum => binary_map(a, la, b, lb, T::minimum),
    }
}

/// `a op s` for a scalar `s`.
pub fn binary_scalar<T: Arith>(op: BinaryOp, a: &[T], la: &Layout, s: T) -> Vec<T> {
    binary(op, a, la, &[s], &scalar_layout(la.shape()))
}

/// `a op b` as 1 (true) or 0 (false). NaN compares unequal to everything.
pub fn compare<T: WithDType>(op: CmpOp, a: &[T], la: &Layout, b: &[T], lb: &Layout) -> Vec<u8> {
    match op {
        CmpOp::Eq => binary_map(a, la, b, lb, |x, y| (x == y) as u8),
        CmpOp::Ne => binary_map(a, la, b, lb, |x, y| (x != y) as u8),
        CmpOp::Lt => binary_map(a, la, b, lb, |x, y| (x < y) as u8),
        CmpOp::Le => binary_map(a, la, b, lb, |x, y| (x <= y) as u8),
        CmpOp::Gt => binary_map(a, la, b, lb, |x, y| (x > y) as u8),
        CmpOp::Ge => binary_map(a, la, b, lb, |x, y| (x >= y) as u8),
    }
}

/// A float unary op elementwise.
pub fn unary<T: FloatKernel>(op: UnaryOp, a: &[T], la: &Layout) -> Vec<T> {
    let (zero, one) = (T::ZERO, T::ONE);
    match op {
        UnaryOp::Neg => unary_map(a, la, |x: T| -x),
        UnaryOp::Exp => unary_map(a, la, T::fast_exp),
        UnaryOp::Log => unary_map(a, la, T::ln),
        UnaryOp::Sqrt => unary_map(a, la, T::sqrt),
        UnaryOp::Rsqrt => unary_map(a, la, |x: T| one / x.sqrt()),
        UnaryOp::Tanh => unary_map(a, la, T::tanh),
        UnaryOp::Erf => unary_map(a, la, T::erf),
        // NaN < 0 is false, so NaN passes through as in torch.
        UnaryOp::Relu => unary_map(a, la, |x: T| if x < zero { zero } else { x }),
        UnaryOp::Sigmoid => unary_map(a, la, |x: T| one / (one + (-x).fast_exp())),
        UnaryOp::Abs => unary_map(a, la, T::abs),
        UnaryOp::Sqr => unary_map(a, la, |x: T| x * x),
        UnaryOp::Recip => unary_map(a, la, |x: T| one / x),
    }
}

/// `x ^ e` elementwise.
pub fn powf<T: FloatKernel>(a: &[T], la: &Layout, e: T) -> Vec<T> {
    unary_map(a, la, |x: T| x.powf(e))
}

/// `x * mul + add` elementwise (wrapping for integers).
pub fn affine<T: Arith>(a: &[T], la: &Layout, mul: T, add: T) -> Vec<T> {
    unary_map(a, la, |x: T| x.wmul(mul).wadd(add))
}

/// `cond ? on_true : on_false` elementwise (cond nonzero is true).
pub fn where_cond<T: WithDType + Default>(
    cond: (&[u8], &Layout),
    on_true: (&[T], &Layout),
    on_false: (&[T], &Layout),
) -> Vec<T> {
    ternary_map(
        cond,
        on_true,
        on_false,
        |c, t, f| if c != 0 { t } else { f },
    )
}

/// `x` with `value` wherever `mask` is nonzero.
pub fn masked_fill<T: WithDType + Default>(
    x: &[T],
    lx: &Layout,
    mask: &[u8],
    lm: &Layout,
    value: T,
) -> Vec<T> {
    binary_map(mask, lm, x, lx, |m, x| if m != 0 { value } else { x })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_merges_broadcast_dims_and_splits_ranges() {
        // [2, 3, 4] + [4]: dims 0 and 1 merge for both operands.
        let la = Layout::contiguous(&[2, 3, 4]);
        let lb = Layout::contiguous(&[4])
            .broadcast_to("t", &[2, 3, 4])
            .unwrap();
        let w = Walk::new([&la, &lb]);
        assert_eq!(w.outer.len(), 1);
        assert_eq!((w.inner, w.inner_strides), (4, [1, 1]));
        // A range starting mid-row yields a partial first run.
        let mut runs = vec![];
        w.for_runs(6..13, |p, n, s| runs.push((p, n, s)));
        assert_eq!(runs, vec![(6, 2, [6, 2]), (8, 4, [8, 0]), (12, 1, [12, 0])]);
    }
}
