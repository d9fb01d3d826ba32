//! Optimizers: they alone hold mutable access to parameters and update them in place
//! (`Tensor::data_mut`), one fused pass over each parameter's f32 elements.
//!
//! Also the slice helpers shared by the optimisation modules: a read-only f32 view of a tensor
//! (borrowed when contiguous) and the size above which loops are split across rayon threads.

pub mod adamw;
mod params;

pub use adamw::{
    AdamW, AdamWConfig, AdamWVariant, ParamState, ParamUpdate, StateDict, DEFAULT_NO_DECAY,
};
pub use params::step_params;

use std::borrow::Cow;
use tensor::{DType, Result, Tensor};

/// Loops over more elements than this are split into `CHUNK`-sized pieces run by rayon.
pub(crate) const PAR_THRESHOLD: usize = 32 * 1024;
pub(crate) const CHUNK: usize = 8 * 1024;

/// The elements of an f32 tensor in row-major order: borrowed from the storage when the tensor is
/// contiguous, gathered into a new vector otherwise. `what` names the tensor in the error.
pub(crate) fn f32_values<'a>(
    t: &'a Tensor,
    op: &'static str,
    what: &str,
) -> Result<Cow<'a, [f32]>> {
    if t.dtype() != DType::F32 {
        tensor::bail!(op, "{what}: expected dtype f32, got {}", t.dtype());
    }
    let s = t.cpu_storage(op)?.as_slice::<f32>(op)?;
    Ok(match t.layout().contiguous_range() {
        Some(r) => Cow::Borrowed(&s[r]),
        None => Cow::Owned(t.to_vec::<f32>()?),
    })
}

/// The elements of an f32 tensor for in-place update (copy-on-write; see `Tensor::data_mut`).
pub(crate) fn f32_values_mut<'a>(
    t: &'a mut Tensor,
    op: &'static str,
    what: &str,
) -> Result<&'a mut [f32]> {
    if t.dtype() != DType::F32 {
        tensor::bail!(op, "{what}: expected dtype f32, got {}", t.dtype());
    }
    t.data_mut::<f32>()
}

/// `f` over consecutive `CHUNK`-sized pieces of `x` (rayon when `x` is large; one piece when
/// small), results in order, so any reduction of them is deterministic.
pub(crate) fn map_chunks<R: Send>(x: &[f32], f: impl Fn(&[f32]) -> R + Sync + Send) -> Vec<R> {
    use rayon::prelude::*;
    if x.len() > PAR_THRESHOLD {
        x.par_chunks(CHUNK).map(f).collect()
    } else {
        vec![f(x)]
    }
}

/// [`map_chunks`] with mutable pieces.
pub(crate) fn map_chunks_mut<R: Send>(
    x: &mut [f32],
    f: impl Fn(&mut [f32]) -> R + Sync + Send,
) -> Vec<R> {
    use rayon::prelude::*;
    if x.len() > PAR_THRESHOLD {
        x.par_chunks_mut(CHUNK).map(f).collect()
    } else {
        vec![f(x)]
    }
}
