//! `--device`, `--fp16` and `--bf16`: where a subcommand computes and in which precision, one
//! flag group shared by every subcommand that runs a model (`pretrain`, `train-retriever`,
//! `encode`, `pipeline`, `demo`; `search` takes `--device` alone).
//!
//! `--device` takes torch's names: `cpu` (the default), `cuda` (the first GPU) or `cuda:N`. A
//! CUDA device needs a build with the `cuda` feature (`cargo build --release --features cuda`)
//! and, at run time, the CUDA driver, NVRTC and cuBLAS and the GPU itself; each missing piece is
//! an error naming the flag. `--fp16` / `--bf16` (HF Trainer names; a value is optional, as
//! `--fp16 true`) select mixed precision ([`nn::Precision`]), which runs the matrix products in
//! half precision: `--bf16` on the GPU (cuBLAS) or the CPU (the bf16 GEMM on AMX or
//! AVX512-BF16), `--fp16` on the GPU only (with `--device cpu` it is an error), never both.

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args};
use nn::Precision;
use serde::{Deserialize, Serialize};
use tensor::Device;

use crate::{Error, Result};

/// The flag group (flatten it into a subcommand's `Args`).
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[command(rename_all = "snake_case")]
pub struct DeviceArgs {
    /// Where to compute: cpu, cuda (the first GPU) or cuda:N (needs a build with --features
    /// cuda).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Mixed precision: f16 matrix products with f32 master weights and dynamic loss scaling
    /// (needs --device cuda).
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true",
          action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub fp16: bool,
    /// Mixed precision: bf16 matrix products with f32 master weights, no loss scaling (on the GPU
    /// or the CPU).
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true",
          action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub bf16: bool,
}

impl Default for DeviceArgs {
    fn default() -> Self {
        DeviceArgs {
            device: "cpu".into(),
            fp16: false,
            bf16: false,
        }
    }
}

/// `--device NAME` as a device, without touching the GPU; the error names the flag.
pub fn parse_device(name: &str) -> Result<Device> {
    name.parse::<Device>().map_err(|e| match e {
        tensor::Error::Op { msg, .. } => Error::Config(format!("--device {msg}")),
        other => Error::Config(format!("--device {name}: {other}")),
    })
}

/// `--device NAME` as a device that can be used now: parsed, and the GPU opened (the CUDA
/// backend's error, naming what is missing, when it cannot be). A GPU is logged to stderr with
/// its name, and as "simulated" on the CUDA simulator (`COTMAE_CUDA_SIM=1`).
pub fn open_device(name: &str) -> Result<Device> {
    let device = parse_device(name)?;
    device
        .ensure_available()
        .map_err(|e| Error::Config(format!("--device {name}: {e}")))?;
    if !device.is_cpu() {
        let what = device
            .describe()
            .map_err(|e| Error::Config(format!("--device {name}: {e}")))?;
        eprintln!("--device {name}: {what}");
    }
    Ok(device)
}

impl DeviceArgs {
    /// The device and precision the flags ask for, checked for consistency (no GPU access).
    pub fn parse(&self) -> Result<(Device, Precision)> {
        let device = parse_device(&self.device)?;
        let precision = Precision::from_flags(self.fp16, self.bf16).map_err(|_| {
            Error::Config("--fp16 and --bf16 exclude each other; give at most one".into())
        })?;
        if precision == Precision::F16 && device.is_cpu() {
            return Err(Error::Config(
                "--fp16: mixed precision runs the matrix products in half precision on a GPU; \
                 give --device cuda with it, or --bf16 (bf16 products, also on the CPU), or \
                 leave --fp16 out to compute in f32 on the CPU"
                    .into(),
            ));
        }
        Ok((device, precision))
    }

    /// [`DeviceArgs::parse`], then the GPU opened (see [`open_device`]).
    pub fn open(&self) -> Result<(Device, Precision)> {
        let (_, precision) = self.parse()?;
        Ok((open_device(&self.device)?, precision))
    }

    /// `--device NAME` as arguments, for a stage that takes only the device (`search`).
    pub fn device_argv(&self) -> Vec<String> {
        vec!["--device".into(), self.device.clone()]
    }

    /// The whole group as arguments for a subcommand run by `pipeline` or `demo`.
    pub fn argv(&self) -> Vec<String> {
        let mut v = self.device_argv();
        for (on, flag) in [(self.fp16, "--fp16"), (self.bf16, "--bf16")] {
            if on {
                v.push(flag.into());
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        d: DeviceArgs,
    }

    fn flags(args: &[&str]) -> DeviceArgs {
        Flags::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .unwrap()
            .d
    }

    fn err(args: &[&str]) -> String {
        flags(args).parse().unwrap_err().to_string()
    }

    #[test]
    fn defaults_to_f32_on_the_cpu_and_round_trips_through_argv() {
        let d = flags(&[]);
        assert_eq!(d, DeviceArgs::default());
        assert_eq!(d.parse().unwrap(), (Device::Cpu, Precision::F32));
        assert_eq!(d.open().unwrap(), (Device::Cpu, Precision::F32));
        assert_eq!(d.argv(), ["--device", "cpu"]);
        let d = flags(&["--device", "cuda:1", "--bf16", "--fp16", "false"]);
        assert!(d.bf16 && !d.fp16 && d.device == "cuda:1");
        let argv = d.argv();
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        assert_eq!(flags(&refs), d);
        assert_eq!(d.device_argv(), ["--device", "cuda:1"]);
    }

    #[test]
    fn flag_errors_name_the_flag() {
        assert_eq!(
            err(&["--device", "gpu"]),
            "--device gpu: expected cpu, cuda or cuda:N"
        );
        assert!(err(&["--device", "cuda:x"]).starts_with("--device cuda:x: expected a GPU ordinal"));
        assert_eq!(
            err(&["--fp16"]),
            "--fp16: mixed precision runs the matrix products in half precision on a GPU; give \
             --device cuda with it, or --bf16 (bf16 products, also on the CPU), or leave --fp16 \
             out to compute in f32 on the CPU"
        );
        // bf16 runs on the CPU too.
        let d = flags(&["--bf16", "true", "--device", "cpu"]);
        assert_eq!(d.parse().unwrap(), (Device::Cpu, Precision::Bf16));
        assert_eq!(d.argv(), ["--device", "cpu", "--bf16"]);
        assert_eq!(
            err(&["--fp16", "--bf16"]),
            "--fp16 and --bf16 exclude each other; give at most one"
        );
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_needs_a_cuda_build() {
        for name in ["cuda", "cuda:0"] {
            for extra in [&[][..], &["--bf16"][..]] {
                let mut args = vec!["--device", name];
                args.extend(extra);
                assert_eq!(
                    err(&args),
                    format!(
                        "--device {name}: this build has no CUDA backend; rebuild with `cargo \
                         build --release --features cuda`"
                    )
                );
            }
        }
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_parses_with_the_feature_and_opening_reports_what_is_missing() {
        let d = flags(&["--device", "cuda", "--fp16"]);
        assert_eq!(d.parse().unwrap(), (Device::Cuda(0), Precision::F16));
        // No machine has a GPU of this ordinal: the CUDA backend's error, after the flag.
        let d = flags(&["--device", "cuda:4096"]);
        let e = d.open().unwrap_err().to_string();
        assert!(
            e.starts_with("--device cuda:4096: CUDA is not available"),
            "{e}"
        );
        if let Err(e) = Device::Cuda(0).ensure_available() {
            let got = flags(&["--device", "cuda"]).open().unwrap_err().to_string();
            assert_eq!(got, format!("--device cuda: {e}"));
        }
    }
}
