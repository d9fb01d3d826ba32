//! The crate's error type. Every failure of the CUDA stack (a library that cannot be found, a
//! device that does not exist, a driver call, a kernel that does not compile, a bad argument, an
//! index a kernel found out of range) becomes an `Error` naming what failed; nothing in this crate
//! panics on user input or on a missing CUDA installation.

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// CUDA cannot be used here: a library is missing, the driver is too old, or there is no GPU.
    #[error("CUDA is not available: {0}")]
    Unavailable(String),
    /// A CUDA driver call failed.
    #[error("CUDA driver call {call} failed: {message}")]
    Driver { call: &'static str, message: String },
    /// NVRTC (or, for the simulator, the host C++ compiler) rejected a kernel file; `log` is the
    /// compiler's output.
    #[error("could not compile {file} for {arch}:\n{log}")]
    Compile {
        file: &'static str,
        arch: String,
        log: String,
    },
    /// A cuBLAS or cuBLASLt call failed.
    #[error("{call} failed: {status}")]
    Blas { call: &'static str, status: String },
    /// An argument the op cannot take (shape, stride, length, dtype); the message names the op.
    #[error("{op}: {message}")]
    Arg { op: &'static str, message: String },
    /// A kernel found bad input on the device (reported by `Gpu::check_status`).
    #[error("{0}")]
    Kernel(String),
    /// An NCCL call failed; `who` names the rank(s) and device(s), e.g. "rank 1 of 2 on cuda:1".
    #[error("{call} failed ({who}): {message}")]
    Nccl {
        call: &'static str,
        who: String,
        message: String,
    },
}

impl Error {
    /// An [`Error::Arg`] for `op`.
    pub fn arg(op: &'static str, message: impl Into<String>) -> Self {
        Error::Arg {
            op,
            message: message.into(),
        }
    }

    /// An [`Error::Driver`] from a cudarc driver error.
    pub(crate) fn driver(call: &'static str, e: cudarc::driver::DriverError) -> Self {
        let message = match (e.error_name(), e.error_string()) {
            (Ok(name), Ok(text)) => {
                format!("{} ({})", name.to_string_lossy(), text.to_string_lossy())
            }
            _ => format!("{:?}", e.0),
        };
        Error::Driver { call, message }
    }

    /// An [`Error::Blas`] from a cuBLAS / cuBLASLt status.
    pub(crate) fn blas(call: &'static str, status: impl std::fmt::Debug) -> Self {
        Error::Blas {
            call,
            status: format!("{status:?}"),
        }
    }
}

/// Returns early with an [`Error::Arg`] naming the op.
macro_rules! bail {
    ($op:expr, $($arg:tt)*) => {
        return Err($crate::Error::arg($op, format!($($arg)*)))
    };
}
pub(crate) use bail;
