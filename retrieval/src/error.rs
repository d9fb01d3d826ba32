//! Errors of the retrieval stages; each names the file (and line) at fault where there is one.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A line that cannot be used; `line` is 1-based.
    #[error("{}:{line}: {msg}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    /// A file whose content cannot be used as a whole (wrong tensor name, counts disagree, ...).
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// An invalid argument or configuration value.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Tensor(#[from] tensor::Error),
    #[error(transparent)]
    Bert(#[from] bert::BertError),
    #[error(transparent)]
    Tokenizer(#[from] bert::TokenizerError),
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn line(path: &Path, line: usize, msg: impl Into<String>) -> Self {
        Error::Line {
            path: path.to_path_buf(),
            line,
            msg: msg.into(),
        }
    }

    pub fn format(path: &Path, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
