//! Where a tensor lives. Only the CPU exists in this crate's base build; the `cuda` feature adds
//! `Device::Cuda(ordinal)` (shown as `cuda:0`) without changing any caller.
//!
//! Devices parse from the names torch uses: `cpu`, `cuda` (the first GPU) and `cuda:N`. A CUDA
//! name parses only in a build with the `cuda` feature; otherwise the error says how to get one.
//! Parsing does not touch the GPU: [`Device::ensure_available`] does.

use crate::{Error, Result};

/// A compute device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// The GPU of this ordinal (feature `cuda`).
    #[cfg(feature = "cuda")]
    Cuda(usize),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            #[cfg(feature = "cuda")]
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// The error of a device name: `Error::Op` for op "device", its message starting with the name.
fn bad_name(name: &str, why: &str) -> Error {
    Error::op("device", format!("{name}: {why}"))
}

impl std::str::FromStr for Device {
    type Err = Error;

    /// `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
    fn from_str(name: &str) -> Result<Device> {
        let ordinal = match name {
            "cpu" => return Ok(Device::Cpu),
            "cuda" => 0,
            _ => match name.strip_prefix("cuda:") {
                Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => n
                    .parse::<usize>()
                    .map_err(|_| bad_name(name, "the GPU ordinal after `cuda:` is out of range"))?,
                Some(_) => {
                    return Err(bad_name(
                        name,
                        "expected a GPU ordinal after `cuda:` (cuda:0, cuda:1, ...)",
                    ))
                }
                None => return Err(bad_name(name, "expected cpu, cuda or cuda:N")),
            },
        };
        #[cfg(feature = "cuda")]
        return Ok(Device::Cuda(ordinal));
        #[cfg(not(feature = "cuda"))]
        {
            let _ = ordinal;
            Err(bad_name(
                name,
                "this build has no CUDA backend; rebuild with `cargo build --release --features \
                 cuda`",
            ))
        }
    }
}

impl Device {
    /// Ok when tensors can be put on this device: always for the CPU; for a GPU, when CUDA is
    /// installed and the GPU exists (the CUDA backend's error says what is missing otherwise).
    pub fn ensure_available(self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            #[cfg(feature = "cuda")]
            Device::Cuda(i) => cuda::gpu(i).map(|_| ()).map_err(Error::from),
        }
    }

    pub fn is_cpu(self) -> bool {
        self == Device::Cpu
    }

    /// Reports bad input that the device's kernels found since the last check (an index or a
    /// target out of range: the GPU paths check them on the device, not by downloading them),
    /// as the error of the op that found it. One device-to-host synchronisation on a GPU; always
    /// Ok on the CPU, whose ops check their inputs before running. The trainers call it on their
    /// logging steps and at the end of a run.
    pub fn check_status(self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            #[cfg(feature = "cuda")]
            Device::Cuda(i) => cuda::gpu(i)?.check_status().map_err(Error::from),
        }
    }

    /// Counts one f32 -> half cast of a parameter on this GPU's counters (autocast calls it;
    /// nothing on the CPU).
    pub fn note_weight_cast(self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            #[cfg(feature = "cuda")]
            Device::Cuda(i) => {
                cuda::gpu(i)?.note_weight_cast();
                Ok(())
            }
        }
    }

    /// The GPU's counters (device-to-host syncs, launches, GEMMs, cuBLASLt heuristic queries,
    /// weight casts, bytes moved; `cuda::Counters`) since the last reset; None on the CPU.
    #[cfg(feature = "cuda")]
    pub fn counters(self) -> Result<Option<cuda::Counters>> {
        match self {
            Device::Cpu => Ok(None),
            Device::Cuda(i) => Ok(Some(cuda::gpu(i)?.counters())),
        }
    }

    /// Sets the GPU's counters to zero (nothing on the CPU).
    #[cfg(feature = "cuda")]
    pub fn reset_counters(self) -> Result<()> {
        if let Device::Cuda(i) = self {
            cuda::gpu(i)?.reset_counters();
        }
        Ok(())
    }

    /// What this device is, for logs: "cpu", or the GPU's name and compute capability, with
    /// "simulated" for a device of the CUDA simulator (`COTMAE_CUDA_SIM=1`). Opens the GPU.
    pub fn describe(self) -> Result<String> {
        match self {
            Device::Cpu => Ok("cpu".into()),
            #[cfg(feature = "cuda")]
            Device::Cuda(i) => {
                let gpu = cuda::gpu(i)?;
                let (major, minor) = gpu.compute_capability();
                let kind = if gpu.is_simulated() {
                    ", simulated: no GPU is used"
                } else {
                    ""
                };
                Ok(format!(
                    "cuda:{i} ({}, compute capability {major}.{minor}{kind})",
                    gpu.info().name
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(name: &str) -> String {
        name.parse::<Device>().unwrap_err().to_string()
    }

    #[test]
    fn describes_the_cpu_and_says_when_a_gpu_is_simulated() {
        assert_eq!(Device::Cpu.describe().unwrap(), "cpu");
        #[cfg(feature = "cuda")]
        if let Ok(gpu) = cuda::gpu(0) {
            let d = Device::Cuda(0).describe().unwrap();
            assert!(
                d.starts_with("cuda:0 (") && d.contains(&gpu.info().name),
                "{d}"
            );
            assert_eq!(d.contains("simulated"), gpu.is_simulated(), "{d}");
        }
    }

    #[test]
    fn parses_torch_names() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert!(Device::Cpu.ensure_available().is_ok() && Device::Cpu.is_cpu());
        for bad in ["gpu", "CPU", "", "cuda0", "cpu:0"] {
            assert_eq!(
                message(bad),
                format!("device: {bad}: expected cpu, cuda or cuda:N")
            );
        }
        for bad in ["cuda:", "cuda:x", "cuda:-1", "cuda: 1"] {
            assert!(message(bad).contains("expected a GPU ordinal"), "{bad}");
        }
        assert!(message("cuda:99999999999999999999999").contains("out of range"));
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_names_parse_with_the_feature() {
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("cuda:0".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
        assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
        // An ordinal no machine has: the CUDA backend's own error, never a panic.
        let e = Device::Cuda(4096)
            .ensure_available()
            .unwrap_err()
            .to_string();
        assert!(e.contains("CUDA"), "{e}");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_names_need_the_feature() {
        for name in ["cuda", "cuda:1"] {
            assert_eq!(
                message(name),
                format!(
                    "device: {name}: this build has no CUDA backend; rebuild with `cargo build \
                     --release --features cuda`"
                )
            );
        }
    }
}
