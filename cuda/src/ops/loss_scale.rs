//! The gradient side of fp16 dynamic loss scaling (`kernels/loss_scale.cu`), as
//! nn/src/loss_scale.rs's `LossScaler::unscale`: one launch multiplies every gradient by
//! 1 / scale into f32 and flags whether any input was inf or NaN. The flag stays on the device
//! until the caller reads it (one small copy per step, when deciding whether to skip it).

use super::multi_tensor::{self, Chunks};
use super::{len_i64, FloatElem, FLOATS};
use crate::buffer::DeviceBuffer;
use crate::error::bail;
use crate::gpu::{arg, Gpu};
use crate::nvrtc::{kernels::LOSS_SCALE, KernelFile};
use crate::Result;
use cudarc::driver::DeviceRepr;

/// Elements per block (loss_scale.cu `UNSCALE_CHUNK`).
const CHUNK: usize = 16384;

pub(crate) fn mirrored_constants() -> Vec<(&'static KernelFile, String)> {
    vec![(&LOSS_SCALE, format!("#define UNSCALE_CHUNK {CHUNK}"))]
}

pub(crate) fn kernel_names() -> Vec<(&'static KernelFile, String)> {
    FLOATS
        .iter()
        .map(|t| (&LOSS_SCALE, format!("unscale_{t}")))
        .collect()
}

/// loss_scale.cu's `UnscaleTensor` record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Record {
    src: u64,
    dst: u64,
    n: i64,
}

// SAFETY: plain repr(C) numbers, laid out as loss_scale.cu's UnscaleTensor.
unsafe impl DeviceRepr for Record {}

/// Where one gradient goes: f32 gradients are unscaled in place ([`Unscale::InPlace`]); f16/bf16
/// gradients into an f32 buffer of the same length ([`Unscale::Into`]).
pub enum Unscale<'a, G: FloatElem> {
    InPlace(&'a mut DeviceBuffer<f32>),
    Into(&'a DeviceBuffer<G>, &'a mut DeviceBuffer<f32>),
}

/// Multiplies every gradient by `inv_scale` (f32), returning a one-element u32 flag on the device:
/// 1 if any gradient held an inf or NaN before scaling, else 0. For `Unscale::InPlace` entries
/// `G` must be f32.
pub fn unscale<G: FloatElem>(
    gpu: &Gpu,
    grads: &mut [Unscale<'_, G>],
    inv_scale: f32,
) -> Result<DeviceBuffer<u32>> {
    unscale_by(gpu, grads, inv_scale, None)
}

/// [`unscale`] by the device scalar `factor` when given (instead of `inv_scale`; a factor of 1
/// skips in-place gradients): the scaling of gradient clipping with a factor computed on the
/// device (`grad_norm::clip_factor`), so the host never waits for the norm.
pub fn unscale_by<G: FloatElem>(
    gpu: &Gpu,
    grads: &mut [Unscale<'_, G>],
    inv_scale: f32,
    factor: Option<&DeviceBuffer<f32>>,
) -> Result<DeviceBuffer<u32>> {
    const OP: &str = "unscale";
    let found = gpu.zeros::<u32>(1)?;
    let mut records = Vec::with_capacity(grads.len());
    let mut lens = Vec::with_capacity(grads.len());
    for (i, g) in grads.iter().enumerate() {
        let (src, dst, n) = match g {
            Unscale::InPlace(b) => {
                if G::TYPE != crate::ElemType::F32 {
                    bail!(
                        OP,
                        "gradient {i}: in-place unscaling needs f32 gradients, the call is for {}",
                        G::TYPE
                    );
                }
                gpu.same_device(OP, b)?;
                (b.device_address(), b.device_address(), b.len())
            }
            Unscale::Into(s, d) => {
                gpu.same_device(OP, s)?;
                gpu.same_device(OP, d)?;
                if s.len() != d.len() {
                    bail!(
                        OP,
                        "gradient {i}: {} elements into an f32 buffer of {}",
                        s.len(),
                        d.len()
                    );
                }
                (s.device_address(), d.device_address(), s.len())
            }
        };
        lens.push(n);
        records.push(Record {
            src,
            dst,
            n: len_i64(OP, n)?,
        });
    }
    let chunks = Chunks::new(OP, &lens, CHUNK)?;
    let fa = found.device_address();
    let factor_address = match factor {
        Some(f) => {
            gpu.same_device(OP, f)?;
            f.address_at(OP, 0, 1)?
        }
        None => 0,
    };
    // SAFETY: matches `unscale_<g>(const UnscaleTensor*, const i64*, int, float, const float*,
    // u32*)`; every record's buffers hold n elements (checked); a null factor is allowed.
    unsafe {
        multi_tensor::launch(
            gpu,
            OP,
            (&LOSS_SCALE, &format!("unscale_{}", G::TYPE)),
            &records,
            &chunks,
            &[arg(&inv_scale), arg(&factor_address), arg(&fa)],
        )?;
    }
    Ok(found)
}
