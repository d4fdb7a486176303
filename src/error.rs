//! Typed errors of the library. Messages name the file and tensor at fault and never carry request content.

use std::path::PathBuf;

/// Everything that can go wrong while loading a checkpoint or running the model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {message}")]
    Json { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("unknown architecture {name:?} in {path} (supported: {supported})")]
    UnknownArchitecture {
        path: PathBuf,
        name: String,
        supported: String,
    },
    #[error("{path}: not a valid safetensors file (truncated or corrupt): {message}")]
    BadShard { path: PathBuf, message: String },
    #[error("{path}: shard listed in the index is missing")]
    MissingShard { path: PathBuf },
    #[error("tensor {tensor} is missing from the checkpoint ({path})")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: tensor {tensor} has shape {found:?}, expected {expected:?}")]
    WrongShape {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: tensor {tensor} has unsupported dtype {dtype}")]
    UnsupportedDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    #[error("{path}: unexpected tensors not used by the model: {names}")]
    UnexpectedTensors { path: PathBuf, names: String },
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("KV cache: {0}")]
    Kv(String),
    #[error("invalid batch: {0}")]
    Batch(String),
    #[error("device: {0}")]
    Device(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
