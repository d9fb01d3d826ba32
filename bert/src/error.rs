//! Errors of loading, saving and configuring a BERT. Each names the file (and the field or tensor)
//! at fault; errors of the tensor ops themselves pass through as `tensor::Error`.

use crate::tokenizer::TokenizerError;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BertError {
    /// A config.json that does not parse, or a field with a wrong type or an unsupported value.
    #[error("{}: field {field:?}: {msg}", path.display())]
    Config {
        path: PathBuf,
        field: String,
        msg: String,
    },
    /// A checkpoint that cannot be used (shape mismatch, unsupported dtype, ...).
    #[error("{}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tensor(#[from] tensor::Error),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

impl BertError {
    pub(crate) fn config(path: &Path, field: &str, msg: impl Into<String>) -> Self {
        BertError::Config {
            path: path.to_path_buf(),
            field: field.to_string(),
            msg: msg.into(),
        }
    }

    pub(crate) fn checkpoint(path: &Path, msg: impl Into<String>) -> Self {
        BertError::Checkpoint {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        BertError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T, E = BertError> = std::result::Result<T, E>;
