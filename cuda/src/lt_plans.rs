//! cuBLASLt plans for the bias GEMM (`blas::gemm_bias`), made once per problem and cached on the
//! `Gpu`: the matmul descriptor, the three matrix layouts and the algorithm the heuristic chose.
//! A Linear forward then costs one `cublasLtMatmulDescSetAttribute` (the bias pointer) and the
//! matmul itself, instead of five descriptors, a preference and a heuristic query per call.
//!
//! The key ([`PlanKey`]) is everything the heuristic's answer depends on: the column-major
//! shape (m, n, k), the transposes, the leading dimensions, the element type, the compute mode
//! and the alignment in bytes of every pointer (A, B, C/D, bias). The alignment comes from the
//! actual addresses: an offset view (a narrowed or sliced operand) may be only 2- or 4-byte
//! aligned, and the preference tells the heuristic so (`MIN_ALIGNMENT_*_BYTES`), so it never
//! picks a kernel that needs 16-byte loads for such a pointer.
//!
//! When the heuristic finds no algorithm, the plan says so ([`LtPlan::NoAlgorithm`]) and the
//! caller computes C = bias (broadcast copy) then C += A·B with plain cuBLAS. The simulator's
//! plans carry no descriptors; its queries are counted like the real ones, so the counters read
//! the same on both backends.

use crate::counters::Count;
use crate::gpu::Gpu;
use crate::Result;
use cudarc::cublaslt::sys as lt;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// What a plan depends on (module docs). Shapes and leading dimensions are cuBLAS's (the
/// swapped, column-major product).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) struct PlanKey {
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub trans_a: bool,
    pub trans_b: bool,
    pub ld_a: i32,
    pub ld_b: i32,
    pub ldc: i32,
    pub dtype: crate::ElemType,
    pub tf32: bool,
    /// Alignment in bytes of cuBLAS's A, B, C = D and the bias pointers (powers of two, <= 256).
    pub align: [u32; 4],
}

/// The largest power of two (up to 256) dividing `addr`: the alignment the heuristic may assume.
pub(crate) fn alignment(addr: u64) -> u32 {
    1 << addr.trailing_zeros().min(8)
}

/// A cached plan.
pub(crate) enum LtPlan {
    /// Descriptors and algorithm for a real GPU.
    Cuda(CudaPlan),
    /// A simulated device: the simulated cuBLASLt runs any problem.
    Simulated,
    /// The heuristic found no algorithm: plain GEMM + bias.
    NoAlgorithm,
}

/// The plan's cuBLASLt objects, destroyed with it.
pub(crate) struct CudaPlan {
    pub desc: lt::cublasLtMatmulDesc_t,
    pub la: lt::cublasLtMatrixLayout_t,
    pub lb: lt::cublasLtMatrixLayout_t,
    pub lc: lt::cublasLtMatrixLayout_t,
    pub algo: lt::cublasLtMatmulAlgo_t,
}

// SAFETY: the descriptors are plain host objects; they are used only under the BLAS handles'
// call lock (`blas::Blas::calls`).
unsafe impl Send for CudaPlan {}
unsafe impl Sync for CudaPlan {}

impl Drop for CudaPlan {
    fn drop(&mut self) {
        // SAFETY: created by the Create calls in `CudaPlan::new`, destroyed once.
        unsafe {
            let _ = lt::cublasLtMatrixLayoutDestroy(self.la);
            let _ = lt::cublasLtMatrixLayoutDestroy(self.lb);
            let _ = lt::cublasLtMatrixLayoutDestroy(self.lc);
            let _ = lt::cublasLtMatmulDescDestroy(self.desc);
        }
    }
}

use crate::blas::lt_check;

/// cuBLASLt's TRANSA / TRANSB attribute value: a `cublasOperation_t` as i32 (N = 0, T = 1).
fn lt_op(t: bool) -> i32 {
    t as i32
}

