//! Matrix products through cuBLAS (`cublasGemmEx`, `cublasGemmStridedBatchedEx`) and cuBLASLt
//! (the bias epilogue), on row-major operands without copies.
//!
//! Layout: an operand is a [`Mat`]: `rows x cols` elements of a buffer at `offset`, element
//! (i, j) at `offset + i * row_stride + j * col_stride`, batch b at `+ b * batch_stride`. One of
//! the two strides must be 1 (or its dim 1): a row-major matrix (col_stride 1) or a transposed
//! view of one (row_stride 1, e.g. `K^T` of a row-major `K`). The output is row-major (col_stride
//! 1, any row stride >= cols). cuBLAS is column-major, so C = A·B is issued as Cᵀ = Bᵀ·Aᵀ: a
//! row-major operand is its own transpose in column-major terms (op N), a transposed view is op T.
//!
//! Precision: f32 operands compute in f32 ([`MathMode::Exact`]) or, opted in, with TF32 tensor
//! cores ([`MathMode::Tf32`], 10-bit mantissa products, f32 accumulation); f16 and bf16 operands
//! always accumulate in f32 (`CUBLAS_COMPUTE_32F`), alpha and beta are f32.

use crate::buffer::{DeviceBuffer, DeviceElem};
use crate::counters::Count;
use crate::error::bail;
use crate::gpu::Gpu;
use crate::lt_plans::{alignment, CudaPlan, LtPlan, PlanKey};
use crate::sim::cublas as sim;
use crate::{Error, Result};
use cudarc::cublas::sys as cb;
use cudarc::cublaslt::sys as lt;
use half::{bf16, f16};
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// How f32 products are computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MathMode {
    /// Full f32 arithmetic.
    #[default]
    Exact,
    /// TF32 tensor cores for f32 operands (ignored for f16/bf16).
    Tf32,
}

/// An element type cuBLAS multiplies with f32 accumulation (`SIM`: the same type for the
/// simulated cuBLAS).
pub trait GemmElem: DeviceElem {
    const CUBLAS: cb::cudaDataType;
    const CUBLASLT: lt::cudaDataType;
    const SIM: sim::DataType;
}

impl GemmElem for f32 {
    const CUBLAS: cb::cudaDataType = cb::cudaDataType::CUDA_R_32F;
    const CUBLASLT: lt::cudaDataType = lt::cudaDataType::CUDA_R_32F;
    const SIM: sim::DataType = sim::DataType::F32;
}
impl GemmElem for f16 {
    const CUBLAS: cb::cudaDataType = cb::cudaDataType::CUDA_R_16F;
    const CUBLASLT: lt::cudaDataType = lt::cudaDataType::CUDA_R_16F;
    const SIM: sim::DataType = sim::DataType::F16;
}
impl GemmElem for bf16 {
    const CUBLAS: cb::cudaDataType = cb::cudaDataType::CUDA_R_16BF;
    const CUBLASLT: lt::cudaDataType = lt::cudaDataType::CUDA_R_16BF;
    const SIM: sim::DataType = sim::DataType::Bf16;
}

/// A read operand (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a, T: DeviceElem> {
    pub buf: &'a DeviceBuffer<T>,
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
    /// Elements between consecutive matrices of a batch (0 reuses one matrix for every batch).
    pub batch_stride: usize,
}

impl<'a, T: DeviceElem> Mat<'a, T> {
    /// A contiguous row-major `rows x cols` matrix at `offset`.
    pub fn row_major(buf: &'a DeviceBuffer<T>, offset: usize, rows: usize, cols: usize) -> Self {
        Mat {
            buf,
            offset,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
            batch_stride: rows * cols,
        }
    }

    /// The transposed view (no data moves).
    pub fn t(self) -> Self {
        Mat {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }
}

/// The written operand: row-major (col stride 1).
#[derive(Debug)]
pub struct MatMut<'a, T: DeviceElem> {
    pub buf: &'a mut DeviceBuffer<T>,
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub batch_stride: usize,
}

