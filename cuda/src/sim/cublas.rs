//! cuBLAS and cuBLASLt as the simulated device computes them: the column-major API semantics of
//! `cublasGemmEx`, `cublasGemmStridedBatchedEx` and `cublasLtMatmul` with the
//! `CUBLASLT_EPILOGUE_BIAS` epilogue, evaluated on the CPU over raw host pointers (a simulated
//! device's addresses are host addresses).
//!
//! What is computed, as NVIDIA documents it (column-major, element (i, j) of a matrix X with
//! leading dimension ldx at `X[i + j * ldx]`):
//! - `C = alpha * op(A) * op(B) + beta * C`, op(A) m x k, op(B) k x n, C m x n; op(X) = X for
//!   `Operation::N`, Xᵀ for `Operation::T`. A is stored `lda x k` (N) or `lda x m` (T), so
//!   `lda >= max(1, transa == N ? m : k)`; `ldb >= max(1, transb == N ? k : n)`;
//!   `ldc >= max(1, m)`. A violation is `CUBLAS_STATUS_INVALID_VALUE`, as is m, n or k < 0.
//! - `beta == 0`: C is not read (it may hold NaN); `k == 0`: C = beta * C.
//! - Strided batched: matrix b of each operand starts `b * stride` elements after the first.
//! - cuBLASLt with `CUBLASLT_EPILOGUE_BIAS`: D = alpha * op(A) * op(B) + beta * C + bias, the
//!   bias a packed vector of D's row count (m), broadcast to every column, added in the f32 scale
//!   type before the one rounding to D's type. Each matrix is described by a layout (rows, cols,
//!   ld) of the matrix as stored; the op'd shapes must chain and `ld >= rows`.
//! - Types: A, B and C of one type, f32, f16 or bf16; alpha, beta and accumulation in f32
//!   (`CUBLAS_COMPUTE_32F`); `CUBLAS_COMPUTE_32F_FAST_TF32` (f32 only, else
//!   `CUBLAS_STATUS_NOT_SUPPORTED`) rounds each f32 input to TF32 (10 mantissa bits, to nearest,
//!   ties to even) before multiplying. The result is rounded once to C's type, to nearest even.
//!
//! What real cuBLAS does differently: it sums the k products in an unspecified, shape- and
//! algorithm-dependent order (split-k, tensor-core tiles, fused multiply-adds), so its results
//! differ from these in the last bits; here every output element is one f32 sum over k in
//! ascending order, products and additions rounded separately (no FMA), which is deterministic.
//! Tensor cores' TF32 conversion may truncate rather than round on some paths.
//!
//! This module shares no code with `blas.rs`: that file maps row-major operands onto these
//! column-major calls, and this one is what it is tested against.

pub use super::elem::DataType;
use std::ffi::c_void;

/// `cublasOperation_t`: whether an operand enters the product as stored or transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `CUBLAS_OP_N`
    N,
    /// `CUBLAS_OP_T`
    T,
}

/// `cublasComputeType_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComputeType {
    /// `CUBLAS_COMPUTE_32F`: f32 products and sums.
    F32,
    /// `CUBLAS_COMPUTE_32F_FAST_TF32`: f32 inputs rounded to TF32, f32 sums.
    F32FastTf32,
}

/// A failed call's `cublasStatus_t` and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// `CUBLAS_STATUS_INVALID_VALUE`
    InvalidValue(String),
    /// `CUBLAS_STATUS_NOT_SUPPORTED`
    NotSupported(String),
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::InvalidValue(why) => write!(f, "CUBLAS_STATUS_INVALID_VALUE ({why})"),
            Status::NotSupported(why) => write!(f, "CUBLAS_STATUS_NOT_SUPPORTED ({why})"),
        }
    }
}

fn invalid<T>(why: String) -> Result<T, Status> {
    Err(Status::InvalidValue(why))
}

/// The arguments of `cublasGemmEx` (the handle, the pointer mode and the algorithm aside:
/// alpha and beta are host f32 values).
#[derive(Clone, Copy, Debug)]
pub struct GemmEx {
    pub transa: Operation,
    pub transb: Operation,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub alpha: f32,
    pub a: *const c_void,
    pub atype: DataType,
    pub lda: i32,
    pub b: *const c_void,
    pub btype: DataType,
    pub ldb: i32,
    pub beta: f32,
    pub c: *mut c_void,
    pub ctype: DataType,
    pub ldc: i32,
    pub compute: ComputeType,
}

