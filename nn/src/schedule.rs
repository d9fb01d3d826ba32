//! Learning-rate schedules with HF transformers' semantics.
//!
//! HF builds a `LambdaLR`: the lr of optimizer step number `s` (counting from 0) is
//! `base_lr * lambda(s)`, where `s` is how many times the scheduler has been stepped. The Trainer
//! steps the scheduler after each optimizer step that was actually taken (not after an fp16 step
//! skipped for inf/NaN gradients), so the very first update uses `lambda(0)`, which is 0 whenever
//! there is a warmup.
//!
//! `linear` (`get_linear_schedule_with_warmup`):
//! `lambda(s) = s / max(1, warmup)` for `s < warmup`, else
//! `max(0, (total - s) / max(1, total - warmup))`.
//! `constant`: 1. `constant_with_warmup`: the warmup ramp, then 1.
//! Everything is evaluated in f64 as Python does (integers are exact in f64 below 2^53).

use serde::{Deserialize, Serialize};

/// HF's `lr_scheduler_type` values we support.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    Linear,
    Constant,
    ConstantWithWarmup,
}

impl ScheduleKind {
    /// Parses HF's name ("linear", "constant", "constant_with_warmup").
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "linear" => Some(ScheduleKind::Linear),
            "constant" => Some(ScheduleKind::Constant),
            "constant_with_warmup" => Some(ScheduleKind::ConstantWithWarmup),
            _ => None,
        }
    }
}

/// The warmup length HF `TrainingArguments.get_warmup_steps` picks: `warmup_steps` when it is
/// positive, else `ceil(total * warmup_ratio)` (the product in f64, as Python computes it).
pub fn warmup_steps(total_steps: u64, warmup_steps: u64, warmup_ratio: f64) -> u64 {
    if warmup_steps > 0 {
        warmup_steps
    } else {
        (total_steps as f64 * warmup_ratio).ceil().max(0.0) as u64
    }
}

/// A schedule plus its position: the number of optimizer steps taken so far (the `LambdaLR`'s
/// `last_epoch`). Serialisable for checkpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    pub base_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    /// Optimizer steps taken so far; the next step uses `lr_at(step)`.
    pub step: u64,
}

impl LrSchedule {
    /// `get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)`.
    pub fn linear(base_lr: f64, warmup_steps: u64, total_steps: u64) -> Self {
        LrSchedule {
            kind: ScheduleKind::Linear,
            base_lr,
            warmup_steps,
            total_steps,
            step: 0,
        }
    }

    /// `get_constant_schedule`.
    pub fn constant(base_lr: f64) -> Self {
        LrSchedule {
            kind: ScheduleKind::Constant,
            base_lr,
            warmup_steps: 0,
            total_steps: 0,
            step: 0,
        }
    }

    /// `get_constant_schedule_with_warmup`.
    pub fn constant_with_warmup(base_lr: f64, warmup_steps: u64) -> Self {
        LrSchedule {
            kind: ScheduleKind::ConstantWithWarmup,
            base_lr,
            warmup_steps,
            total_steps: 0,
            step: 0,
        }
    }

    /// The multiplier `lambda(s)` of optimizer step `s` (0-based).
    pub fn multiplier(&self, s: u64) -> f64 {
        let warm = self.warmup_steps;
        if self.kind != ScheduleKind::Constant && s < warm {
            return s as f64 / warm.max(1) as f64;
        }
        match self.kind {
            ScheduleKind::Constant | ScheduleKind::ConstantWithWarmup => 1.0,
            ScheduleKind::Linear => {
                let left = self.total_steps as i128 - s as i128;
                let span = (self.total_steps as i128 - warm as i128).max(1);
                (left as f64 / span as f64).max(0.0)
            }
        }
    }

    /// The lr of optimizer step `s` (0-based): `base_lr * lambda(s)`.
    pub fn lr_at(&self, s: u64) -> f64 {
        self.base_lr * self.multiplier(s)
    }

