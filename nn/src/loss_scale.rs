//! fp16 dynamic loss scaling, as `torch.cuda.amp.GradScaler()` with its defaults, the way the HF
//! Trainer (4.17, `--fp16`) drives it.
//!
//! One training step: the loss is multiplied by [`LossScaler::scale`] before backward (so small
//! fp16 gradients do not flush to zero); [`LossScaler::unscale`] multiplies the f32 gradients by
//! `1/scale` in place and reports whether any was inf/NaN; clipping follows on the unscaled
//! gradients; then [`LossScaler::update`] decides:
//!
//! * inf/NaN found: the scale is multiplied by `backoff_factor` (0.5), the good-step count resets,
//!   and the step is [`StepDecision::Skip`]: the caller must neither step the optimizer nor
//!   advance the LR schedule (HF steps the scheduler only when the optimizer ran).
//! * otherwise the step is applied and, after `growth_interval` (2000) consecutive good steps,
//!   the scale is multiplied by `growth_factor` (2), unless that would overflow f32.
//!
//! The scale is an f32, as torch keeps it (a one-element float tensor); products are formed in
//! f64 and rounded to f32 like torch's update kernel. The state (scale and good-step count) saves
//! as torch's `GradScaler.state_dict()` does.

use crate::optim::{f32_values_mut, gradients_device, map_chunks_mut};
use serde::{Deserialize, Serialize};
use tensor::{bail, Device, Result, Tensor};

const OP: &str = "LossScaler";

/// `GradScaler` arguments; the defaults are torch's (and so the HF Trainer's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScalerConfig {
    pub init_scale: f64,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: u64,
    /// When false (fp32 training) the scale is 1, `unscale` does nothing and every step applies.
    pub enabled: bool,
}

impl Default for LossScalerConfig {
    fn default() -> Self {
        LossScalerConfig {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            enabled: true,
        }
    }
}

/// What the caller does with this step's gradients.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepDecision {
    /// Step the optimizer and advance the LR schedule.
    Apply,
    /// Gradients overflowed: no optimizer step, no schedule step.
    Skip,
}

/// The saved state, with the field names of torch's `GradScaler.state_dict()`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScalerState {
    pub scale: f32,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: u64,
    #[serde(rename = "_growth_tracker")]
    pub growth_tracker: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LossScaler {
    config: LossScalerConfig,
    scale: f32,
    growth_tracker: u64,
}

fn check(growth: f64, backoff: f64, interval: u64, scale: f64) -> Result<()> {
    if !(growth.is_finite() && growth > 1.0) {
        bail!(OP, "growth_factor must be > 1, got {growth}");
    }
    if !(backoff > 0.0 && backoff < 1.0) {
        bail!(OP, "backoff_factor must be in (0, 1), got {backoff}");
    }
    if interval == 0 {
        bail!(OP, "growth_interval must be > 0");
    }
    if !(scale.is_finite() && scale > 0.0) {
        bail!(OP, "scale must be finite and > 0, got {scale}");
    }
    Ok(())
}

impl LossScaler {
    pub fn new(config: LossScalerConfig) -> Result<Self> {
        let c = &config;
        check(
            c.growth_factor,
            c.backoff_factor,
            c.growth_interval,
            c.init_scale as f32 as f64,
        )?;
        Ok(LossScaler {
            scale: c.init_scale as f32,
            growth_tracker: 0,
            config,
        })
    }

    pub fn config(&self) -> &LossScalerConfig {
        &self.config
    }

    /// The factor the loss is multiplied by before backward (1 when disabled).
    pub fn scale(&self) -> f32 {
        if self.config.enabled {
            self.scale
        } else {
            1.0
        }
    }

    /// Consecutive good steps since the last change of scale.
    pub fn growth_tracker(&self) -> u64 {
        self.growth_tracker
    }

