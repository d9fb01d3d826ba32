//! Profiling from the command line. [`ProfileArgs`] is the flag group `pretrain`,
//! `train-retriever` and `encode` flatten in (`--profile`, `--profile_steps A:B`,
//! `--profile_trace FILE`; see `tensor::profiler` and docs/PROFILING.md); `cotmae profile
//! TRACE.json [OTHER.json]` prints the tables of a saved trace, or two traces side by side.

use super::CliResult;
use crate::{Error, Result};
use clap::Args;
use std::path::PathBuf;
use tensor::profiler;

/// The flag group (flatten it into a subcommand's `Args`).
#[derive(Args, Clone, Debug, Default, PartialEq)]
#[command(rename_all = "snake_case")]
pub struct ProfileArgs {
    /// Time every op (per op, per module, per phase, FLOP/s and GB/s) and print the tables at
    /// the end (also set by the next two flags, and by COTMAE_PROFILE=1).
    #[arg(long)]
    pub profile: bool,
    /// Profile only the steps A to B-1 (skip warm-up), e.g. 5:8.
    #[arg(long, value_name = "A:B")]
    pub profile_steps: Option<String>,
    /// Also write a Chrome trace (Perfetto, chrome://tracing, speedscope) to FILE.
    #[arg(long, value_name = "FILE")]
    pub profile_trace: Option<PathBuf>,
}

impl ProfileArgs {
    /// Turns the profiler on as asked (nothing when no flag is given).
    pub fn start(&self) -> Result<()> {
        let steps = self
            .profile_steps
            .as_deref()
            .map(profiler::parse_steps)
            .transpose()?;
        if self.profile || steps.is_some() || self.profile_trace.is_some() {
            profiler::start_run(profiler::RunOptions {
                steps,
                trace: self.profile_trace.clone(),
            });
        }
        Ok(())
    }

    /// Prints the tables (when anything was profiled) and writes the trace.
    pub fn finish(&self) -> Result<()> {
        if let Some(table) = profiler::finish_run()? {
            eprintln!("{table}");
        }
        if let Some(path) = &self.profile_trace {
            eprintln!("profile: wrote the trace {}", path.display());
        }
        Ok(())
    }
}

#[derive(Args, Debug)]
pub struct ProfileCmdArgs {
    /// A trace written by --profile_trace.
    pub trace: PathBuf,
    /// A second trace (after a change): the op tables side by side with ratios.
    pub other: Option<PathBuf>,
}

pub fn run(a: ProfileCmdArgs) -> CliResult {
    let read = |p: &PathBuf| -> Result<profiler::Summary> {
        let records = profiler::read_chrome_trace(p)?;
        if records.is_empty() {
            return Err(Error::Config(format!(
                "{}: no profiler events (was it written by --profile_trace?)",
                p.display()
            )));
        }
        Ok(profiler::Summary::from_records(&records))
    };
    let first = read(&a.trace)?;
    match &a.other {
        None => print!("{}", first.render(profiler::Peak::from_env())),
        Some(other) => print!("{}", profiler::compare(&first, &read(other)?)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tensor::{DType, Device, Tensor};

    #[test]
    fn a_saved_trace_prints_and_compares_and_bad_ones_are_named() {
        let dir = std::env::temp_dir().join(format!("cotmae-profile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.json");
        {
            let _s = profiler::session(1 << 12);
            let _m = profiler::module("bert");
            let a = Tensor::ones(&[4, 4], DType::F32, Device::Cpu).unwrap();
            a.matmul(&a).unwrap();
            drop(_m);
            profiler::write_chrome_trace(&path).unwrap();
        }
        run(ProfileCmdArgs {
            trace: path.clone(),
            other: Some(path.clone()),
        })
        .unwrap();
        std::fs::write(&path, "{\"traceEvents\": []}").unwrap();
        let e = run(ProfileCmdArgs {
            trace: path.clone(),
            other: None,
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("t.json") && e.contains("no profiler events"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn profile_steps_must_be_a_window() {
        let bad = ProfileArgs {
            profile_steps: Some("8:5".into()),
            ..ProfileArgs::default()
        };
        let e = bad.start().unwrap_err().to_string();
        assert!(e.contains("--profile_steps") && e.contains("8:5"), "{e}");
        assert_eq!(profiler::parse_steps("5:8").unwrap(), (5, 8));
    }
}