/// The extra arguments of `cublasGemmStridedBatchedEx`.
#[derive(Clone, Copy, Debug)]
pub struct BatchStrides {
    pub stride_a: i64,
    pub stride_b: i64,
    pub stride_c: i64,
    pub batch_count: i32,
}

/// A `cublasLtMatrixLayout_t`: a column-major matrix as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LtLayout {
    pub dtype: DataType,
    pub rows: u64,
    pub cols: u64,
    pub ld: i64,
}

/// The arguments of `cublasLtMatmul` with a matmul descriptor carrying TRANSA, TRANSB, the
/// compute type (scale type f32) and the `CUBLASLT_EPILOGUE_BIAS` epilogue with its bias pointer.
#[derive(Clone, Copy, Debug)]
pub struct LtMatmulBias {
    pub compute: ComputeType,
    pub transa: Operation,
    pub transb: Operation,
    pub alpha: f32,
    pub a: *const c_void,
    pub a_layout: LtLayout,
    pub b: *const c_void,
    pub b_layout: LtLayout,
    pub beta: f32,
    pub c: *const c_void,
    pub c_layout: LtLayout,
    pub d: *mut c_void,
    pub d_layout: LtLayout,
    /// D's type, one element per row of D.
    pub bias: *const c_void,
}

/// `cublasGemmEx`.
///
/// # Safety
/// Every pointer must address the host memory the call reads or writes: A, B and C each their
/// whole `ld x cols` extent (as cuBLAS's own contract), C not overlapping A or B.
pub unsafe fn gemm_ex(g: &GemmEx) -> Result<(), Status> {
    gemm_strided_batched_ex(
        g,
        &BatchStrides {
            stride_a: 0,
            stride_b: 0,
            stride_c: 0,
            batch_count: 1,
        },
    )
}

/// `cublasGemmStridedBatchedEx`: `batch_count` products, operand X's matrix b at `X + b *
/// stride_x` elements.
///
/// # Safety
/// As [`gemm_ex`], for every matrix of the batch; the output matrices must not overlap.
pub unsafe fn gemm_strided_batched_ex(g: &GemmEx, s: &BatchStrides) -> Result<(), Status> {
    let dtype = check_types(g.atype, g.btype, g.ctype, g.compute)?;
    let shape = check_gemm(g)?;
    if s.batch_count < 0 {
        return invalid(format!("batchCount = {} < 0", s.batch_count));
    }
    for (name, stride) in [
        ("strideA", s.stride_a),
        ("strideB", s.stride_b),
        ("strideC", s.stride_c),
    ] {
        if stride < 0 {
            return invalid(format!("{name} = {stride} < 0"));
        }
    }
    if shape.m == 0 || shape.n == 0 || s.batch_count == 0 {
        return Ok(());
    }
    check_pointers(&shape, g.a, g.b, g.c)?;
    let size = dtype.size() as isize;
    for batch in 0..s.batch_count as isize {
        let offset = |stride: i64| batch * stride as isize * size;
        let product = Product {
            a: Operand::new(g.a.byte_offset(offset(s.stride_a)), dtype, g.lda, g.transa),
            b: Operand::new(g.b.byte_offset(offset(s.stride_b)), dtype, g.ldb, g.transb),
            shape,
            tf32: g.compute == ComputeType::F32FastTf32,
        };
        let c = g.c.byte_offset(offset(s.stride_c));
        product.write(g.alpha, g.beta, c.cast_const(), c, g.ldc as usize, None);
    }
    Ok(())
}