    /// Multiplies every gradient by `1/scale` (f32, in place) and returns true when any element
    /// was inf or NaN. Every gradient is unscaled even after an overflow is found, as torch does.
    /// The gradients are on one device; on a GPU this is one multi-tensor launch (the same f32
    /// products and test as here) and one wait for its 4-byte flag.
    pub fn unscale(&self, grads: &mut [&mut Tensor]) -> Result<bool> {
        if !self.config.enabled {
            return Ok(false);
        }
        let inv = (1.0 / self.scale as f64) as f32;
        let device = gradients_device(OP, grads.iter().map(|g| g.device()))?;
        if device == Device::Cpu {
            let mut found = false;
            for (i, g) in grads.iter_mut().enumerate() {
                let x = f32_values_mut(g, OP, &format!("gradient {i}"))?;
                found |= map_chunks_mut(x, |c| unscale_chunk(c, inv)).contains(&true);
            }
            return Ok(found);
        }
        // Checks each gradient's dtype, naming it as above.
        #[cfg(feature = "cuda")]
        return tensor::cuda::optim::unscale(grads, inv);
        #[cfg(not(feature = "cuda"))]
        Err(crate::optim::without_cuda(OP, device))
    }

    /// Ends the step: adjusts the scale (see the module docs) and says whether to apply it.
    pub fn update(&mut self, found_inf: bool) -> StepDecision {
        if !self.config.enabled {
            return StepDecision::Apply;
        }
        if found_inf {
            self.scale = (self.scale as f64 * self.config.backoff_factor) as f32;
            self.growth_tracker = 0;
            return StepDecision::Skip;
        }
        let good = self.growth_tracker + 1;
        if good == self.config.growth_interval {
            let grown = (self.scale as f64 * self.config.growth_factor) as f32;
            if grown.is_finite() {
                self.scale = grown;
            }
            self.growth_tracker = 0;
        } else {
            self.growth_tracker = good;
        }
        StepDecision::Apply
    }

    pub fn state_dict(&self) -> LossScalerState {
        LossScalerState {
            scale: self.scale,
            growth_factor: self.config.growth_factor,
            backoff_factor: self.config.backoff_factor,
            growth_interval: self.config.growth_interval,
            growth_tracker: self.growth_tracker,
        }
    }

    /// Restores a state from [`LossScaler::state_dict`] (validated; nothing changes on error).
    pub fn load_state_dict(&mut self, s: &LossScalerState) -> Result<()> {
        check(
            s.growth_factor,
            s.backoff_factor,
            s.growth_interval,
            s.scale as f64,
        )?;
        self.scale = s.scale;
        self.growth_tracker = s.growth_tracker;
        self.config.growth_factor = s.growth_factor;
        self.config.backoff_factor = s.backoff_factor;
        self.config.growth_interval = s.growth_interval;
        Ok(())
    }
}

