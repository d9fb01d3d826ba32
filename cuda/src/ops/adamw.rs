//! The multi-tensor AdamW step (`kernels/adamw.cu`): one launch updates every parameter of a
//! model (fp32 master weights, fp32 moments) in place, with the per-parameter scalars of
//! nn/src/optim/adamw.rs computed on the host in f64 and rounded once to f32 ([`AdamWScalars`]),
//! and each element following the CPU's f32 operation order with no fused multiply-adds, so the
//! GPU reproduces the CPU update. Optionally each updated weight is also written, rounded, to a
//! half copy of the model (mixed precision).

use super::multi_tensor::{self, Chunks};
use super::{len_i64, FloatElem, FLOATS};
use crate::buffer::DeviceBuffer;
use crate::error::bail;
use crate::gpu::Gpu;
use crate::nvrtc::{kernels::ADAMW, KernelFile};
use crate::Result;
use cudarc::driver::DeviceRepr;
use half::{bf16, f16};

/// Elements per block (adamw.cu `ADAMW_CHUNK`).
const CHUNK: usize = 16384;
const FLAG_TORCH: i32 = 1;
const FLAG_DECAY: i32 = 2;
const COPY_NONE: i32 = 0;
const COPY_F16: i32 = 1;
const COPY_BF16: i32 = 2;

pub(crate) fn mirrored_constants() -> Vec<(&'static KernelFile, String)> {
    [
        format!("#define ADAMW_CHUNK {CHUNK}"),
        format!("#define FLAG_TORCH {FLAG_TORCH}"),
        format!("#define FLAG_DECAY {FLAG_DECAY}"),
        format!("#define COPY_NONE {COPY_NONE}"),
        format!("#define COPY_F16 {COPY_F16}"),
        format!("#define COPY_BF16 {COPY_BF16}"),
    ]
    .into_iter()
    .map(|s| (&ADAMW, s))
    .collect()
}

pub(crate) fn kernel_names() -> Vec<(&'static KernelFile, String)> {
    FLOATS
        .iter()
        .map(|t| (&ADAMW, format!("adamw_{t}")))
        .collect()
}

/// Which reference update rule (see nn/src/optim/adamw.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdamWVariant {
    /// transformers 4.17 `AdamW`: eps outside the bias correction, decay of the updated weight.
    Hf,
    /// `torch.optim.AdamW`: decay first, bias-corrected denominator.
    Torch,
}

/// The f32 scalars of one parameter's update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWScalars {
    pub variant: AdamWVariant,
    pub b1: f32,
    pub one_minus_b1: f32,
    pub b2: f32,
    pub one_minus_b2: f32,
    pub eps: f32,
    /// torch: `-lr / bc1`; HF: `-lr * sqrt(bc2) / bc1`.
    pub neg_step: f32,
    /// torch: `sqrt(bc2)`.
    pub bc2_sqrt: f32,
    /// torch: `1 - lr * wd`.
    pub keep: f32,
    /// HF: `-lr * wd`.
    pub neg_lr_wd: f32,
    /// HF: whether the decay step runs (wd > 0).
    pub decay: bool,
}

impl AdamWScalars {
    /// The scalars for step `step` (counting from 1) with learning rate `lr`, `betas`, `eps` and
    /// weight decay `wd`, computed in f64 and rounded once, as nn's `Coefs::new`.
    pub fn new(
        variant: AdamWVariant,
        lr: f64,
        betas: (f64, f64),
        eps: f64,
        wd: f64,
        step: u64,
    ) -> Self {
        let (b1, b2) = betas;
        let t = step as f64;
        let bc1 = 1.0 - b1.powf(t);
        let bc2 = 1.0 - b2.powf(t);
        let neg_step = match variant {
            AdamWVariant::Hf => -(lr * bc2.sqrt() / bc1),
            AdamWVariant::Torch => -(lr / bc1),
        };
        AdamWScalars {
            variant,
            b1: b1 as f32,
            one_minus_b1: (1.0 - b1) as f32,
            b2: b2 as f32,
            one_minus_b2: (1.0 - b2) as f32,
            eps: eps as f32,
            neg_step: neg_step as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            keep: (1.0 - lr * wd) as f32,
            neg_lr_wd: (-lr * wd) as f32,
            decay: wd > 0.0,
        }
    }
}