/// `cublasLtMatmul` with `CUBLASLT_EPILOGUE_BIAS` (one matrix, no batch).
///
/// # Safety
/// Every pointer must address the host memory its layout describes; the bias `d_layout.rows`
/// elements; D must not overlap A, B or the bias (C may be D).
pub unsafe fn lt_matmul_bias(p: &LtMatmulBias) -> Result<(), Status> {
    let dtype = check_types(
        p.a_layout.dtype,
        p.b_layout.dtype,
        p.d_layout.dtype,
        p.compute,
    )?;
    if p.c_layout != p.d_layout {
        return Err(Status::NotSupported(format!(
            "C's layout {:?} differs from D's {:?}",
            p.c_layout, p.d_layout
        )));
    }
    for (name, l) in [("A", p.a_layout), ("B", p.b_layout), ("D", p.d_layout)] {
        if l.rows > i32::MAX as u64 || l.cols > i32::MAX as u64 {
            return invalid(format!(
                "{name}'s layout {}x{} is too large",
                l.rows, l.cols
            ));
        }
        if l.ld < l.rows.max(1) as i64 {
            return invalid(format!(
                "{name}'s leading dimension {} is below its {} rows",
                l.ld, l.rows
            ));
        }
    }
    let op_dims = |l: LtLayout, t: Operation| match t {
        Operation::N => (l.rows, l.cols),
        Operation::T => (l.cols, l.rows),
    };
    let (m, ka) = op_dims(p.a_layout, p.transa);
    let (kb, n) = op_dims(p.b_layout, p.transb);
    if ka != kb || m != p.d_layout.rows || n != p.d_layout.cols {
        return invalid(format!(
            "op(A) {m}x{ka}, op(B) {kb}x{n} and D {}x{} do not chain",
            p.d_layout.rows, p.d_layout.cols
        ));
    }
    let shape = Shape {
        m: m as usize,
        n: n as usize,
        k: ka as usize,
    };
    if shape.m == 0 || shape.n == 0 {
        return Ok(());
    }
    check_pointers(&shape, p.a, p.b, p.d)?;
    if p.bias.is_null() {
        return invalid("the bias pointer is null".into());
    }
    let product = Product {
        a: Operand::new(p.a, dtype, p.a_layout.ld as i32, p.transa),
        b: Operand::new(p.b, dtype, p.b_layout.ld as i32, p.transb),
        shape,
        tf32: p.compute == ComputeType::F32FastTf32,
    };
    let bias = (0..shape.m)
        .map(|i| dtype.load(p.bias, i))
        .collect::<Vec<_>>();
    product.write(
        p.alpha,
        p.beta,
        p.c,
        p.d,
        p.d_layout.ld as usize,
        Some(&bias),
    );
    Ok(())
}

/// The one element type of A, B and C, or the status cuBLAS gives for the combination.
fn check_types(
    a: DataType,
    b: DataType,
    c: DataType,
    compute: ComputeType,
) -> Result<DataType, Status> {
    if a != b || a != c {
        return Err(Status::NotSupported(format!(
            "A, B and C of types {a:?}, {b:?}, {c:?}: only one type for all three is simulated"
        )));
    }
    if compute == ComputeType::F32FastTf32 && a != DataType::F32 {
        return Err(Status::NotSupported(format!(
            "CUBLAS_COMPUTE_32F_FAST_TF32 takes f32 operands, not {a:?}"
        )));
    }
    Ok(a)
}

/// m, n, k of a product, checked non-negative.
#[derive(Clone, Copy, Debug)]
struct Shape {
    m: usize,
    n: usize,
    k: usize,
}

/// cuBLAS's argument checks of a GEMM: sizes and leading dimensions.
fn check_gemm(g: &GemmEx) -> Result<Shape, Status> {
    for (name, v) in [("m", g.m), ("n", g.n), ("k", g.k)] {
        if v < 0 {
            return invalid(format!("{name} = {v} < 0"));
        }
    }
    let stored_rows = |t: Operation, if_n: i32, if_t: i32| match t {
        Operation::N => if_n,
        Operation::T => if_t,
    };
    let lds = [
        ("lda", g.lda, stored_rows(g.transa, g.m, g.k), g.transa),
        ("ldb", g.ldb, stored_rows(g.transb, g.k, g.n), g.transb),
        ("ldc", g.ldc, g.m, Operation::N),
    ];
    for (name, ld, rows, t) in lds {
        if ld < rows.max(1) {
            return invalid(format!(
                "{name} = {ld} < max(1, {rows}) (the rows of the {t:?} operand as stored)"
            ));
        }
    }
    Ok(Shape {
        m: g.m as usize,
        n: g.n as usize,
        k: g.k as usize,
    })
}

/// A null pointer for an operand the call reads or writes is an invalid value (on a device it
/// would be an illegal address).
fn check_pointers(
    s: &Shape,
    a: *const c_void,
    b: *const c_void,
    c: *mut c_void,
) -> Result<(), Status> {
    if s.k > 0 && (a.is_null() || b.is_null()) {
        return invalid("A or B is a null pointer".into());
    }
    if c.is_null() {
        return invalid("C is a null pointer".into());
    }
    Ok(())
}

