//! Errors of the CoT-MAE data pipeline; each names the file (and line) at fault where there is one.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file whose content cannot be used (bad header, truncated, wrong version, ...).
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// An invalid argument or configuration value.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Tokenizer(#[from] bert::TokenizerError),
    #[error(transparent)]
    Tensor(#[from] tensor::Error),
    #[error(transparent)]
    Bert(#[from] bert::BertError),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn format(path: &Path, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
