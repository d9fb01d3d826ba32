//! Fused half copies: the f16/bf16 copies autocast reads ([`Param::half`]) of several parameters
//! kept one after another in one contiguous buffer, concatenated along dim 0: the `[3H, H]`
//! weight and `[3H]` bias of BERT's fused QKV projection, so q, k and v come out of one GEMM.
//!
//! Each parameter's kept copy is its run of the buffer (a view), so the AdamW kernel writes the
//! three runs in place with the update (`step_params` passes the buffer once and each run's
//! offset, `AdamW::step_with_fused_half_copies`), and the f32 parameters, their names and the
//! checkpoint stay three separate tensors, as in HF. The buffer is built (one cast per parameter,
//! counted as weight casts) the first time and whenever a copy is no longer current or no
//! longer a run of one buffer (a parameter set by hand, a copy-on-write in the optimizer).

use crate::Param;
use autograd::Var;
use tensor::{DType, Device, Result, Tensor};

/// The parameters' values concatenated along dim 0 in `dtype` (f16/bf16), read from their kept
/// fused copy, as a graph node whose gradient is cut back into each parameter's rows and cast
/// to f32 (`Var::cat_cast_as`). None when a parameter is on the CPU, not f32 or rank 0 (the
/// unfused path applies), or for an empty list.
pub fn fused_half(params: &[&Param], dtype: DType) -> Result<Option<Var>> {
    let vars: Vec<Var> = params.iter().map(|p| p.var()).collect();
    let unfit = |v: &Var| {
        v.value().device() == Device::Cpu || v.value().dtype() != DType::F32 || v.shape().is_empty()
    };
    if vars.is_empty() || vars.iter().any(unfit) {
        return Ok(None);
    }
    let kept: Option<Vec<Tensor>> = params.iter().map(|p| p.current_half(dtype)).collect();
    let whole = match kept.as_deref().and_then(runs_of_one_buffer) {
        Some(whole) => whole,
        None => {
            for v in &vars {
                v.value().device().note_weight_cast()?;
            }
            let values: Vec<&Tensor> = vars.iter().map(|v| v.value()).collect();
            let whole = Tensor::cat(&values, 0)?.to_dtype(dtype)?;
            let mut start = 0;
            for (p, v) in params.iter().zip(&vars) {
                let rows = v.shape()[0];
                p.put_half(whole.narrow(0, start, rows)?);
                start += rows;
            }
            whole
        }
    };
    Ok(Some(Var::cat_cast_as(&vars, whole)?))
}

/// The buffer `[Σ rows, ..]` when `copies` are consecutive contiguous runs of one storage from
/// its start to its end (what [`fused_half`] keeps); None otherwise.
fn runs_of_one_buffer(copies: &[Tensor]) -> Option<Tensor> {
    let first = copies.first()?;
    let mut offset = 0;
    for c in copies {
        let run = c.same_storage(first) && c.is_contiguous() && c.layout().offset() == offset;
        if !run || c.shape().get(1..) != first.shape().get(1..) {
            return None;
        }
        offset += c.elem_count();
    }
    let base = first.base();
    if offset != base.elem_count() {
        return None;
    }
    let mut shape = first.shape().to_vec();
    shape[0] = copies.iter().map(|c| c.shape()[0]).sum();
    base.reshape(&shape).ok()
}