impl<'a, T: DeviceElem> MatMut<'a, T> {
    /// A contiguous row-major `rows x cols` output at `offset`.
    pub fn row_major(
        buf: &'a mut DeviceBuffer<T>,
        offset: usize,
        rows: usize,
        cols: usize,
    ) -> Self {
        MatMut {
            buf,
            offset,
            rows,
            cols,
            row_stride: cols,
            batch_stride: rows * cols,
        }
    }
}

/// A cuBLAS handle, destroyed on drop.
struct CublasHandle(cb::cublasHandle_t);

impl Drop for CublasHandle {
    fn drop(&mut self) {
        // SAFETY: created by cublasCreate, destroyed once; errors cannot be reported here.
        let _ = unsafe { cb::cublasDestroy_v2(self.0) };
    }
}

/// A cuBLASLt handle, destroyed on drop.
struct LtHandle(lt::cublasLtHandle_t);

impl Drop for LtHandle {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtCreate, destroyed once.
        let _ = unsafe { lt::cublasLtDestroy(self.0) };
    }
}

/// The cuBLAS and cuBLASLt handles of one GPU (bound to its stream) and cuBLASLt's workspace.
/// A handle must not be used by two threads at once: calls hold `calls`.
pub struct Blas {
    cublas: CublasHandle,
    lt: LtHandle,
    workspace: DeviceBuffer<u8>,
    calls: Mutex<()>,
}

// SAFETY: the raw handles are only used under `calls`, with the owning GPU's context bound.
unsafe impl Send for Blas {}
unsafe impl Sync for Blas {}

impl Blas {
    fn new(gpu: &Gpu) -> Result<Blas> {
        gpu.bind()?;
        let cublas = CublasHandle(
            cudarc::cublas::result::create_handle().map_err(|e| Error::blas("cublasCreate", e))?,
        );
        // SAFETY: a live handle and our stream.
        let stream = gpu.cuda_stream("cuBLAS")?.cu_stream();
        unsafe { cudarc::cublas::result::set_stream(cublas.0, stream as _) }
            .map_err(|e| Error::blas("cublasSetStream", e))?;
        let lt = LtHandle(
            cudarc::cublaslt::result::create_handle()
                .map_err(|e| Error::blas("cublasLtCreate", e))?,
        );
        // NVIDIA's recommendation: 32 MiB on Hopper and newer, 4 MiB before.
        let bytes = if gpu.compute_capability().0 >= 9 {
            32 << 20
        } else {
            4 << 20
        };
        Ok(Blas {
            cublas,
            lt,
            workspace: gpu.alloc::<u8>(bytes)?,
            calls: Mutex::new(()),
        })
    }
}

impl Gpu {
    /// This GPU's BLAS handles, created on first use.
    pub(crate) fn blas_handles(&self) -> Result<Arc<Blas>> {
        let mut slot = self.blas.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = slot.as_ref() {
            return Ok(b.clone());
        }
        let b = Arc::new(crate::gpu::guard("creating the cuBLAS handles", || {
            Blas::new(self)
        })??);
        *slot = Some(b.clone());
        Ok(b)
    }
}

/// How cuBLAS sees one read operand: transposed or not (in column-major terms, for the swapped
/// product) and its leading dimension.
fn blas_operand(
    op: &'static str,
    which: &str,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
) -> Result<(bool, usize)> {
    if rows == 0 || cols == 0 {
        // No element is read; any leading dimension cuBLAS accepts will do.
        return Ok((false, cols.max(1)));
    }
    if cs == 1 || cols <= 1 {
        let ld = if rows <= 1 { cols.max(1) } else { rs };
        if ld >= cols.max(1) {
            return Ok((false, ld));
        }
    }
    if rs == 1 || rows <= 1 {
        let ld = if cols <= 1 { rows.max(1) } else { cs };
        if ld >= rows.max(1) {
            return Ok((true, ld));
        }
    }
    bail!(
        op,
        "{which} ({rows}x{cols}, strides {rs}, {cs}) is neither row-major nor a transposed row-major view; make it contiguous first"
    )
}