/// `x` rounded to TF32: 10 explicit mantissa bits, to nearest with ties to even (the 13 low bits
/// of the f32 mantissa cleared). NaN and infinity pass unchanged; a value that rounds past the
/// largest finite TF32 becomes infinity, as the format has f32's exponent range.
pub fn round_to_tf32(x: f32) -> f32 {
    if !x.is_finite() {
        return x;
    }
    let bits = x.to_bits();
    let lsb = (bits >> 13) & 1;
    let rounded = bits.wrapping_add(0x0fff + lsb) & !0x1fff;
    f32::from_bits(rounded)
}

/// One column-major operand as the product reads it.
#[derive(Clone, Copy)]
struct Operand {
    p: *const c_void,
    dtype: DataType,
    ld: usize,
    op: Operation,
}

impl Operand {
    fn new(p: *const c_void, dtype: DataType, ld: i32, op: Operation) -> Operand {
        Operand {
            p,
            dtype,
            ld: ld as usize,
            op,
        }
    }

    /// op(X) as a row-major `rows x cols` f32 matrix, TF32-rounded when asked.
    ///
    /// # Safety
    /// The operand's pointer must address its stored extent.
    unsafe fn gather(&self, rows: usize, cols: usize, tf32: bool) -> Vec<f32> {
        let mut out = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            for c in 0..cols {
                // op(X)(r, c) = X(r, c) for N, X(c, r) for T; X(i, j) at i + j * ld.
                let at = match self.op {
                    Operation::N => r + c * self.ld,
                    Operation::T => c + r * self.ld,
                };
                let v = self.dtype.load(self.p, at);
                out.push(if tf32 { round_to_tf32(v) } else { v });
            }
        }
        out
    }
}

/// One product op(A)·op(B) of the batch.
struct Product {
    a: Operand,
    b: Operand,
    shape: Shape,
    tf32: bool,
}

impl Product {
    /// Writes `alpha * op(A)·op(B) + beta * C (+ bias[i] on row i)` rounded to the output type
    /// into `d` (leading dimension `ld`, the same for C). C is not read when beta is 0.
    ///
    /// # Safety
    /// As the calling entry points.
    unsafe fn write(
        &self,
        alpha: f32,
        beta: f32,
        c: *const c_void,
        d: *mut c_void,
        ld: usize,
        bias: Option<&[f32]>,
    ) {
        let Shape { m, n, k } = self.shape;
        // op(A) row-major m x k and op(B)ᵀ row-major n x k: both walked along k contiguously.
        let a = self.a.gather(m, k, self.tf32);
        let bt = {
            let flipped = Operand {
                op: match self.b.op {
                    Operation::N => Operation::T,
                    Operation::T => Operation::N,
                },
                ..self.b
            };
            flipped.gather(n, k, self.tf32)
        };
        let out_type = self.a.dtype;
        for j in 0..n {
            let b_col = &bt[j * k..(j + 1) * k];
            for i in 0..m {
                let a_row = &a[i * k..(i + 1) * k];
                let mut acc = 0f32;
                for (x, y) in a_row.iter().zip(b_col) {
                    acc += x * y;
                }
                let at = i + j * ld;
                let mut v = alpha * acc;
                if beta != 0.0 {
                    v += beta * out_type.load(c, at);
                }
                if let Some(bias) = bias {
                    v += bias[i];
                }
                out_type.store(d, at, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift64*), values in [-1, 1).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
            bits as f32 / (1u64 << 23) as f32 - 1.0
        }

        fn fill(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.next()).collect()
        }
    }

    /// A column-major matrix in host memory of one data type.
    struct Host {
        dtype: DataType,
        bytes: Vec<u8>,
    }

    impl Host {
        fn new(dtype: DataType, values: &[f32]) -> Host {
            let mut bytes = vec![0u8; values.len() * dtype.size()];
            for (i, &v) in values.iter().enumerate() {
                // SAFETY: `bytes` holds `values.len()` elements.
                unsafe { dtype.store(bytes.as_mut_ptr().cast(), i, v) };
            }
            Host { dtype, bytes }
        }

        fn values(&self) -> Vec<f32> {
            let n = self.bytes.len() / self.dtype.size();
            // SAFETY: in bounds.
            (0..n)
                .map(|i| unsafe { self.dtype.load(self.bytes.as_ptr().cast(), i) })
                .collect()
        }

