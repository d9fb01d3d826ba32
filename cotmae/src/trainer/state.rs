//! What a checkpoint records besides the weights and the optimizer: the step, the data
//! position, the dropout generator and the loss sums of the current logging interval, as
//! `trainer_state.json`. With these, a resumed run continues bit for bit. An `--fp16` run adds
//! its loss scaler and the number of steps it skipped (both absent otherwise).
//!
//! Floating-point sums are stored as the bits of their f64 (`"loss_bits": 4614256656552045848`),
//! since a decimal round trip through JSON is not guaranteed to be exact.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tensor::Rng;

use super::loader::LoaderState;
use crate::{Error, Result};

/// File name inside a checkpoint directory.
pub const STATE_FILE: &str = "trainer_state.json";
const FORMAT: &str = "cotmae.TrainerState/1";

/// Serialises an f64 as its bit pattern (exact through JSON).
mod f64_bits {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(x.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(f64::from_bits(u64::deserialize(d)?))
    }
}

/// A `tensor::Rng`'s position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: u64,
    pub offset: u64,
}

impl From<Rng> for RngState {
    fn from(r: Rng) -> Self {
        RngState {
            seed: r.seed,
            offset: r.offset,
        }
    }
}

impl From<RngState> for Rng {
    fn from(r: RngState) -> Self {
        Rng {
            seed: r.seed,
            offset: r.offset,
        }
    }
}

/// Sums over optimizer steps: each step adds the mean of its micro-batch losses (HF adds
/// `loss / gradient_accumulation_steps` per micro-batch), so a mean over steps is a sum divided
/// by `steps`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LossSums {
    pub steps: u64,
    /// Sequences (two per document) seen.
    pub sequences: u64,
    #[serde(rename = "loss_bits", with = "f64_bits")]
    pub loss: f64,
    #[serde(rename = "encoder_mlm_loss_bits", with = "f64_bits")]
    pub encoder_mlm_loss: f64,
    #[serde(rename = "head_mlm_loss_bits", with = "f64_bits")]
    pub head_mlm_loss: f64,
}

impl LossSums {
    pub fn add(&mut self, other: &LossSums) {
        self.steps += other.steps;
        self.sequences += other.sequences;
        self.loss += other.loss;
        self.encoder_mlm_loss += other.encoder_mlm_loss;
        self.head_mlm_loss += other.head_mlm_loss;
    }

    /// `(loss, encoder_mlm_loss, head_mlm_loss)` averaged over the steps.
    pub fn means(&self) -> (f64, f64, f64) {
        let n = self.steps.max(1) as f64;
        (
            self.loss / n,
            self.encoder_mlm_loss / n,
            self.head_mlm_loss / n,
        )
    }
}

/// The trainer's state after optimizer step `global_step`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub format: String,
    /// Optimizer steps done.
    pub global_step: u64,
    /// The run's total (the schedule's length).
    pub max_steps: u64,
    /// Where the next batch comes from.
    pub loader: LoaderState,
    /// The dropout generator (`Ctx::rng`).
    pub dropout_rng: RngState,
    /// Steps since the last log (what the next log averages).
    pub since_log: LossSums,
    /// Every step of the run (the final `train_loss`).
    pub total: LossSums,
    /// The TensorBoard directory, kept by a resumed run.
    pub logging_dir: PathBuf,
    /// Steps skipped on an fp16 overflow: counted in `global_step`, not in the learning-rate
    /// schedule, whose position is `global_step - skipped_steps` (written only when > 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped_steps: u64,
    /// An `--fp16` run's loss scaler (torch's `GradScaler.state_dict()` fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scaler: Option<nn::loss_scale::LossScalerState>,
    /// Data-parallel ranks of the run that wrote the state (1 when absent: older states).
    #[serde(default = "one")]
    pub world_size: u64,
}