/// Checks a read operand's extent against its buffer; returns its device address.
fn mat_address<T: DeviceElem>(op: &'static str, m: &Mat<'_, T>, batch: usize) -> Result<u64> {
    if m.rows == 0 || m.cols == 0 || batch == 0 {
        return Ok(0);
    }
    let span =
        (m.rows - 1) * m.row_stride + (m.cols - 1) * m.col_stride + (batch - 1) * m.batch_stride;
    m.buf.address_at(op, m.offset, span + 1)
}

fn to_i32(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| Error::arg(op, format!("{what} = {v} exceeds cuBLAS's 32-bit limit")))
}

/// The checked, column-major form of C = A·B (per batch).
struct Plan {
    m: i32,
    n: i32,
    k: i32,
    /// cuBLAS's first operand is our B.
    trans_b: bool,
    ld_b: i32,
    trans_a: bool,
    ld_a: i32,
    ldc: i32,
    a: u64,
    b: u64,
    c: u64,
}

fn plan<T: DeviceElem>(
    op: &'static str,
    gpu: &Gpu,
    a: &Mat<'_, T>,
    b: &Mat<'_, T>,
    c: &MatMut<'_, T>,
    batch: usize,
) -> Result<Plan> {
    for buf_ordinal in [a.buf.ordinal(), b.buf.ordinal(), c.buf.ordinal()] {
        if buf_ordinal != gpu.ordinal() {
            bail!(
                op,
                "an operand on cuda:{buf_ordinal} was passed to cuda:{}",
                gpu.ordinal()
            );
        }
    }
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k || c.rows != m || c.cols != n {
        bail!(
            op,
            "shapes do not chain: A {}x{}, B {}x{}, C {}x{}",
            a.rows,
            a.cols,
            b.rows,
            b.cols,
            c.rows,
            c.cols
        );
    }
    let (trans_a, ld_a) = blas_operand(op, "A", a.rows, a.cols, a.row_stride, a.col_stride)?;
    let (trans_b, ld_b) = blas_operand(op, "B", b.rows, b.cols, b.row_stride, b.col_stride)?;
    let ldc = if m <= 1 { n.max(1) } else { c.row_stride };
    if ldc < n.max(1) {
        bail!(
            op,
            "C's row stride {} is smaller than its {n} columns",
            c.row_stride
        );
    }
    let c_addr = if m == 0 || n == 0 || batch == 0 {
        0
    } else {
        let span = (m - 1) * c.row_stride + (n - 1) + (batch - 1) * c.batch_stride;
        c.buf.address_at(op, c.offset, span + 1)?
    };
    Ok(Plan {
        m: to_i32(op, "m", m)?,
        n: to_i32(op, "n", n)?,
        k: to_i32(op, "k", k)?,
        trans_b,
        ld_b: to_i32(op, "ldb", ld_b)?,
        trans_a,
        ld_a: to_i32(op, "lda", ld_a)?,
        ldc: to_i32(op, "ldc", ldc)?,
        a: mat_address(op, a, batch)?,
        b: mat_address(op, b, batch)?,
        c: c_addr,
    })
}

impl Plan {
    /// The swapped column-major call (Cᵀ = Bᵀ·Aᵀ) for the simulated cuBLAS.
    fn sim_gemm<T: GemmElem>(&self, alpha: f32, beta: f32, math: MathMode) -> sim::GemmEx {
        let op = |t: bool| {
            if t {
                sim::Operation::T
            } else {
                sim::Operation::N
            }
        };
        let tf32 = T::TYPE == crate::ElemType::F32 && math == MathMode::Tf32;
        sim::GemmEx {
            transa: op(self.trans_b),
            transb: op(self.trans_a),
            m: self.n,
            n: self.m,
            k: self.k,
            alpha,
            a: self.b as *const c_void,
            atype: T::SIM,
            lda: self.ld_b,
            b: self.a as *const c_void,
            btype: T::SIM,
            ldb: self.ld_a,
            beta,
            c: self.c as *mut c_void,
            ctype: T::SIM,
            ldc: self.ldc,
            compute: if tf32 {
                sim::ComputeType::F32FastTf32
            } else {
                sim::ComputeType::F32
            },
        }
    }
}