impl CudaPlan {
    /// The descriptors for `key` and the heuristic's best algorithm (None when it has none).
    ///
    /// # Safety
    /// `handle` must be a live cuBLASLt handle used by no other thread during the call.
    pub unsafe fn new(
        handle: lt::cublasLtHandle_t,
        key: &PlanKey,
        element: lt::cudaDataType,
        workspace: usize,
    ) -> Result<Option<CudaPlan>> {
        let ct = if key.tf32 {
            lt::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            lt::cublasComputeType_t::CUBLAS_COMPUTE_32F
        };
        // SAFETY (whole body): out-pointers to live locals; every created object is owned by
        // `plan` (or `pref`) and destroyed by its drop.
        unsafe {
            let mut desc = std::ptr::null_mut();
            lt_check(
                "cublasLtMatmulDescCreate",
                lt::cublasLtMatmulDescCreate(&mut desc, ct, lt::cudaDataType::CUDA_R_32F),
            )?;
            let mut plan = CudaPlan {
                desc,
                la: std::ptr::null_mut(),
                lb: std::ptr::null_mut(),
                lc: std::ptr::null_mut(),
                algo: lt::cublasLtMatmulAlgo_t { data: [0; 8] },
            };
            let set = |attr: lt::cublasLtMatmulDescAttributes_t, v: *const c_void, size: usize| {
                lt_check(
                    "cublasLtMatmulDescSetAttribute",
                    lt::cublasLtMatmulDescSetAttribute(desc, attr, v, size),
                )
            };
            use lt::cublasLtMatmulDescAttributes_t as D;
            let (ta, tb) = (lt_op(key.trans_a), lt_op(key.trans_b));
            set(D::CUBLASLT_MATMUL_DESC_TRANSA, &ta as *const i32 as _, 4)?;
            set(D::CUBLASLT_MATMUL_DESC_TRANSB, &tb as *const i32 as _, 4)?;
            let epilogue = lt::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS;
            set(
                D::CUBLASLT_MATMUL_DESC_EPILOGUE,
                &epilogue as *const _ as *const c_void,
                std::mem::size_of_val(&epilogue),
            )?;
            // Stored shapes (before the op) of A (m x k, or k x m transposed) and B.
            let (m, n, k) = (key.m as u64, key.n as u64, key.k as u64);
            let a_dims = if key.trans_a { (k, m) } else { (m, k) };
            let b_dims = if key.trans_b { (n, k) } else { (k, n) };
            let layout =
                |(rows, cols): (u64, u64), ld: i32| -> Result<lt::cublasLtMatrixLayout_t> {
                    let mut l = std::ptr::null_mut();
                    lt_check(
                        "cublasLtMatrixLayoutCreate",
                        lt::cublasLtMatrixLayoutCreate(&mut l, element, rows, cols, ld as i64),
                    )?;
                    Ok(l)
                };
            plan.la = layout(a_dims, key.ld_a)?;
            plan.lb = layout(b_dims, key.ld_b)?;
            plan.lc = layout((m, n), key.ldc)?;
            let mut pref = std::ptr::null_mut();
            lt_check(
                "cublasLtMatmulPreferenceCreate",
                lt::cublasLtMatmulPreferenceCreate(&mut pref),
            )?;
            struct Pref(lt::cublasLtMatmulPreference_t);
            impl Drop for Pref {
                fn drop(&mut self) {
                    // SAFETY: created above, destroyed once.
                    let _ = unsafe { lt::cublasLtMatmulPreferenceDestroy(self.0) };
                }
            }
            let pref = Pref(pref);
            use lt::cublasLtMatmulPreferenceAttributes_t as P;
            let set_pref = |attr: P, v: *const c_void, size: usize| {
                lt_check(
                    "cublasLtMatmulPreferenceSetAttribute",
                    lt::cublasLtMatmulPreferenceSetAttribute(pref.0, attr, v, size),
                )
            };
            set_pref(
                P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &workspace as *const usize as _,
                std::mem::size_of::<usize>(),
            )?;
            let [a, b, c, _] = key.align;
            for (attr, bytes) in [
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, a),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, b),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, c),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, c),
            ] {
                set_pref(attr, &bytes as *const u32 as _, 4)?;
            }
            let mut heuristic =
                std::mem::MaybeUninit::<lt::cublasLtMatmulHeuristicResult_t>::zeroed();
            let mut found = 0;
            let s = lt::cublasLtMatmulAlgoGetHeuristic(
                handle,
                desc,
                plan.la,
                plan.lb,
                plan.lc,
                plan.lc,
                pref.0,
                1,
                heuristic.as_mut_ptr(),
                &mut found,
            );
            let ok = s == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS;
            if s == lt::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED || (ok && found == 0) {
                return Ok(None);
            }
            lt_check("cublasLtMatmulAlgoGetHeuristic", s)?;
            plan.algo = heuristic.assume_init().algo;
            Ok(Some(plan))
        }
    }
}

/// The plans of one GPU, by key.
#[derive(Default)]
pub(crate) struct PlanCache {
    plans: Mutex<HashMap<PlanKey, Arc<LtPlan>>>,
    /// A testing aid: every new plan is [`LtPlan::NoAlgorithm`].
    pub force_fallback: std::sync::atomic::AtomicBool,
}

impl PlanCache {
    /// The plan for `key`, made by `make` (one heuristic query, counted) on first use.
    pub fn get(
        &self,
        gpu: &Gpu,
        key: PlanKey,
        make: impl FnOnce() -> Result<LtPlan>,
    ) -> Result<Arc<LtPlan>> {
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = plans.get(&key) {
            return Ok(p.clone());
        }
        gpu.count(Count::HeuristicQuery, 1);
        let plan = if self
            .force_fallback
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            LtPlan::NoAlgorithm
        } else {
            make()?
        };
        let plan = Arc::new(plan);
        plans.insert(key, plan.clone());
        Ok(plan)
    }

    /// Forgets every plan.
    pub fn clear(&self) {
        self.plans.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_is_the_largest_power_of_two_dividing_the_address() {
        assert_eq!(alignment(0x1000), 256);
        assert_eq!(alignment(0x1010), 16);
        assert_eq!(alignment(0x1002), 2);
        assert_eq!(alignment(0x1004), 4);
        assert_eq!(alignment(0x1001), 1);
    }
}
