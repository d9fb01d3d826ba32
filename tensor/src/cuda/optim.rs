//! The optimizer side of a training step on a GPU, for nn's `AdamW`, `clip_grad_norm` and
//! `LossScaler`: one multi-tensor kernel launch over every parameter or gradient of a model
//! (`cuda::ops::{adamw, grad_norm, loss_scale}`), on f32 tensors written in place
//! (copy-on-write, see [`Tensor::cuda_data_mut`]).
//!
//! Each function takes its tensors as a list, checks that they are f32 and on one GPU (errors
//! name the op and the list position; nn checks first and names the parameter), and issues one
//! launch. [`sum_of_squares`] and [`unscale`] wait for the GPU (one small copy each); the others
//! only queue work on its stream.
//!
//! Layout: any layout is accepted; a gradient that is a view is read through a contiguous copy,
//! and a tensor written in place becomes contiguous (same shape), as `data_mut` does on the CPU.

use super::rows::contig;
use super::{operands, same_device, CudaStorage};
use crate::{DType, Result, Tensor};
use cuda::ops::{adamw, grad_norm, loss_scale};
use cuda::{DeviceBuffer, Gpu};
use std::sync::Arc;

pub use cuda::ops::adamw::{AdamWScalars, AdamWVariant};

/// One parameter of [`adamw_step`]: the weight and its two moments (f32, updated in place), its
/// gradient (f32, same element count) and the step's scalars (computed on the host).
pub struct AdamWTensors<'a> {
    pub param: &'a mut Tensor,
    pub grad: &'a Tensor,
    pub exp_avg: &'a mut Tensor,
    pub exp_avg_sq: &'a mut Tensor,
    /// An f16/bf16 tensor of the parameter's shape the kernel writes the updated value to.
    pub half_copy: Option<&'a mut Tensor>,
    /// Or (with `half_copy` None): the run at `offset` elements into `bases[base]` of
    /// [`adamw_step_fused`], a buffer holding several parameters' half copies (fused QKV).
    pub half_at: Option<HalfAt>,
    pub scalars: AdamWScalars,
}

/// A shared half-copy buffer, held mutably for the step and read by each parameter's run.
enum Base<'a> {
    F16(&'a DeviceBuffer<half::f16>),
    BF16(&'a DeviceBuffer<half::bf16>),
}

/// Where in a shared half-copy buffer a parameter's copy lies (see [`AdamWTensors::half_at`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HalfAt {
    pub base: usize,
    pub offset: usize,
}

/// The GPU every tensor of `ts` lives on (`None` for an empty list); an error naming `op` when
/// they are on different devices or on the CPU.
fn gpu_of(op: &'static str, ts: &[&Tensor]) -> Result<Option<Arc<Gpu>>> {
    same_device(op, ts)?;
    match ts.first() {
        None => Ok(None),
        Some(&t) => Ok(Some(operands(op, [t])?[0].gpu.clone())),
    }
}

/// Errors unless `t` (the `what` of list entry `i`) is f32 with `n` elements.
fn check(op: &'static str, (what, i): (&str, usize), t: &Tensor, n: usize) -> Result<()> {
    if t.dtype() != DType::F32 {
        crate::bail!(op, "{what} {i}: dtype {}, expected f32", t.dtype());
    }
    if t.elem_count() != n {
        crate::bail!(op, "{what} {i}: {} elements, expected {n}", t.elem_count());
    }
    Ok(())
}

