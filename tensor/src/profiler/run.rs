//! A profiled run as the command-line programs drive it (`--profile`, `--profile_steps A:B`,
//! `--profile_trace FILE`): [`start_run`] turns the profiler on (or arms the step window),
//! [`step`] marks each training step (inside the window profiling is on, outside it is off; the
//! GPU's events are read when a profiled step ends), and [`finish_run`] writes the trace and
//! returns the tables.

use super::{disable, enable, flush_gpu, report, totals, write_chrome_trace};
use crate::{Error, Result};
use std::path::PathBuf;
use std::sync::Mutex;

/// What the flags asked for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunOptions {
    /// Profile only the steps `A..B` (A included, B not; steps counted as the trainer counts
    /// them). `None`: every step.
    pub steps: Option<(u64, u64)>,
    /// Where to write the Chrome trace at the end.
    pub trace: Option<PathBuf>,
}

static RUN: Mutex<Option<RunOptions>> = Mutex::new(None);

fn options() -> Option<RunOptions> {
    RUN.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// `"A:B"` (A < B) as a step window; errors name the flag.
pub fn parse_steps(s: &str) -> Result<(u64, u64)> {
    let bad = || {
        Error::op(
            "--profile_steps",
            format!("expects A:B with A < B, got {s:?}"),
        )
    };
    let (a, b) = s.split_once(':').ok_or_else(bad)?;
    let (a, b): (u64, u64) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a >= b {
        return Err(bad());
    }
    Ok((a, b))
}

/// Starts a profiled run: on at once, or at the first step of the window.
pub fn start_run(o: RunOptions) {
    if o.steps.is_none() {
        enable();
    }
    *RUN.lock().unwrap_or_else(|e| e.into_inner()) = Some(o);
}

/// Marks one training step until dropped.
pub struct Step {
    on: bool,
}

/// Step `n` begins: inside the run's window profiling is on, outside it off (no run, or no
/// window: unchanged). The guard reads the step's GPU events when it drops.
pub fn step(n: u64) -> Step {
    if let Some(RunOptions {
        steps: Some((a, b)),
        ..
    }) = options()
    {
        if (a..b).contains(&n) {
            enable();
        } else {
            disable();
        }
    }
    Step {
        on: super::enabled(),
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if self.on {
            flush_gpu();
        }
    }
}

/// Ends the run: profiling off, the trace written (atomically) if asked, and the tables, if
/// anything was recorded (a run, or `COTMAE_PROFILE=1`).
pub fn finish_run() -> Result<Option<String>> {
    let o = RUN.lock().unwrap_or_else(|e| e.into_inner()).take();
    let recorded = !totals().is_empty();
    let table = recorded.then(report);
    disable();
    if let Some(path) = o.and_then(|o| o.trace) {
        write_chrome_trace(&path)?;
    }
    Ok(table)
}
