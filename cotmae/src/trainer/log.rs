//! Where the logged numbers go: a progress bar and one line per log on the terminal, one JSON
//! object per log in `output_dir/trainer_log.jsonl`, and TensorBoard scalars (tag `train/<key>`,
//! as HF's `TensorBoardCallback` rewrites them) in `logging_dir`.
//!
//! A JSON line is `{"step": N, "<key>": value, ...}` with the keys in logging order and numbers
//! written so they parse back to the same f64 (a non-finite value is `null`). Each line is
//! flushed as it is written. A fresh run truncates the file; a run resumed from step `k` first
//! drops the lines after step `k` (the interrupted run logged them; they will be logged again)
//! and any torn last line, then appends. TensorBoard gets the same purge (see `tensorboard`).
//!
//! HF's default logging directory is `output_dir/runs/<Mon><DD>_<HH>-<MM>-<SS>_<host>`; the time
//! here is UTC.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};

use super::checkpoint::write_file_atomic;
use super::tensorboard::{hostname, EventWriter};
use crate::{Error, Result};

pub const LOG_FILE: &str = "trainer_log.jsonl";

/// `<Mon><DD>_<HH>-<MM>-<SS>` (UTC) of a Unix time, as Python's `strftime("%b%d_%H-%M-%S")`.
pub fn utc_stamp(unix_secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (days, secs) = (unix_secs / 86_400, unix_secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    format!(
        "{}{day:02}_{:02}-{:02}-{:02}",
        MONTHS[(month - 1) as usize],
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// HF's default `logging_dir` for `output_dir`.
pub fn default_logging_dir(output_dir: &Path) -> PathBuf {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    output_dir
        .join("runs")
        .join(format!("{}_{}", utc_stamp(secs), hostname()))
}

/// A number for the terminal: scientific below 1e-3, else 4 decimals.
fn short(v: f64) -> String {
    if v != 0.0 && v.abs() < 1e-3 {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

/// The JSON line of one log.
pub fn json_line(step: u64, values: &[(&str, f64)]) -> String {
    let mut line = format!("{{\"step\":{step}");
    for (k, v) in values {
        let key = serde_json::Value::from(*k);
        line.push_str(&format!(",{key}:{}", serde_json::Value::from(*v)));
    }
    line.push_str("}\n");
    line
}

/// The step of a JSON line, if it is a complete object with one.
fn line_step(line: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(line)
        .ok()?
        .get("step")?
        .as_u64()
}

/// The progress bar, the JSON-lines file and the TensorBoard writer of a run.
pub struct MetricsLog {
    jsonl_path: PathBuf,
    jsonl: File,
    tb: EventWriter,
    bar: ProgressBar,
    max_steps: u64,
}

impl MetricsLog {
    /// Opens the log of a run that starts after step `resumed_at` (0 for a fresh run) of
    /// `max_steps` (module doc).
    pub fn open(
        output_dir: &Path,
        logging_dir: &Path,
        resumed_at: Option<u64>,
        max_steps: u64,
    ) -> Result<MetricsLog> {
        let jsonl_path = output_dir.join(LOG_FILE);
        if let Some(k) = resumed_at {
            let kept: String = match std::fs::read_to_string(&jsonl_path) {
                Ok(text) => text
                    .lines()
                    .filter(|l| line_step(l).is_some_and(|s| s <= k))
                    .map(|l| format!("{l}\n"))
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(Error::io(&jsonl_path, e)),
            };
            write_file_atomic(&jsonl_path, kept.as_bytes())?;
        } else {
            File::create(&jsonl_path).map_err(|e| Error::io(&jsonl_path, e))?;
        }
        let jsonl = OpenOptions::new()
            .append(true)
            .open(&jsonl_path)
            .map_err(|e| Error::io(&jsonl_path, e))?;
        let tb = EventWriter::create(logging_dir, resumed_at.map(|k| k + 1))?;
        let bar = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(max_steps);
            let style = ProgressStyle::with_template(
                "pretrain [{elapsed_precise}] {wide_bar} {pos}/{len} steps ({per_sec}, eta {eta}) {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_position(resumed_at.unwrap_or(0));
            bar
        } else {
            ProgressBar::hidden()
        };
        Ok(MetricsLog {
            jsonl_path,
            jsonl,
            tb,
            bar,
            max_steps,
        })
    }

    /// The TensorBoard file being written.
    pub fn tensorboard_file(&self) -> &Path {
        self.tb.path()
    }

    /// Moves the progress bar to `step`.
    pub fn progress(&self, step: u64) {
        self.bar.set_position(step);
    }

    /// Prints a line above the progress bar (plainly when there is none).
    pub fn println(&self, text: &str) {
        self.bar.suspend(|| eprintln!("{text}"));
    }

    /// One log at `step`: terminal, JSON line, TensorBoard scalars.
    pub fn log(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        let io = |e| Error::io(&self.jsonl_path, e);
        self.jsonl
            .write_all(json_line(step, values).as_bytes())
            .map_err(io)?;
        self.jsonl.flush().map_err(io)?;
        for (k, v) in values {
            self.tb.add_scalar(&format!("train/{k}"), *v, step)?;
        }
        self.tb.flush()?;
        let text: Vec<String> = values
            .iter()
            .map(|(k, v)| format!("{k} {}", short(*v)))
            .collect();
        self.println(&format!(
            "step {step}/{}: {}",
            self.max_steps,
            text.join(", ")
        ));
        if let Some((_, loss)) = values.iter().find(|(k, _)| *k == "loss") {
            self.bar.set_message(format!("loss {}", short(*loss)));
        }
        Ok(())
    }

    /// Clears the progress bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_match_python_strftime() {
        // datetime.utcfromtimestamp(t).strftime("%b%d_%H-%M-%S")
        assert_eq!(utc_stamp(0), "Jan01_00-00-00");
        assert_eq!(utc_stamp(951_782_400), "Feb29_00-00-00"); // 2000-02-29
        assert_eq!(utc_stamp(1_709_251_199), "Feb29_23-59-59"); // 2024-02-29
        assert_eq!(utc_stamp(1_735_689_599), "Dec31_23-59-59"); // 2024-12-31
        assert_eq!(utc_stamp(4_107_542_400), "Mar01_00-00-00"); // 2100-03-01
    }

    #[test]
    fn json_lines_round_trip_and_resume_truncation() {
        let line = json_line(7, &[("loss", 0.1 + 0.2), ("grad_norm", f64::NAN)]);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["step"], 7);
        assert_eq!(
            v["loss"].as_f64().unwrap().to_bits(),
            (0.1f64 + 0.2).to_bits()
        );
        assert!(v["grad_norm"].is_null());
        assert!(line.starts_with("{\"step\":7,\"loss\":"));

        let dir = std::env::temp_dir().join(format!("cotmae-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let tb = dir.join("runs");
        let mut log = MetricsLog::open(&dir, &tb, None, 10).unwrap();
        for s in 1..=5 {
            log.log(s, &[("loss", s as f64)]).unwrap();
        }
        drop(log);
        // A torn line, as a kill in the middle of a write leaves.
        let path = dir.join(LOG_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"step\":6,\"lo").unwrap();
        drop(f);
        let mut log = MetricsLog::open(&dir, &tb, Some(3), 10).unwrap();
        log.log(4, &[("loss", 40.0)]).unwrap();
        let steps: Vec<(u64, f64)> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
            })
            .collect();
        assert_eq!(steps, [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]);
        // A fresh run starts an empty file.
        drop(MetricsLog::open(&dir, &tb, None, 10).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        let files = std::fs::read_dir(&tb).unwrap().count();
        assert_eq!(files, 3, "one events file per run");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
