//! Optimizers: they alone hold mutable access to parameters and update them in place
//! (`Tensor::data_mut`), one fused pass over each parameter's f32 elements.
//!
//! Also the slice helpers shared by the optimisation modules: a read-only f32 view of a tensor
//! (borrowed when contiguous) and the size above which loops are split across rayon threads.

pub mod adamw;
mod params;

pub use adamw::{
    AdamW, AdamWConfig, AdamWVariant, HalfAt, ParamState, ParamUpdate, StateDict, DEFAULT_NO_DECAY,
};
pub use params::step_params;

use std::borrow::Cow;
use tensor::{DType, Device, Result, Tensor};

/// Loops over more elements than this are split into `CHUNK`-sized pieces run by rayon.
pub(crate) const PAR_THRESHOLD: usize = 32 * 1024;
pub(crate) const CHUNK: usize = 8 * 1024;

/// Errors (naming `op` and `what`) unless `t` is f32.
pub(crate) fn check_f32(t: &Tensor, op: &'static str, what: &str) -> Result<()> {
    if t.dtype() != DType::F32 {
        tensor::bail!(op, "{what}: expected dtype f32, got {}", t.dtype());
    }
    Ok(())
}

/// The elements of an f32 tensor in row-major order: borrowed from the storage when the tensor is
/// contiguous, gathered into a new vector otherwise. `what` names the tensor in the error.
pub(crate) fn f32_values<'a>(
    t: &'a Tensor,
    op: &'static str,
    what: &str,
) -> Result<Cow<'a, [f32]>> {
    check_f32(t, op, what)?;
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
    check_f32(t, op, what)?;
    t.data_mut::<f32>()
}

/// The one device of a list of tensors (the CPU for an empty list): an optimizer step runs on
/// one device. Otherwise an error naming `op`, the first entry on another device than entry 0
/// (`name(i)` names entry `i`) and both devices.
pub(crate) fn one_device(
    op: &'static str,
    devices: impl IntoIterator<Item = Device>,
    name: impl Fn(usize) -> String,
) -> Result<Device> {
    let mut devices = devices.into_iter().enumerate();
    let Some((_, first)) = devices.next() else {
        return Ok(Device::Cpu);
    };
    match devices.find(|&(_, d)| d != first) {
        None => Ok(first),
        Some((i, d)) => tensor::bail!(
            op,
            "{} is on {d} but {} is on {first}: every tensor of the step must be on one device",
            name(i),
            name(0)
        ),
    }
}

/// The error of a step on a GPU when nn was built without its `cuda` feature (another crate
/// enabled the tensor crate's alone).
#[cfg(not(feature = "cuda"))]
pub(crate) fn without_cuda(op: &'static str, device: Device) -> tensor::Error {
    tensor::Error::op(
        op,
        format!("the tensors are on {device}, and nn was built without its `cuda` feature"),
    )
}

/// [`one_device`] for a list of gradients, named by their position.
pub(crate) fn gradients_device(
    op: &'static str,
    devices: impl IntoIterator<Item = Device>,
) -> Result<Device> {
    one_device(op, devices, |i| format!("gradient {i}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_device_of_a_list() {
        let name = |i: usize| format!("t{i}");
        assert_eq!(one_device("op", [], name).unwrap(), Device::Cpu);
        assert_eq!(
            gradients_device("op", [Device::Cpu, Device::Cpu]).unwrap(),
            Device::Cpu
        );
        #[cfg(feature = "cuda")]
        {
            let (c0, c1) = (Device::Cuda(0), Device::Cuda(1));
            assert_eq!(one_device("op", [c1, c1], name).unwrap(), c1);
            let err = gradients_device("clip", [c0, c0, Device::Cpu, c1])
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                "clip: gradient 2 is on cpu but gradient 0 is on cuda:0: every tensor of the \
                 step must be on one device"
            );
            let err = one_device("op", [c0, c1], name).unwrap_err().to_string();
            assert!(err.contains("t1 is on cuda:1 but t0 is on cuda:0"), "{err}");
        }
    }
}