fn one() -> u64 {
    1
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl TrainerState {
    pub fn new(
        max_steps: u64,
        loader: LoaderState,
        dropout_rng: Rng,
        logging_dir: PathBuf,
    ) -> Self {
        TrainerState {
            format: FORMAT.into(),
            global_step: 0,
            max_steps,
            loader,
            dropout_rng: dropout_rng.into(),
            since_log: LossSums::default(),
            total: LossSums::default(),
            logging_dir,
            skipped_steps: 0,
            loss_scaler: None,
            world_size: 1,
        }
    }

    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("state serialises");
        s.push('\n');
        s
    }

    /// Reads `dir/trainer_state.json`.
    pub fn load(dir: &Path) -> Result<TrainerState> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let state: TrainerState = serde_json::from_str(&text)
            .map_err(|e| Error::format(&path, format!("invalid trainer state: {e}")))?;
        if state.format != FORMAT {
            return Err(Error::format(
                &path,
                format!("format {:?}, expected {FORMAT:?}", state.format),
            ));
        }
        state
            .check_numbers()
            .map_err(|(field, msg)| Error::format(&path, format!("{field}: {msg}")))?;
        Ok(state)
    }

    /// Checks the numbers a resume computes with, so a corrupt or hand-edited file is an error
    /// naming the field instead of an overflow later: the step counters, the epoch, and the random
    /// generators' positions and the fp16 loss scaler.
    fn check_numbers(&self) -> std::result::Result<(), (&'static str, String)> {
        let g = self.global_step;
        let counts = [
            ("skipped_steps", self.skipped_steps, g),
            ("since_log.steps", self.since_log.steps, g),
            ("total.steps", self.total.steps, g),
            (
                "since_log.sequences",
                self.since_log.sequences,
                MAX_SEQUENCES,
            ),
            ("total.sequences", self.total.sequences, MAX_SEQUENCES),
            ("loader.epoch", self.loader.epoch, MAX_EPOCH),
        ];
        for (field, v, max) in counts {
            if v > max {
                return Err((field, format!("{v} is larger than {max}")));
            }
        }
        let offsets = [
            ("dropout_rng.offset", self.dropout_rng.offset),
            ("loader.collator.offset", self.loader.collator.offset),
        ];
        for (field, v) in offsets {
            if v > MAX_RNG_OFFSET {
                return Err((
                    field,
                    format!("{v} is beyond every random stream (at most {MAX_RNG_OFFSET})"),
                ));
            }
        }
        if let Some(s) = &self.loss_scaler {
            if s.growth_tracker >= s.growth_interval {
                return Err((
                    "loss_scaler._growth_tracker",
                    format!(
                        "{} is not below growth_interval {}",
                        s.growth_tracker, s.growth_interval
                    ),
                ));
            }
            let mut scaler = nn::loss_scale::LossScaler::new(Default::default())
                .map_err(|e| ("loss_scaler", e.to_string()))?;
            scaler
                .load_state_dict(s)
                .map_err(|e| ("loss_scaler", e.to_string()))?;
        }
        Ok(())
    }
}

/// The largest epoch a state may record: the sampler's stream for epoch `e` starts at
/// `SAMPLER + e * 2^32`, which must stay below 2^64.
const MAX_EPOCH: u64 = 1 << 24;
/// The largest generator position a state may record: the streams start below 2^58
/// (`super::streams`), and a run draws far fewer than 2^62 blocks, so counters never wrap.
const MAX_RNG_OFFSET: u64 = 1 << 62;
/// A bound on sequences counted by one run (2^48, far beyond any corpus times epochs), so sums
/// of them cannot overflow.
const MAX_SEQUENCES: u64 = 1 << 48;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collator::CollatorState;

    #[test]
    fn json_round_trip_is_exact() {
        let mut st = TrainerState::new(
            100,
            LoaderState {
                epoch: 2,
                index: 17,
                collator: CollatorState {
                    seed: 5,
                    offset: (2 << 56) + 12_345_678_901,
                },
            },
            Rng {
                seed: 42,
                offset: 1 << 56,
            },
            PathBuf::from("out/runs/x"),
        );
        st.global_step = 40;
        // Values whose shortest decimal forms are long.
        st.since_log = LossSums {
            steps: 3,
            sequences: 96,
            loss: 0.1 + 0.2,
            encoder_mlm_loss: 1.0 / 3.0,
            head_mlm_loss: f64::MIN_POSITIVE * 3.0,
        };
        st.total.add(&st.since_log.clone());
        st.total.add(&st.since_log.clone());
        let json = st.to_json();
        assert!(
            !json.contains("skipped") && !json.contains("scale"),
            "f32: no fp16 fields"
        );
        st.skipped_steps = 3;
        st.loss_scaler = Some(nn::Precision::F16.loss_scaler().unwrap().state_dict());
        let dir = std::env::temp_dir().join(format!("cotmae-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(STATE_FILE), st.to_json()).unwrap();
        let back = TrainerState::load(&dir).unwrap();
        assert_eq!(back, st);
        assert_eq!(back.since_log.loss.to_bits(), (0.1f64 + 0.2).to_bits());
        assert_eq!(back.total.steps, 6);
        std::fs::write(dir.join(STATE_FILE), "{}").unwrap();
        let err = TrainerState::load(&dir).unwrap_err().to_string();
        assert!(err.contains(STATE_FILE), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