fn cublas_op(t: bool) -> cb::cublasOperation_t {
    if t {
        cb::cublasOperation_t::CUBLAS_OP_T
    } else {
        cb::cublasOperation_t::CUBLAS_OP_N
    }
}

fn compute_type<T: GemmElem>(math: MathMode) -> cb::cublasComputeType_t {
    if T::TYPE == crate::ElemType::F32 && math == MathMode::Tf32 {
        cb::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
    } else {
        cb::cublasComputeType_t::CUBLAS_COMPUTE_32F
    }
}

/// C = alpha · A·B + beta · C for each of `batch` matrices (strided batch: each operand's
/// `batch_stride`). Asynchronous on the GPU's stream. With k = 0, C = beta · C.
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: GemmElem>(
    gpu: &Gpu,
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    c: MatMut<'_, T>,
    batch: usize,
    alpha: f32,
    beta: f32,
    math: MathMode,
) -> Result<()> {
    const OP: &str = "gemm";
    let p = plan(OP, gpu, &a, &b, &c, batch)?;
    if p.m == 0 || p.n == 0 || batch == 0 {
        return Ok(());
    }
    gpu.count(Count::Gemm, 1);
    if let Some(device) = gpu.sim() {
        let g = p.sim_gemm::<T>(alpha, beta, math);
        let strides = sim::BatchStrides {
            stride_a: b.batch_stride as i64,
            stride_b: a.batch_stride as i64,
            stride_c: c.batch_stride as i64,
            batch_count: batch as i32,
        };
        // SAFETY: as for cuBLAS below: every operand's extent was checked against its buffer,
        // and a simulated buffer's device address is its host address.
        return device
            .ordered(|| unsafe { sim::gemm_strided_batched_ex(&g, &strides) })
            .map_err(|s| Error::blas("cublasGemmStridedBatchedEx (simulated)", s));
    }
    let blas = gpu.blas_handles()?;
    let _calls = blas.calls.lock().unwrap_or_else(|p| p.into_inner());
    gpu.bind()?;
    let ct = compute_type::<T>(math);
    let algo = cb::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT;
    // SAFETY: every operand's extent was checked against its buffer; the scalars are host f32
    // (the handle's default pointer mode); the call is ordered on the GPU's stream.
    let r = crate::gpu::guard("cublasGemmEx", || unsafe {
        if batch == 1 {
            cudarc::cublas::result::gemm_ex(
                blas.cublas.0,
                cublas_op(p.trans_b),
                cublas_op(p.trans_a),
                p.n,
                p.m,
                p.k,
                &alpha as *const f32 as *const c_void,
                p.b as *const c_void,
                T::CUBLAS,
                p.ld_b,
                p.a as *const c_void,
                T::CUBLAS,
                p.ld_a,
                &beta as *const f32 as *const c_void,
                p.c as *mut c_void,
                T::CUBLAS,
                p.ldc,
                ct,
                algo,
            )
        } else {
            cudarc::cublas::result::gemm_strided_batched_ex(
                blas.cublas.0,
                cublas_op(p.trans_b),
                cublas_op(p.trans_a),
                p.n,
                p.m,
                p.k,
                &alpha as *const f32 as *const c_void,
                p.b as *const c_void,
                T::CUBLAS,
                p.ld_b,
                b.batch_stride as i64,
                p.a as *const c_void,
                T::CUBLAS,
                p.ld_a,
                a.batch_stride as i64,
                &beta as *const f32 as *const c_void,
                p.c as *mut c_void,
                T::CUBLAS,
                p.ldc,
                c.batch_stride as i64,
                batch as i32,
                ct,
                algo,
            )
        }
    })?;
    r.map_err(|e| Error::blas("cublasGemmEx", e))
}

