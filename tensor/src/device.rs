//! Where a tensor lives. Only the CPU exists in this crate's base build; the `cuda` feature adds
//! `Device::Cuda(ordinal)` (shown as `cuda:0`) without changing any caller.

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
