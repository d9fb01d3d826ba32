//! The training precision a run asks for (`--fp16` / `--bf16`, as the HF Trainer names them):
//! f32, or mixed precision in f16 or bf16. Mixed precision keeps f32 master weights and f32
//! optimizer state; the matrix products run in the half dtype under [`autograd::autocast`]
//! (LayerNorm, softmax and the losses stay f32), and f16 adds the dynamic loss scaler of
//! [`crate::loss_scale`] (bf16 has f32's exponent range and needs none). On the CPU only bf16
//! applies (the bf16 GEMM, AMX or AVX512-BF16): callers reject `--fp16` with `--device cpu`.

use tensor::{bail, DType, Result, Tensor};

use crate::{clip_grad_norm, total_norm, LossScaler, LossScalerConfig, StepDecision};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    /// `--fp16`: f16 products, dynamic loss scaling.
    F16,
    /// `--bf16`: bf16 products, no loss scaling.
    Bf16,
}

impl Precision {
    /// The precision of the `--fp16` / `--bf16` flags; both at once is an error.
    pub fn from_flags(fp16: bool, bf16: bool) -> Result<Precision> {
        match (fp16, bf16) {
            (true, true) => bail!(
                "precision",
                "--fp16 and --bf16 exclude each other; give at most one"
            ),
            (true, false) => Ok(Precision::F16),
            (false, true) => Ok(Precision::Bf16),
            (false, false) => Ok(Precision::F32),
        }
    }

    /// The flag that selects it (None for f32).
    pub fn flag(self) -> Option<&'static str> {
        match self {
            Precision::F32 => None,
            Precision::F16 => Some("--fp16"),
            Precision::Bf16 => Some("--bf16"),
        }
    }

    /// The dtype of the matrix products ([`autograd::autocast`]'s argument).
    pub fn autocast_dtype(self) -> Option<DType> {
        match self {
            Precision::F32 => None,
            Precision::F16 => Some(DType::F16),
            Precision::Bf16 => Some(DType::BF16),
        }
    }

    /// Runs `f` (a forward pass) under this precision's autocast.
    pub fn autocast<R>(self, f: impl FnOnce() -> R) -> R {
        autograd::autocast(self.autocast_dtype(), f)
    }

    /// The run's loss scaler: torch's `GradScaler` defaults for f16, a disabled one (scale 1,
    /// every step applied) otherwise.
    pub fn loss_scaler(self) -> Result<LossScaler> {
        LossScaler::new(LossScalerConfig {
            enabled: self == Precision::F16,
            ..LossScalerConfig::default()
        })
    }
}

/// The gradient side of one optimizer step, as the HF Trainer orders it: unscale the gradients
/// (fp16; a no-op with a disabled scaler), take their global L2 norm and clip them to
/// `max_grad_norm` (0: measure only), then let the scaler decide whether the step applies.
/// Returns the norm before clipping (inf/NaN on an overflowed fp16 step) and the decision.
pub fn unscale_and_clip(
    scaler: &mut LossScaler,
    grads: &mut [&mut Tensor],
    max_grad_norm: f64,
) -> Result<(f64, StepDecision)> {
    let _phase = tensor::profiler::phase(tensor::profiler::Phase::Optimizer);
    let found_inf = scaler.unscale(grads)?;
    let norm = if max_grad_norm > 0.0 {
        clip_grad_norm(grads, max_grad_norm)?
    } else {
        let refs: Vec<&Tensor> = grads.iter().map(|g| &**g).collect();
        total_norm(&refs)?
    };
    Ok((norm, scaler.update(found_inf)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_map_to_dtypes_and_scaling() {
        let cases = [
            ((false, false), Precision::F32, None, 1.0),
            ((true, false), Precision::F16, Some(DType::F16), 65536.0),
            ((false, true), Precision::Bf16, Some(DType::BF16), 1.0),
        ];
        for ((fp16, bf16), want, dtype, scale) in cases {
            let p = Precision::from_flags(fp16, bf16).unwrap();
            assert_eq!(p, want);
            assert_eq!(p.autocast_dtype(), dtype);
            assert_eq!(p.loss_scaler().unwrap().scale(), scale);
            assert_eq!(p.autocast(autograd::autocast_dtype), dtype);
            assert_eq!(p.flag().is_some(), dtype.is_some());
        }
        let e = Precision::from_flags(true, true).unwrap_err().to_string();
        assert_eq!(
            e,
            "precision: --fp16 and --bf16 exclude each other; give at most one"
        );
        assert!(e.contains("--fp16") && e.contains("--bf16"), "{e}");
    }

    #[test]
    fn overflowed_fp16_steps_are_skipped_and_f32_ones_clip_as_before() {
        let t = |v: Vec<f32>| Tensor::from_vec(v, &[2]).unwrap();
        // f32: a disabled scaler, the same norm and clipping as clip_grad_norm alone.
        let mut scaler = Precision::F32.loss_scaler().unwrap();
        let (mut a, mut b) = (t(vec![3.0, 4.0]), t(vec![3.0, 4.0]));
        let (norm, d) = unscale_and_clip(&mut scaler, &mut [&mut a], 1.0).unwrap();
        let want = clip_grad_norm(&mut [&mut b], 1.0).unwrap();
        assert_eq!((norm, d), (want, StepDecision::Apply));
        assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
        // fp16: gradients come back divided by the scale; an inf skips the step and halves it.
        let mut scaler = Precision::F16.loss_scaler().unwrap();
        let mut g = t(vec![65536.0 * 3.0, 65536.0 * 4.0]);
        let (norm, d) = unscale_and_clip(&mut scaler, &mut [&mut g], 0.0).unwrap();
        assert_eq!((norm, d), (5.0, StepDecision::Apply));
        assert_eq!(g.to_vec::<f32>().unwrap(), [3.0, 4.0]);
        let mut g = t(vec![f32::INFINITY, 1.0]);
        let (norm, d) = unscale_and_clip(&mut scaler, &mut [&mut g], 1.0).unwrap();
        assert!(!norm.is_finite());
        assert_eq!((d, scaler.scale()), (StepDecision::Skip, 32768.0));
    }
}