/// C = A·B + bias (bias has `cols(C)` elements, added to every row), through cuBLASLt's bias
/// epilogue: the Linear layer's forward in one kernel. One matrix (no batch). The cuBLASLt plan
/// (descriptors and algorithm) is made on the first call for a problem and cached on the GPU
/// (`lt_plans.rs`): later calls ask the heuristic nothing. When no algorithm fits, C is set to
/// the bias and the product added by plain cuBLAS (beta = 1).
pub fn gemm_bias<T: GemmElem>(
    gpu: &Gpu,
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    bias: (&DeviceBuffer<T>, usize),
    c: MatMut<'_, T>,
    math: MathMode,
) -> Result<()> {
    const OP: &str = "gemm_bias";
    let p = plan(OP, gpu, &a, &b, &c, 1)?;
    if bias.0.ordinal() != gpu.ordinal() {
        bail!(
            OP,
            "the bias is on cuda:{} and the product on cuda:{}",
            bias.0.ordinal(),
            gpu.ordinal()
        );
    }
    if p.m == 0 || p.n == 0 {
        return Ok(());
    }
    let bias_addr = bias.0.address_at(OP, bias.1, p.n as usize)?;
    // cuBLAS's operands: A' = our B, B' = our A (module docs).
    let key = PlanKey {
        m: p.n,
        n: p.m,
        k: p.k,
        trans_a: p.trans_b,
        trans_b: p.trans_a,
        ld_a: p.ld_b,
        ld_b: p.ld_a,
        ldc: p.ldc,
        dtype: T::TYPE,
        tf32: T::TYPE == crate::ElemType::F32 && math == MathMode::Tf32,
        align: [p.b, p.a, p.c, bias_addr].map(alignment),
    };
    let lt_plan = gpu.lt_plans.get(gpu, key, || make_plan::<T>(gpu, &key))?;
    match &*lt_plan {
        LtPlan::NoAlgorithm => bias_then_gemm(gpu, a, b, bias, c, math),
        LtPlan::Simulated => {
            gpu.count(Count::Gemm, 1);
            let Some(device) = gpu.sim() else {
                bail!(OP, "a simulated cuBLASLt plan reached a real GPU");
            };
            let g = p.sim_gemm::<T>(1.0, 0.0, math);
            let layout = |(rows, cols): (u64, u64), ld: i32| sim::LtLayout {
                dtype: T::SIM,
                rows,
                cols,
                ld: ld as i64,
            };
            let (n, m, k) = (p.n as u64, p.m as u64, p.k as u64);
            let d = layout((n, m), p.ldc);
            let lt = sim::LtMatmulBias {
                compute: g.compute,
                transa: g.transa,
                transb: g.transb,
                alpha: 1.0,
                a: g.a,
                a_layout: layout(if p.trans_b { (k, n) } else { (n, k) }, p.ld_b),
                b: g.b,
                b_layout: layout(if p.trans_a { (m, k) } else { (k, m) }, p.ld_a),
                beta: 0.0,
                c: g.c,
                c_layout: d,
                d: g.c,
                d_layout: d,
                bias: bias_addr as *const c_void,
            };
            // SAFETY: every operand's extent and the bias's were checked against their buffers.
            device
                .ordered(|| unsafe { sim::lt_matmul_bias(&lt) })
                .map_err(|s| Error::blas("cublasLtMatmul (simulated)", s))
        }
        LtPlan::Cuda(plan) => {
            gpu.count(Count::Gemm, 1);
            let blas = gpu.blas_handles()?;
            let _calls = blas.calls.lock().unwrap_or_else(|p| p.into_inner());
            gpu.bind()?;
            let stream = gpu.cuda_stream("cuBLASLt")?.cu_stream();
            crate::gpu::guard("cublasLtMatmul", || -> Result<()> {
                // SAFETY: the plan's descriptors are live and used under the call lock; every
                // pointer is a checked device address; the call is ordered on the GPU's stream.
                unsafe {
                    lt_check(
                        "cublasLtMatmulDescSetAttribute",
                        lt::cublasLtMatmulDescSetAttribute(
                            plan.desc,
                            lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                            &bias_addr as *const u64 as *const c_void,
                            std::mem::size_of::<u64>(),
                        ),
                    )?;
                    let (alpha, beta) = (1.0f32, 0.0f32);
                    lt_check(
                        "cublasLtMatmul",
                        lt::cublasLtMatmul(
                            blas.lt.0,
                            plan.desc,
                            &alpha as *const f32 as *const c_void,
                            p.b as *const c_void,
                            plan.la,
                            p.a as *const c_void,
                            plan.lb,
                            &beta as *const f32 as *const c_void,
                            p.c as *const c_void,
                            plan.lc,
                            p.c as *mut c_void,
                            plan.lc,
                            &plan.algo,
                            blas.workspace.device_address() as *mut c_void,
                            blas.workspace.len(),
                            stream as _,
                        ),
                    )
                }
            })?
        }
    }
}