/// Scales a chunk by `inv` and says whether it held a non-finite value (exponent bits all ones,
/// tested on the value before scaling; an integer OR, so the loop vectorises).
fn unscale_chunk(x: &mut [f32], inv: f32) -> bool {
    let mut bad = 0u32;
    for v in x.iter_mut() {
        bad |= ((v.to_bits() & 0x7f80_0000) == 0x7f80_0000) as u32;
        *v *= inv;
    }
    bad != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tensor::{DType, Device};

    fn small(interval: u64) -> LossScaler {
        LossScaler::new(LossScalerConfig {
            growth_interval: interval,
            ..LossScalerConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn defaults_are_torch_grad_scaler() {
        let s = LossScaler::new(LossScalerConfig::default()).unwrap();
        assert_eq!(s.scale(), 65536.0);
        assert_eq!(s.growth_tracker(), 0);
        let c = s.config();
        assert_eq!(
            (c.growth_factor, c.backoff_factor, c.growth_interval),
            (2.0, 0.5, 2000)
        );
    }

    #[test]
    fn skip_halve_then_double_after_interval() {
        let mut s = LossScaler::new(LossScalerConfig::default()).unwrap();
        assert_eq!(s.update(true), StepDecision::Skip);
        assert_eq!(s.scale(), 32768.0);
        assert_eq!(s.update(true), StepDecision::Skip);
        assert_eq!(s.scale(), 16384.0);
        for i in 1..2000 {
            assert_eq!(s.update(false), StepDecision::Apply);
            assert_eq!((s.scale(), s.growth_tracker()), (16384.0, i));
        }
        // The 2000th consecutive good step is applied and doubles the scale.
        assert_eq!(s.update(false), StepDecision::Apply);
        assert_eq!((s.scale(), s.growth_tracker()), (32768.0, 0));
        // An overflow resets the count: 1999 good steps, inf, 1999 good: still no growth.
        for _ in 0..1999 {
            let _ = s.update(false);
        }
        assert_eq!(s.update(true), StepDecision::Skip);
        assert_eq!((s.scale(), s.growth_tracker()), (16384.0, 0));
        for _ in 0..1999 {
            let _ = s.update(false);
        }
        assert_eq!(s.scale(), 16384.0);
    }

    #[test]
    fn growth_stops_before_f32_overflow() {
        let mut s = LossScaler::new(LossScalerConfig {
            init_scale: 2f64.powi(127),
            growth_interval: 1,
            ..LossScalerConfig::default()
        })
        .unwrap();
        let _ = s.update(false);
        assert_eq!(s.scale(), 2f32.powi(127));
        assert_eq!(s.growth_tracker(), 0);
        let mut t = small(1);
        let _ = t.update(false);
        assert_eq!(t.scale(), 131072.0);
    }

    #[test]
    fn unscale_detects_inf_and_nan() {
        let s = small(2000);
        let big = 70_000;
        let mut a = Tensor::full(65536.0, &[big], DType::F32, Device::Cpu).unwrap();
        let mut b = Tensor::from_vec(vec![-131072.0f32, 0.0], &[2]).unwrap();
        assert!(!s.unscale(&mut [&mut a, &mut b]).unwrap());
        assert!(a.to_vec::<f32>().unwrap().iter().all(|&x| x == 1.0));
        assert_eq!(b.to_vec::<f32>().unwrap(), vec![-2.0, 0.0]);
        for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
            let mut v = vec![1.0f32; big];
            v[big - 3] = bad; // in the last (ragged) parallel chunk
            let mut a = Tensor::from_vec(v, &[big]).unwrap();
            let mut b = Tensor::from_vec(vec![65536.0f32], &[1]).unwrap();
            assert!(s.unscale(&mut [&mut a, &mut b]).unwrap(), "{bad}");
            // Everything is still unscaled.
            assert_eq!(b.to_vec::<f32>().unwrap(), vec![1.0]);
        }
        // Largest finite f32 is not an overflow.
        let mut m = Tensor::from_vec(vec![f32::MAX], &[1]).unwrap();
        assert!(!s.unscale(&mut [&mut m]).unwrap());
        // Disabled: scale 1, nothing touched, always apply.
        let mut d = LossScaler::new(LossScalerConfig {
            enabled: false,
            ..LossScalerConfig::default()
        })
        .unwrap();
        let mut x = Tensor::from_vec(vec![f32::NAN, 2.0], &[2]).unwrap();
        assert!(!d.unscale(&mut [&mut x]).unwrap());
        assert_eq!(x.to_vec::<f32>().unwrap()[1], 2.0);
        assert_eq!((d.scale(), d.update(true)), (1.0, StepDecision::Apply));
        let mut h = Tensor::zeros(&[2], DType::F16, Device::Cpu).unwrap();
        let err = s.unscale(&mut [&mut h]).unwrap_err().to_string();
        assert!(err.starts_with(OP) && err.contains("gradient 0"), "{err}");
    }

    #[test]
    fn state_round_trip_and_validation() {
        let mut s = small(2000);
        let _ = s.update(true);
        for _ in 0..5 {
            let _ = s.update(false);
        }
        let st = s.state_dict();
        let json = serde_json::to_string(&st).unwrap();
        assert!(json.contains("\"_growth_tracker\":5"), "{json}");
        let back: LossScalerState = serde_json::from_str(&json).unwrap();
        let mut t = small(2000);
        t.load_state_dict(&back).unwrap();
        assert_eq!(t, s);
        // Continuing gives the same trajectory.
        for i in 0..3000 {
            assert_eq!(s.update(i % 1700 == 0), t.update(i % 1700 == 0));
        }
        assert_eq!(s, t);
        let bad = LossScalerState { scale: 0.0, ..st };
        assert!(t.load_state_dict(&bad).is_err());
        assert!(LossScaler::new(LossScalerConfig {
            backoff_factor: 1.0,
            ..LossScalerConfig::default()
        })
        .is_err());
    }
}