/// One AdamW step over every parameter of `params` (one kernel launch; see
/// `cuda::ops::adamw`): each element follows the CPU's f32 operations in the CPU's order, so with
/// the CPU's scalars the result is the CPU's, bit for bit.
pub fn adamw_step(params: &mut [AdamWTensors<'_>]) -> Result<()> {
    adamw_step_fused(params, &mut [])
}

/// [`adamw_step`] where some half copies are runs of the shared buffers `bases` (f16/bf16,
/// contiguous, written in place: copy-on-write as [`Tensor::cuda_data_mut`], so a buffer another
/// tensor still reads is copied first and the caller takes the written one from `bases`).
pub fn adamw_step_fused(params: &mut [AdamWTensors<'_>], bases: &mut [Tensor]) -> Result<()> {
    const OP: &str = "AdamW";
    let all: Vec<&Tensor> = params
        .iter()
        .flat_map(|p| [&*p.param, p.grad, &*p.exp_avg, &*p.exp_avg_sq])
        .collect();
    let Some(gpu) = gpu_of(OP, &all)? else {
        return Ok(());
    };
    for (i, p) in params.iter().enumerate() {
        let n = p.param.elem_count();
        check(OP, ("parameter", i), p.param, n)?;
        check(OP, ("gradient", i), p.grad, n)?;
        check(OP, ("exp_avg", i), p.exp_avg, n)?;
        check(OP, ("exp_avg_sq", i), p.exp_avg_sq, n)?;
        if let Some(h) = &p.half_copy {
            if h.elem_count() != n || h.device() != p.param.device() {
                crate::bail!(
                    OP,
                    "half copy {i} is {:?} on {}, its parameter {:?} on {}",
                    h.shape(),
                    h.device(),
                    p.param.shape(),
                    p.param.device()
                );
            }
        }
    }
    let grads: Vec<CudaStorage> = params
        .iter()
        .map(|p| contig(OP, p.grad))
        .collect::<Result<_>>()?;
    same_device(
        OP,
        &bases
            .iter()
            .chain(params.iter().map(|p| &*p.param))
            .collect::<Vec<_>>(),
    )?;
    let mut base_bufs = Vec::with_capacity(bases.len());
    for b in bases.iter_mut() {
        base_bufs.push(match b.dtype() {
            DType::F16 => Base::F16(b.cuda_data_mut::<half::f16>()?),
            DType::BF16 => Base::BF16(b.cuda_data_mut::<half::bf16>()?),
            other => crate::bail!(OP, "a half-copy buffer must be f16 or bf16, got {other}"),
        });
    }
    let mut entries = Vec::with_capacity(params.len());
    for (p, g) in params.iter_mut().zip(&grads) {
        let at = |h: HalfAt| match base_bufs.get(h.base) {
            Some(Base::F16(b)) => Ok(adamw::HalfCopy::F16At(b, h.offset)),
            Some(Base::BF16(b)) => Ok(adamw::HalfCopy::BF16At(b, h.offset)),
            None => Err(crate::Error::op(
                OP,
                format!("half copy in buffer {} of {}", h.base, base_bufs.len()),
            )),
        };
        let half_copy = match p.half_copy.as_deref_mut() {
            None if p.half_at.is_some() => p.half_at.map(at).transpose()?,
            None => None,
            Some(h) if h.dtype() == crate::DType::BF16 => {
                Some(adamw::HalfCopy::BF16(h.cuda_data_mut::<half::bf16>()?))
            }
            Some(h) if h.dtype() == crate::DType::F16 => {
                Some(adamw::HalfCopy::F16(h.cuda_data_mut::<half::f16>()?))
            }
            Some(h) => crate::bail!(OP, "a half copy must be f16 or bf16, got {}", h.dtype()),
        };
        entries.push(adamw::AdamWParam {
            param: p.param.cuda_data_mut::<f32>()?,
            grad: g.typed::<f32>(OP)?,
            exp_avg: p.exp_avg.cuda_data_mut::<f32>()?,
            exp_avg_sq: p.exp_avg_sq.cuda_data_mut::<f32>()?,
            half_copy,
            scalars: p.scalars,
        });
    }
    Ok(adamw::adamw_step::<f32>(&gpu, &mut entries)?)
}

/// Σ g² over every element of every gradient, accumulated in f64 (see `cuda::ops::grad_norm`
/// for how its rounding compares with the CPU's). Waits for the GPU; 0 for an empty list.
pub fn sum_of_squares(grads: &[&Tensor]) -> Result<f64> {
    const OP: &str = "clip_grad_norm";
    let Some(gpu) = gpu_of(OP, grads)? else {
        return Ok(0.0);
    };
    for (i, g) in grads.iter().enumerate() {
        check(OP, ("gradient", i), g, g.elem_count())?;
    }
    let c: Vec<CudaStorage> = grads.iter().map(|g| contig(OP, g)).collect::<Result<_>>()?;
    let bufs: Vec<&DeviceBuffer<f32>> = c
        .iter()
        .map(|s| s.typed::<f32>(OP))
        .collect::<Result<_>>()?;
    Ok(grad_norm::sum_of_squares(&gpu, &bufs)?)
}

/// Clips the gradients in place to a global L2 norm of `max_norm` with no wait for the GPU: the
/// norm and the factor (`nn::clip_grad_norm`'s numbers) are computed on the device, and the
/// scaling reads the factor there. Returns the norm before clipping, a rank-0 f64 tensor on the
/// GPU (read it on a logging step); None for an empty list.
pub fn clip_on_device(grads: &mut [&mut Tensor], max_norm: f64) -> Result<Option<Tensor>> {
    const OP: &str = "clip_grad_norm";
    let refs: Vec<&Tensor> = grads.iter().map(|g| &**g).collect();
    let Some(gpu) = gpu_of(OP, &refs)? else {
        return Ok(None);
    };
    for (i, g) in refs.iter().enumerate() {
        check(OP, ("gradient", i), g, g.elem_count())?;
    }
    let (norm, factor) = {
        let c: Vec<CudaStorage> = refs.iter().map(|g| contig(OP, g)).collect::<Result<_>>()?;
        let bufs: Vec<&DeviceBuffer<f32>> = c
            .iter()
            .map(|s| s.typed::<f32>(OP))
            .collect::<Result<_>>()?;
        grad_norm::clip_factor(&gpu, &bufs, max_norm)?
    };
    multiply(OP, grads, 1.0, Some(&factor))?;
    Ok(Some(super::tensor_of(&gpu, super::wrap(norm), &[])))
}

/// Multiplies every gradient by `factor` (or by the device scalar `device_factor` when given)
/// in place (one launch of the loss-scaling kernel); returns the GPU and its flag of a
/// non-finite input, or `None` for an empty list.
fn multiply(
    op: &'static str,
    grads: &mut [&mut Tensor],
    factor: f32,
    device_factor: Option<&DeviceBuffer<f32>>,
) -> Result<Option<(Arc<Gpu>, DeviceBuffer<u32>)>> {
    let refs: Vec<&Tensor> = grads.iter().map(|g| &**g).collect();
    let Some(gpu) = gpu_of(op, &refs)? else {
        return Ok(None);
    };
    for (i, g) in refs.iter().enumerate() {
        check(op, ("gradient", i), g, g.elem_count())?;
    }
    let mut bufs: Vec<loss_scale::Unscale<'_, f32>> = grads
        .iter_mut()
        .map(|g| g.cuda_data_mut::<f32>().map(loss_scale::Unscale::InPlace))
        .collect::<Result<_>>()?;
    let found = loss_scale::unscale_by::<f32>(&gpu, &mut bufs, factor, device_factor)?;
    Ok(Some((gpu, found)))
}

/// Multiplies every gradient by `factor` in place (f32 products, as the CPU's `x *= factor`);
/// does not wait for the GPU.
pub fn scale(grads: &mut [&mut Tensor], factor: f32) -> Result<()> {
    multiply("clip_grad_norm", grads, factor, None).map(|_| ())
}

/// Multiplies every gradient by `inv_scale` in place and returns true when any element was inf
/// or NaN before scaling (`LossScaler::unscale`). Waits for the GPU (one 4-byte copy).
pub fn unscale(grads: &mut [&mut Tensor], inv_scale: f32) -> Result<bool> {
    match multiply("LossScaler", grads, inv_scale, None)? {
        None => Ok(false),
        Some((gpu, found)) => Ok(gpu.download(&found)?[0] != 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Device;

    #[test]
    fn cpu_and_empty_lists() {
        // Nothing to do for empty lists, on any machine.
        assert_eq!(sum_of_squares(&[]).unwrap(), 0.0);
        assert!(!unscale(&mut [], 2.0).unwrap());
        scale(&mut [], 2.0).unwrap();
        adamw_step(&mut []).unwrap();
        // CPU tensors are not this module's: the error names the op and the device.
        let mut a = Tensor::zeros(&[2], DType::F32, Device::Cpu).unwrap();
        let err = sum_of_squares(&[&a]).unwrap_err().to_string();
        assert!(
            err.starts_with("clip_grad_norm") && err.contains("cpu"),
            "{err}"
        );
        let err = unscale(&mut [&mut a], 0.5).unwrap_err().to_string();
        assert!(
            err.starts_with("LossScaler") && err.contains("cpu"),
            "{err}"
        );
    }
}
