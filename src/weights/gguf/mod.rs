//! GGUF model files as llama.cpp writes them: the container ([`format`]), its metadata, and its tensors
//! under the names the generic decoder asks for ([`tensors`]); [`GgufModel::tensor_f32`] reads one tensor
//! by its own name, dequantized (the upcycling demo).

pub(crate) mod format;
pub(crate) mod tensors;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

pub use format::{type_name, Value};
pub use tensors::GgufTensors;

use super::source::{FileBytes, ModelSource};
use crate::error::{Error, Result};

/// One file of a (possibly split) GGUF model.
pub struct GgufPart {
    pub file: String,
    pub path: PathBuf,
    pub bytes: Arc<FileBytes>,
    pub header: format::Header,
}

/// A GGUF model: its files, and the metadata of the first.
pub struct GgufModel {
    pub parts: Vec<GgufPart>,
}

impl GgufModel {
    /// Opens and parses the headers of `files` (from [`ModelSource::gguf_files`]).
    pub fn open(source: &ModelSource, files: &[String]) -> Result<Self> {
        let mut parts = Vec::with_capacity(files.len());
        for file in files {
            let path = source.path_of(file);
            let bytes = source
                .open(file)?
                .ok_or_else(|| Error::MissingShard { path: path.clone() })?;
            let header = format::parse(&bytes).map_err(|message| Error::BadShard {
                path: path.clone(),
                message,
            })?;
            parts.push(GgufPart {
                file: file.clone(),
                path,
                bytes: Arc::new(bytes),
                header,
            });
        }
        if parts.is_empty() {
            return Err(Error::MissingShard {
                path: source.path_of("*.gguf"),
            });
        }
        Ok(Self { parts })
    }

    /// The first file's metadata (where llama.cpp writes all of it).
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.parts[0].header.metadata
    }

    pub fn path(&self) -> &std::path::Path {
        &self.parts[0].path
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata().get(key)
    }

    fn err(&self, message: String) -> Error {
        Error::Config {
            path: self.path().to_path_buf(),
            message,
        }
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.get("general.architecture")
            .and_then(Value::as_str)
            .ok_or_else(|| self.err("missing metadata general.architecture".into()))
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// A present key read with `read`; an error naming the key and `what` it should be when `read` fails.
    fn typed<'a, T>(
        &'a self,
        key: &str,
        what: &str,
        read: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => read(v)
                .map(Some)
                .ok_or_else(|| self.err(format!("metadata {key} is not {what}"))),
        }
    }

    pub fn u64(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, "a non-negative integer", Value::as_u64)
    }

    pub fn f64(&self, key: &str) -> Result<Option<f64>> {
        self.typed(key, "a number", Value::as_f64)
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "a boolean", Value::as_bool)
    }

    /// An array of strings (vocabulary, merges).
    pub fn strings(&self, key: &str) -> Result<Option<Vec<&str>>> {
        self.typed(key, "a list of strings", |v| {
            v.as_array()?.iter().map(Value::as_str).collect()
        })
    }

    /// An array of integers (token types).
    pub fn ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        self.typed(key, "a list of integers", |v| {
            v.as_array()?.iter().map(Value::as_i64).collect()
        })
    }

    /// Every tensor: (part index, name, info).
    pub fn tensors(&self) -> impl Iterator<Item = (usize, &str, &format::TensorInfo)> {
        self.parts.iter().enumerate().flat_map(|(i, p)| {
            p.header
                .tensors
                .iter()
                .map(move |(name, info)| (i, name.as_str(), info))
        })
    }

    /// Opens one GGUF file (with the rest of its split set).
    pub fn open_file(path: &std::path::Path) -> Result<Self> {
        let source = ModelSource::File(path.to_path_buf());
        let files = source.gguf_files()?.unwrap_or_default();
        Self::open(&source, &files)
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensors().any(|(_, n, _)| n == name)
    }

    /// A tensor by its GGUF name, dequantized to f32, in its row-major shape.
    pub fn tensor_f32(&self, name: &str) -> Result<candle_core::Tensor> {
        use candle_core::{DType, Device, Tensor};
        let (part, info) = self
            .tensors()
            .find(|(_, n, _)| *n == name)
            .map(|(p, _, i)| (p, i.clone()))
            .ok_or_else(|| Error::MissingTensor {
                path: self.path().to_path_buf(),
                tensor: name.to_owned(),
            })?;
        let p = &self.parts[part];
        let start = p.header.data_start + info.offset as usize;
        let bad = |message: String| Error::BadShard {
            path: p.path.clone(),
            message: format!("tensor {name}: {message}"),
        };
        let len = tensors::data_bytes(&info)
            .ok_or_else(|| bad(format!("type {} is not supported", type_name(info.type_id))))?;
        let bytes = p
            .bytes
            .get(start..start + len)
            .ok_or_else(|| bad("data runs past the end of the file".into()))?;
        let cols = info.shape.last().copied().unwrap_or(1);
        let rows = info.shape.iter().product::<usize>() / cols.max(1);
        let values = match crate::weights::QuantType::from_ggml_id(info.type_id) {
            Some(ty) => crate::weights::QuantMatrix::from_bytes(ty, rows, cols, bytes)
                .map_err(bad)?
                .dequantize(),
            None => {
                let dtype = match info.type_id {
                    0 => DType::F32,
                    1 => DType::F16,
                    _ => DType::BF16,
                };
                return Ok(
                    Tensor::from_raw_buffer(bytes, dtype, &info.shape, &Device::Cpu)?
                        .to_dtype(DType::F32)?,
                );
            }
        };
        Ok(Tensor::from_vec(
            values,
            info.shape.as_slice(),
            &Device::Cpu,
        )?)
    }
}