        fn ptr(&self) -> *const c_void {
            self.bytes.as_ptr().cast()
        }

        fn ptr_mut(&mut self) -> *mut c_void {
            self.bytes.as_mut_ptr().cast()
        }
    }

    /// The f64 reference of one column-major GEMM on already-rounded inputs.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        ta: Operation,
        tb: Operation,
        (m, n, k): (usize, usize, usize),
        alpha: f64,
        a: &[f32],
        lda: usize,
        b: &[f32],
        ldb: usize,
        beta: f64,
        c: &[f32],
        ldc: usize,
    ) -> Vec<f64> {
        let op = |x: &[f32], t: Operation, ld: usize, r: usize, col: usize| -> f64 {
            match t {
                Operation::N => x[r + col * ld] as f64,
                Operation::T => x[col + r * ld] as f64,
            }
        };
        let mut out: Vec<f64> = c.iter().map(|&v| v as f64).collect();
        for j in 0..n {
            for i in 0..m {
                let s: f64 = (0..k)
                    .map(|p| op(a, ta, lda, i, p) * op(b, tb, ldb, p, j))
                    .sum();
                out[i + j * ldc] = alpha * s + beta * c[i + j * ldc] as f64;
            }
        }
        out
    }

    fn stored_rows(t: Operation, if_n: usize, if_t: usize) -> usize {
        if t == Operation::N {
            if_n
        } else {
            if_t
        }
    }

    /// Runs one GEMM of type `dtype` (leading dimensions padded by `pad`) against the f64
    /// reference; returns the largest error relative to the largest reference magnitude.
    fn check_one(
        dtype: DataType,
        ta: Operation,
        tb: Operation,
        (m, n, k): (usize, usize, usize),
        pad: usize,
    ) -> f64 {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (m * 131 + n * 17 + k) as u64);
        let lda = stored_rows(ta, m, k) + pad;
        let ldb = stored_rows(tb, k, n) + pad;
        let ldc = m + pad;
        let a = Host::new(dtype, &rng.fill(lda * stored_rows(ta, k, m)));
        let b = Host::new(dtype, &rng.fill(ldb * stored_rows(tb, n, k)));
        let mut c = Host::new(dtype, &rng.fill(ldc * n));
        let c_in = c.values();
        let (alpha, beta) = (0.75f32, -0.5f32);
        let want = reference(
            ta,
            tb,
            (m, n, k),
            alpha as f64,
            &a.values(),
            lda,
            &b.values(),
            ldb,
            beta as f64,
            &c_in,
            ldc,
        );
        let g = GemmEx {
            transa: ta,
            transb: tb,
            m: m as i32,
            n: n as i32,
            k: k as i32,
            alpha,
            a: a.ptr(),
            atype: dtype,
            lda: lda as i32,
            b: b.ptr(),
            btype: dtype,
            ldb: ldb as i32,
            beta,
            c: c.ptr_mut(),
            ctype: dtype,
            ldc: ldc as i32,
            compute: ComputeType::F32,
        };
        // SAFETY: every buffer holds its operand's whole extent.
        unsafe { gemm_ex(&g) }.unwrap();
        let got = c.values();
        let scale = want.iter().fold(1e-30f64, |s, v| s.max(v.abs()));
        let mut worst = 0f64;
        for j in 0..n {
            for i in 0..ldc {
                let at = i + j * ldc;
                if i >= m {
                    // Padding rows of C are left untouched.
                    assert_eq!(got[at].to_bits(), c_in[at].to_bits(), "padding at {at}");
                    continue;
                }
                worst = worst.max((got[at] as f64 - want[at]).abs() / scale);
            }
        }
        worst
    }

    const OPS: [(Operation, Operation); 4] = [
        (Operation::N, Operation::N),
        (Operation::N, Operation::T),
        (Operation::T, Operation::N),
        (Operation::T, Operation::T),
    ];

    #[test]
    fn every_transpose_pair_matches_the_f64_reference() {
        for (ta, tb) in OPS {
            for shape in [(1, 1, 1), (7, 5, 3), (13, 11, 17), (4, 9, 1), (33, 2, 40)] {
                for pad in [0, 3] {
                    let err = check_one(DataType::F32, ta, tb, shape, pad);
                    assert!(err < 1e-5, "{ta:?}{tb:?} {shape:?} pad {pad}: {err}");
                }
            }
        }
    }

    #[test]
    fn half_types_accumulate_in_f32_and_round_once() {
        for dtype in [DataType::F16, DataType::Bf16] {
            for (ta, tb) in OPS {
                let err = check_one(dtype, ta, tb, (9, 6, 31), 2);
                // One rounding of the output: half an ulp of the type at the largest magnitude.
                let tol = if dtype == DataType::F16 { 1e-3 } else { 8e-3 };
                assert!(err < tol, "{dtype:?} {ta:?}{tb:?}: {err}");
            }
        }
        // f32 accumulation: 4096 products of 1 * 2^-11 in f16 sum to 2 exactly; an f16
        // accumulator would stop growing at 0.5 + ... (its spacing at 1 is 2^-10).
        let k = 4096;
        let a = Host::new(DataType::F16, &vec![1.0; k]);
        let b = Host::new(DataType::F16, &vec![1.0 / 2048.0; k]);
        let mut c = Host::new(DataType::F16, &[0.0]);
        let g = GemmEx {
            transa: Operation::N,
            transb: Operation::N,
            m: 1,
            n: 1,
            k: k as i32,
            alpha: 1.0,
            a: a.ptr(),
            atype: DataType::F16,
            lda: 1,
            b: b.ptr(),
            btype: DataType::F16,
            ldb: k as i32,
            beta: 0.0,
            c: c.ptr_mut(),
            ctype: DataType::F16,
            ldc: 1,
            compute: ComputeType::F32,
        };
        // SAFETY: A is 1 x k (ld 1), B k x 1, C 1 x 1.
        unsafe { gemm_ex(&g) }.unwrap();
        assert_eq!(c.values(), vec![2.0]);
    }

    #[test]
    fn tf32_rounds_inputs_to_ten_mantissa_bits() {
        assert_eq!(round_to_tf32(1.0), 1.0);
        let ulp = 2f32.powi(-10);
        // Below half an ulp: down; above: up; exactly half: to even (1.0 has an even mantissa).
        assert_eq!(round_to_tf32(1.0 + ulp * 0.49), 1.0);
        assert_eq!(round_to_tf32(1.0 + ulp * 0.51), 1.0 + ulp);
        assert_eq!(round_to_tf32(1.0 + ulp * 0.5), 1.0);
        assert_eq!(round_to_tf32(1.0 + ulp * 1.5), 1.0 + 2.0 * ulp);
        assert_eq!(round_to_tf32(-(1.0 + ulp * 0.51)), -(1.0 + ulp));
        assert!(round_to_tf32(f32::NAN).is_nan());
        assert_eq!(round_to_tf32(f32::MAX), f32::INFINITY);

        // In a product: (1 + 2^-12) * (1 + 2^-12) is 1 + 2^-11 + 2^-24 in f32, exactly 1 in TF32.
        let x = 1.0 + 2f32.powi(-12);
        let run = |compute| {
            let a = Host::new(DataType::F32, &[x]);
            let b = Host::new(DataType::F32, &[x]);
            let mut c = Host::new(DataType::F32, &[0.0]);
            let g = GemmEx {
                transa: Operation::N,
                transb: Operation::T,
                m: 1,
                n: 1,
                k: 1,
                alpha: 1.0,
                a: a.ptr(),
                atype: DataType::F32,
                lda: 1,
                b: b.ptr(),
                btype: DataType::F32,
                ldb: 1,
                beta: 0.0,
                c: c.ptr_mut(),
                ctype: DataType::F32,
                ldc: 1,
                compute,
            };
            // SAFETY: 1 x 1 operands.
            unsafe { gemm_ex(&g) }.unwrap();
            c.values()[0]
        };
        assert_eq!(run(ComputeType::F32), x * x);
        assert_eq!(run(ComputeType::F32FastTf32), 1.0);
    }

    /// A 2 x 2 f32 GEMM with every argument valid, for the argument-check tests to break.
    fn valid(a: &Host, b: &Host, c: &mut Host) -> GemmEx {
        GemmEx {
            transa: Operation::N,
            transb: Operation::N,
            m: 2,
            n: 2,
            k: 2,
            alpha: 1.0,
            a: a.ptr(),
            atype: DataType::F32,
            lda: 2,
            b: b.ptr(),
            btype: DataType::F32,
            ldb: 2,
            beta: 0.0,
            c: c.ptr_mut(),
            ctype: DataType::F32,
            ldc: 2,
            compute: ComputeType::F32,
        }
    }

    #[test]
    fn a_wrong_leading_dimension_is_an_invalid_value() {
        let a = Host::new(DataType::F32, &[1.0; 8]);
        let b = Host::new(DataType::F32, &[1.0; 8]);
        let mut c = Host::new(DataType::F32, &[0.0; 8]);
        let g = valid(&a, &b, &mut c);
        // SAFETY: every call either fails its checks or reads 2 x 2 operands.
        unsafe {
            assert!(gemm_ex(&g).is_ok());
            let e = gemm_ex(&GemmEx { lda: 1, ..g }).unwrap_err();
            assert!(
                matches!(&e, Status::InvalidValue(w) if w.contains("lda = 1")),
                "{e}"
            );
            // With op T, A is stored k x m: lda >= k = 3 here even though m = 2.
            let e = gemm_ex(&GemmEx {
                transa: Operation::T,
                k: 3,
                lda: 2,
                ldb: 3,
                ..g
            })
            .unwrap_err();
            assert!(e.to_string().contains("lda = 2 < max(1, 3)"), "{e}");
            let e = gemm_ex(&GemmEx { ldb: 1, ..g }).unwrap_err();
            assert!(e.to_string().contains("ldb"), "{e}");
            let e = gemm_ex(&GemmEx { ldc: 1, ..g }).unwrap_err();
            assert!(e.to_string().contains("ldc"), "{e}");
            let e = gemm_ex(&GemmEx { m: -1, ..g }).unwrap_err();
            assert!(e.to_string().contains("m = -1"), "{e}");
            let e = gemm_ex(&GemmEx {
                atype: DataType::F16,
                ..g
            })
            .unwrap_err();
            assert!(matches!(e, Status::NotSupported(_)), "{e}");
            let e = gemm_ex(&GemmEx {
                atype: DataType::Bf16,
                btype: DataType::Bf16,
                ctype: DataType::Bf16,
                compute: ComputeType::F32FastTf32,
                ..g
            })
            .unwrap_err();
            assert!(e.to_string().contains("FAST_TF32"), "{e}");
            let s = BatchStrides {
                stride_a: 4,
                stride_b: -4,
                stride_c: 4,
                batch_count: 2,
            };
            let e = gemm_strided_batched_ex(&g, &s).unwrap_err();
            assert!(e.to_string().contains("strideB = -4"), "{e}");
            let s = BatchStrides {
                stride_b: 4,
                batch_count: -1,
                ..s
            };
            assert!(gemm_strided_batched_ex(&g, &s).is_err());
        }
    }

    #[test]
    fn beta_zero_does_not_read_c_and_k_zero_scales_c() {
        let a = Host::new(DataType::F32, &[1.0, 2.0, 3.0, 4.0]);
        let b = Host::new(DataType::F32, &[1.0, 0.0, 0.0, 1.0]);
        let mut c = Host::new(DataType::F32, &[f32::NAN; 4]);
        let g = valid(&a, &b, &mut c);
        // SAFETY: 2 x 2 operands.
        unsafe { gemm_ex(&g) }.unwrap();
        assert_eq!(c.values(), vec![1.0, 2.0, 3.0, 4.0]);
        let mut c = Host::new(DataType::F32, &[1.0, 2.0, 3.0, 4.0]);
        let g = GemmEx {
            k: 0,
            alpha: 5.0,
            beta: 2.0,
            c: c.ptr_mut(),
            ..g
        };
        // SAFETY: k = 0 reads nothing of A and B.
        unsafe { gemm_ex(&g) }.unwrap();
        assert_eq!(c.values(), vec![2.0, 4.0, 6.0, 8.0]);
    }

    #[test]
    fn strided_batches_and_a_shared_operand() {
        let (m, n, k, batch) = (5, 3, 4, 3);
        let mut rng = Rng(7);
        let a = rng.fill(m * k * batch);
        // B is shared by every batch (stride 0), C padded between batches.
        let b = rng.fill(k * n);
        let stride_c = m * n + 2;
        let ha = Host::new(DataType::F32, &a);
        let hb = Host::new(DataType::F32, &b);
        let mut hc = Host::new(DataType::F32, &vec![-9.0; stride_c * batch]);
        let g = GemmEx {
            transa: Operation::N,
            transb: Operation::N,
            m: m as i32,
            n: n as i32,
            k: k as i32,
            alpha: 1.0,
            a: ha.ptr(),
            atype: DataType::F32,
            lda: m as i32,
            b: hb.ptr(),
            btype: DataType::F32,
            ldb: k as i32,
            beta: 0.0,
            c: hc.ptr_mut(),
            ctype: DataType::F32,
            ldc: m as i32,
            compute: ComputeType::F32,
        };
        let s = BatchStrides {
            stride_a: (m * k) as i64,
            stride_b: 0,
            stride_c: stride_c as i64,
            batch_count: batch as i32,
        };
        // SAFETY: every batch's operands lie inside the buffers.
        unsafe { gemm_strided_batched_ex(&g, &s) }.unwrap();
        let got = hc.values();
        for bi in 0..batch {
            let want = reference(
                Operation::N,
                Operation::N,
                (m, n, k),
                1.0,
                &a[bi * m * k..],
                m,
                &b,
                k,
                0.0,
                &vec![0.0; m * n],
                m,
            );
            for (i, w) in want.iter().enumerate() {
                let g = got[bi * stride_c + i] as f64;
                assert!((g - w).abs() < 1e-5, "batch {bi} element {i}: {g} vs {w}");
            }
            // The gap between batches is untouched.
            assert_eq!(got[bi * stride_c + m * n], -9.0);
        }
    }

    #[test]
    fn lt_bias_broadcasts_along_the_rows_of_d_before_the_rounding() {
        // D (m x n = 3 x 2) = Aᵀ·B + bias, A stored k x m (ld 4 > 2), B k x n.
        let (m, n, k) = (3usize, 2usize, 2usize);
        // Row 0 of op(A) is (1, 2^-8): its product with column 0 of B, 1 + 2^-8, lies halfway
        // between two bf16 values (spacing 2^-7 at 1) and would round to 1 on its own; with the
        // bias 2^-8 added first the sum 1 + 2^-7 is exact.
        let e = 2f32.powi(-8);
        let a = Host::new(
            DataType::Bf16,
            &[1.0, e, 0.0, 0.0, 3.0, 4.0, 0.0, 0.0, 5.0, 6.0, 0.0, 0.0],
        );
        let b = Host::new(DataType::Bf16, &[1.0, 1.0, 1.0, -1.0]);
        let bias = Host::new(DataType::Bf16, &[e, 0.5, -1.0]);
        let mut d = Host::new(DataType::Bf16, &[0.0; 6]);
        let layout = |rows: usize, cols: usize, ld: usize| LtLayout {
            dtype: DataType::Bf16,
            rows: rows as u64,
            cols: cols as u64,
            ld: ld as i64,
        };
        let p = LtMatmulBias {
            compute: ComputeType::F32,
            transa: Operation::T,
            transb: Operation::N,
            alpha: 1.0,
            a: a.ptr(),
            a_layout: layout(k, m, 4),
            b: b.ptr(),
            b_layout: layout(k, n, k),
            beta: 0.0,
            c: d.ptr(),
            c_layout: layout(m, n, m),
            d: d.ptr_mut(),
            d_layout: layout(m, n, m),
            bias: bias.ptr(),
        };
        // SAFETY: the buffers hold the layouts' extents and m bias elements.
        unsafe { lt_matmul_bias(&p) }.unwrap();
        // Aᵀ·B = [[1 + 2^-8, 1 - 2^-8], [7, -1], [11, -1]], plus bias[i] on row i.
        assert_eq!(d.values(), vec![1.0 + 2.0 * e, 7.5, 10.0, 1.0, -0.5, -2.0]);

        // Layouts that do not chain, and a leading dimension below the rows, are invalid.
        // SAFETY: both calls fail their checks before reading.
        unsafe {
            let bad = LtMatmulBias {
                a_layout: layout(k, m + 1, 4),
                ..p
            };
            assert!(lt_matmul_bias(&bad)
                .unwrap_err()
                .to_string()
                .contains("do not chain"));
            let bad = LtMatmulBias {
                a_layout: layout(k, m, 1),
                ..p
            };
            assert!(lt_matmul_bias(&bad)
                .unwrap_err()
                .to_string()
                .contains("leading dimension"));
        }
    }
}