    /// The lr the next optimizer step uses.
    pub fn lr(&self) -> f64 {
        self.lr_at(self.step)
    }

    /// Advances after an optimizer step that was taken (HF: `lr_scheduler.step()`). Do not call
    /// it for a step the loss scaler skipped.
    pub fn advance(&mut self) {
        self.step += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_boundaries_by_hand() {
        // base 1e-4, total 10, warmup ceil(10 * 0.1) = 1... use warmup 4 for a longer ramp.
        let s = LrSchedule::linear(1e-4, 4, 10);
        assert_eq!(s.lr_at(0), 0.0); // first optimizer step: no update size
        assert_eq!(s.lr_at(1), 1e-4 * 0.25);
        assert_eq!(s.lr_at(3), 1e-4 * 0.75);
        assert_eq!(s.lr_at(4), 1e-4); // warmup end: the peak
        assert_eq!(s.lr_at(5), 1e-4 * (5.0 / 6.0));
        assert_eq!(s.lr_at(9), 1e-4 * (1.0 / 6.0)); // the last step of 10
        assert_eq!(s.lr_at(10), 0.0);
        assert_eq!(s.lr_at(11), 0.0); // clamped, never negative
    }

    #[test]
    fn degenerate_linear_schedules() {
        // No warmup: the first step uses the full lr.
        let s = LrSchedule::linear(2.0, 0, 4);
        assert_eq!((s.lr_at(0), s.lr_at(1), s.lr_at(3)), (2.0, 1.5, 0.5));
        // Warmup covering everything: total - warmup <= 0 is clamped to 1 in the divisor.
        let s = LrSchedule::linear(1.0, 5, 5);
        assert_eq!((s.lr_at(4), s.lr_at(5), s.lr_at(6)), (0.8, 0.0, 0.0));
        let s = LrSchedule::linear(1.0, 8, 5);
        assert_eq!(
            (s.lr_at(5), s.lr_at(7), s.lr_at(8)),
            (5.0 / 8.0, 7.0 / 8.0, 0.0)
        );
    }

    #[test]
    fn constant_schedules_and_advance() {
        let s = LrSchedule::constant(3e-5);
        assert_eq!((s.lr_at(0), s.lr_at(1_000_000)), (3e-5, 3e-5));
        let mut s = LrSchedule::constant_with_warmup(1.0, 2);
        assert_eq!(s.lr(), 0.0);
        s.advance();
        assert_eq!(s.lr(), 0.5);
        s.advance();
        assert_eq!((s.lr(), s.step), (1.0, 2));
        assert_eq!(s.lr_at(100), 1.0);
        assert_eq!(
            ScheduleKind::from_name("linear"),
            Some(ScheduleKind::Linear)
        );
        assert_eq!(ScheduleKind::from_name("cosine"), None);
    }

    #[test]
    fn warmup_steps_as_hf_computes_them() {
        assert_eq!(warmup_steps(800_000, 0, 0.1), 80_000); // the CoT-MAE pretraining run
        assert_eq!(warmup_steps(4, 0, 0.25), 1);
        assert_eq!(warmup_steps(5, 0, 0.3), 2); // ceil(1.5)
        assert_eq!(warmup_steps(3, 0, 0.1), 1); // ceil(0.30000000000000004)
        assert_eq!(warmup_steps(1000, 0, 0.0), 0);
        assert_eq!(warmup_steps(1000, 7, 0.5), 7); // explicit steps win
                                                   // f64 product semantics: 0.07 * 100 = 7.000000000000001 in f64, so ceil gives 8.
        assert_eq!(warmup_steps(100, 0, 0.07), 8);
    }

    #[test]
    fn serde_round_trip_is_exact() {
        let mut s = LrSchedule::linear(1.0 / 3.0 * 1e-4, 80_000, 800_000);
        s.step = 12_345;
        let json = serde_json::to_string(&s).unwrap();
        let back: LrSchedule = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.lr().to_bits(), s.lr().to_bits());
    }
}