/// The half-precision model copy a step also writes.
pub enum HalfCopy<'a> {
    F16(&'a mut DeviceBuffer<f16>),
    BF16(&'a mut DeviceBuffer<bf16>),
    /// The run of the parameter's length at `offset` in a buffer that holds several parameters'
    /// copies one after another (a fused QKV weight). The caller holds that buffer mutably for
    /// the step and gives each parameter its own run: the runs of one step must not overlap
    /// (checked), so the kernel's writes stay disjoint.
    F16At(&'a DeviceBuffer<f16>, usize),
    BF16At(&'a DeviceBuffer<bf16>, usize),
}

/// One parameter of a step: weight, moments and optional half copy (f32, updated in place), its
/// gradient (`G`: f32, f16 or bf16, same length) and scalars.
pub struct AdamWParam<'a, G: FloatElem> {
    pub param: &'a mut DeviceBuffer<f32>,
    pub grad: &'a DeviceBuffer<G>,
    pub exp_avg: &'a mut DeviceBuffer<f32>,
    pub exp_avg_sq: &'a mut DeviceBuffer<f32>,
    pub half_copy: Option<HalfCopy<'a>>,
    pub scalars: AdamWScalars,
}

/// adamw.cu's `AdamWTensor` record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Record {
    p: u64,
    g: u64,
    m: u64,
    v: u64,
    copy: u64,
    n: i64,
    b1: f32,
    one_minus_b1: f32,
    b2: f32,
    one_minus_b2: f32,
    eps: f32,
    neg_step: f32,
    bc2_sqrt: f32,
    keep: f32,
    neg_lr_wd: f32,
    flags: i32,
    copy_kind: i32,
    pad: i32,
}

// SAFETY: plain repr(C) numbers, laid out as adamw.cu's AdamWTensor.
unsafe impl DeviceRepr for Record {}

/// One AdamW step over every parameter in `params` (a single kernel launch). Everything is
/// checked before anything is launched: lengths, the GPU each buffer lives on.
pub fn adamw_step<G: FloatElem>(gpu: &Gpu, params: &mut [AdamWParam<'_, G>]) -> Result<()> {
    const OP: &str = "AdamW";
    let mut records = Vec::with_capacity(params.len());
    let mut lens = Vec::with_capacity(params.len());
    // (buffer address, offset, length, buffer length, parameter) of the shared-buffer copies.
    let mut runs: Vec<(u64, usize, usize, usize, usize)> = Vec::new();
    for (i, p) in params.iter().enumerate() {
        let n = p.param.len();
        gpu.same_device(OP, p.param)?;
        gpu.same_device(OP, p.grad)?;
        gpu.same_device(OP, p.exp_avg)?;
        gpu.same_device(OP, p.exp_avg_sq)?;
        for (what, len) in [
            ("gradient", p.grad.len()),
            ("exp_avg", p.exp_avg.len()),
            ("exp_avg_sq", p.exp_avg_sq.len()),
        ] {
            if len != n {
                bail!(
                    OP,
                    "parameter {i}: {what} has {len} elements, the parameter {n}"
                );
            }
        }
        let (copy, copy_kind, copy_len) = match &p.half_copy {
            None => (0, COPY_NONE, n),
            Some(HalfCopy::F16(b)) => {
                gpu.same_device(OP, b)?;
                (b.device_address(), COPY_F16, b.len())
            }
            Some(HalfCopy::BF16(b)) => {
                gpu.same_device(OP, b)?;
                (b.device_address(), COPY_BF16, b.len())
            }
            Some(HalfCopy::F16At(b, at)) => {
                gpu.same_device(OP, *b)?;
                runs.push((b.device_address(), *at, n, b.len(), i));
                (b.device_address() + 2 * *at as u64, COPY_F16, n)
            }
            Some(HalfCopy::BF16At(b, at)) => {
                gpu.same_device(OP, *b)?;
                runs.push((b.device_address(), *at, n, b.len(), i));
                (b.device_address() + 2 * *at as u64, COPY_BF16, n)
            }
        };
        if copy_len != n {
            bail!(
                OP,
                "parameter {i}: the half copy has {copy_len} elements, the parameter {n}"
            );
        }
        let s = p.scalars;
        let mut flags = 0;
        if s.variant == AdamWVariant::Torch {
            flags |= FLAG_TORCH;
        }
        if s.decay {
            flags |= FLAG_DECAY;
        }
        lens.push(n);
        records.push(Record {
            p: p.param.device_address(),
            g: p.grad.device_address(),
            m: p.exp_avg.device_address(),
            v: p.exp_avg_sq.device_address(),
            copy,
            n: len_i64(OP, n)?,
            b1: s.b1,
            one_minus_b1: s.one_minus_b1,
            b2: s.b2,
            one_minus_b2: s.one_minus_b2,
            eps: s.eps,
            neg_step: s.neg_step,
            bc2_sqrt: s.bc2_sqrt,
            keep: s.keep,
            neg_lr_wd: s.neg_lr_wd,
            flags,
            copy_kind,
            pad: 0,
        });
    }
    check_runs(OP, &mut runs)?;
    let chunks = Chunks::new(OP, &lens, CHUNK)?;
    // SAFETY: matches `adamw_<g>(const AdamWTensor*, const i64*, int)`; every record's buffers
    // hold n elements (checked) and the &mut borrows make them distinct from each other (the
    // runs in shared half-copy buffers: checked in bounds and disjoint above).
    unsafe {
        multi_tensor::launch(
            gpu,
            OP,
            (&ADAMW, &format!("adamw_{}", G::TYPE)),
            &records,
            &chunks,
            &[],
        )
    }
}

/// Errors unless each run (address, offset, length, buffer length, parameter) lies inside its
/// buffer and no two runs in one buffer overlap.
fn check_runs(op: &'static str, runs: &mut [(u64, usize, usize, usize, usize)]) -> Result<()> {
    runs.sort_unstable();
    for (k, &(addr, at, n, len, i)) in runs.iter().enumerate() {
        if at.checked_add(n).is_none_or(|end| end > len) {
            bail!(
                op,
                "parameter {i}: its half copy at {at} (+{n}) passes its buffer's {len} elements"
            );
        }
        if let Some(&(next, next_at, _, _, j)) = runs.get(k + 1) {
            if next == addr && next_at < at + n {
                bail!(
                    op,
                    "parameters {i} and {j}: their half copies overlap in one buffer"
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_layout_matches_the_kernel_struct() {
        // adamw.cu: 5 u64, i64, 9 floats, 3 ints.
        assert_eq!(std::mem::size_of::<Record>(), 5 * 8 + 8 + 9 * 4 + 3 * 4);
        assert_eq!(std::mem::align_of::<Record>(), 8);
    }

    #[test]
    fn scalars_follow_the_reference_formulas() {
        let s = AdamWScalars::new(AdamWVariant::Hf, 1e-3, (0.9, 0.999), 1e-8, 0.01, 1);
        // HF at t = 1: -lr * sqrt(1 - 0.999) / (1 - 0.9).
        assert_eq!(s.neg_step, (-(1e-3 * 0.001f64.sqrt() / 0.1)) as f32);
        assert_eq!(s.neg_lr_wd, -1e-5f32);
        assert!(s.decay);
        let t = AdamWScalars::new(AdamWVariant::Torch, 1e-3, (0.9, 0.999), 1e-8, 0.0, 2);
        assert_eq!(t.neg_step, (-(1e-3 / (1.0 - 0.81))) as f32);
        assert_eq!((t.keep, t.decay), (1.0, false));
    }
}