/// The plan of `key` (one heuristic query on a real GPU; the caller counts it).
fn make_plan<T: GemmElem>(gpu: &Gpu, key: &PlanKey) -> Result<LtPlan> {
    if gpu.sim().is_some() {
        return Ok(LtPlan::Simulated);
    }
    let blas = gpu.blas_handles()?;
    let _calls = blas.calls.lock().unwrap_or_else(|p| p.into_inner());
    gpu.bind()?;
    let ws = blas.workspace.len();
    // SAFETY: our handle, used under the call lock.
    let made = crate::gpu::guard("cublasLtMatmulAlgoGetHeuristic", || unsafe {
        CudaPlan::new(blas.lt.0, key, T::CUBLASLT, ws)
    })??;
    Ok(made.map_or(LtPlan::NoAlgorithm, LtPlan::Cuda))
}

/// The fallback of [`gemm_bias`]: C = bias on every row (a broadcast copy), then C += A·B.
fn bias_then_gemm<T: GemmElem>(
    gpu: &Gpu,
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    bias: (&DeviceBuffer<T>, usize),
    c: MatMut<'_, T>,
    math: MathMode,
) -> Result<()> {
    let shape = [c.rows, c.cols];
    let broadcast = crate::Strided::new(bias.0, bias.1, &[0, 1]);
    let c_strides = [c.row_stride, 1];
    crate::ops::elementwise::copy_into(gpu, &shape, broadcast, c.buf, c.offset, &c_strides)?;
    gemm(gpu, a, b, c, 1, 1.0, 1.0, math)
}

impl Gpu {
    /// A testing aid: while `on`, every new cuBLASLt plan behaves as if the heuristic found no
    /// algorithm, so [`gemm_bias`] takes its plain GEMM + bias path; the cached plans are
    /// forgotten either way.
    pub fn force_gemm_bias_fallback(&self, on: bool) {
        self.lt_plans
            .force_fallback
            .store(on, std::sync::atomic::Ordering::Relaxed);
        self.lt_plans.clear();
    }
}

