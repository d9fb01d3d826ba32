//! One error type for every tensor op. Each variant names the op so a user sees where it failed.

use crate::DType;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: shape mismatch: lhs {lhs:?}, rhs {rhs:?}")]
    ShapeMismatch {
        op: &'static str,
        lhs: Vec<usize>,
        rhs: Vec<usize>,
    },
    #[error("{op}: shapes {lhs:?} and {rhs:?} cannot be broadcast together")]
    Broadcast {
        op: &'static str,
        lhs: Vec<usize>,
        rhs: Vec<usize>,
    },
    #[error("{op}: expected dtype {expected}, got {got}")]
    DTypeMismatch {
        op: &'static str,
        expected: DType,
        got: DType,
    },
    #[error("{op}: dtype {dtype} is not supported")]
    UnsupportedDType { op: &'static str, dtype: DType },
    #[error("{op}: dim {dim} out of range for a tensor of rank {rank}")]
    DimOutOfRange {
        op: &'static str,
        dim: isize,
        rank: usize,
    },
    #[error("{op}: index {index} out of range for a dimension of size {size}")]
    IndexOutOfRange {
        op: &'static str,
        index: i64,
        size: usize,
    },
    #[error("{op}: {msg}")]
    Op { op: &'static str, msg: String },
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
    /// A failure of the CUDA backend (feature `cuda`).
    #[cfg(feature = "cuda")]
    #[error(transparent)]
    Cuda(#[from] cuda::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// A free-form error attributed to `op`.
    pub fn op(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Op {
            op,
            msg: msg.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Returns early with `Error::Op` for `op`, formatting the message.
#[macro_export]
macro_rules! bail {
    ($op:expr, $($arg:tt)*) => {
        return Err($crate::Error::op($op, format!($($arg)*)))
    };
}