pub(crate) fn lt_check(call: &'static str, s: lt::cublasStatus_t) -> Result<()> {
    if s == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(Error::blas(call, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operands_map_to_cublas_ops() {
        // Row-major 3x4: op N (in the swapped product), ld 4.
        assert_eq!(blas_operand("t", "A", 3, 4, 4, 1).unwrap(), (false, 4));
        // Its transposed view 4x3 (strides 1, 4): op T, ld 4.
        assert_eq!(blas_operand("t", "A", 4, 3, 1, 4).unwrap(), (true, 4));
        // A row of a wider matrix keeps its leading dimension.
        assert_eq!(blas_operand("t", "A", 3, 4, 10, 1).unwrap(), (false, 10));
        // Vectors: any stride on the size-1 dim.
        assert_eq!(blas_operand("t", "A", 1, 5, 0, 1).unwrap(), (false, 5));
        assert_eq!(blas_operand("t", "A", 5, 1, 1, 0).unwrap(), (false, 1));
        // Empty operands (k = 0) take any layout.
        assert_eq!(blas_operand("t", "A", 3, 0, 0, 1).unwrap(), (false, 1));
        // Neither layout: refused.
        assert!(blas_operand("t", "A", 3, 4, 8, 2).is_err());
        // Overlapping rows (ld < cols): refused.
        assert!(blas_operand("t", "A", 3, 4, 2, 1).is_err());
    }

    /// A row-major `rows x cols` matrix (`transposed`: a transposed view of a row-major
    /// `cols x rows` one), rows padded by one element: (storage, row stride, col stride).
    fn stored(
        rows: usize,
        cols: usize,
        transposed: bool,
        at: impl Fn(usize, usize) -> f32,
    ) -> (Vec<f32>, usize, usize) {
        let (outer, inner) = if transposed {
            (cols, rows)
        } else {
            (rows, cols)
        };
        let ld = inner + 1;
        let mut v = vec![f32::NAN; outer * ld];
        for i in 0..rows {
            for j in 0..cols {
                let (o, n) = if transposed { (j, i) } else { (i, j) };
                v[o * ld + n] = at(i, j);
            }
        }
        if transposed {
            (v, 1, ld)
        } else {
            (v, ld, 1)
        }
    }

    #[test]
    fn the_row_major_mapping_is_a_times_b_under_cublas_column_major_semantics() {
        use crate::sim::cublas::{gemm_ex, ComputeType, DataType, GemmEx, Operation};
        let (m, k, n) = (5usize, 7usize, 3usize);
        let a_at = |i: usize, p: usize| ((i * 3 + p * 5) % 7) as f32 - 3.0;
        let b_at = |p: usize, j: usize| ((p * 2 + j * 7) % 5) as f32 - 2.0;
        for a_t in [false, true] {
            for b_t in [false, true] {
                let (a, ars, acs) = stored(m, k, a_t, a_at);
                let (b, brs, bcs) = stored(k, n, b_t, b_at);
                let (trans_a, ld_a) = blas_operand("t", "A", m, k, ars, acs).unwrap();
                let (trans_b, ld_b) = blas_operand("t", "B", k, n, brs, bcs).unwrap();
                let ldc = n + 1;
                let mut c = vec![-7f32; m * ldc];
                let op = |t: bool| if t { Operation::T } else { Operation::N };
                // The swapped product as `gemm` issues it: Cᵀ (n x m) = Bᵀ · Aᵀ.
                let g = GemmEx {
                    transa: op(trans_b),
                    transb: op(trans_a),
                    m: n as i32,
                    n: m as i32,
                    k: k as i32,
                    alpha: 1.0,
                    a: b.as_ptr().cast(),
                    atype: DataType::F32,
                    lda: ld_b as i32,
                    b: a.as_ptr().cast(),
                    btype: DataType::F32,
                    ldb: ld_a as i32,
                    beta: 0.0,
                    c: c.as_mut_ptr().cast(),
                    ctype: DataType::F32,
                    ldc: ldc as i32,
                    compute: ComputeType::F32,
                };
                // SAFETY: every buffer holds its operand's extent at its leading dimension.
                unsafe { gemm_ex(&g) }.unwrap();
                for i in 0..m {
                    for j in 0..n {
                        let want: f32 = (0..k).map(|p| a_at(i, p) * b_at(p, j)).sum();
                        assert_eq!(c[i * ldc + j], want, "A{a_t} B{b_t} ({i}, {j})");
                    }
                    // The padding column of C is not written.
                    assert_eq!(c[i * ldc + n], -7.0);
                }
            }
        }
    }
}
