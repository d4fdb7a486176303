//! GGUF files (llama.cpp's format): metadata and dequantized tensors through candle's reader, in the
//! layout HF checkpoints use (rows = output features; q/k rows un-permuted from llama.cpp's rope order).

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| Error::BadShard {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader,
        })
    }

    fn err(&self, message: String) -> Error {
        Error::Config {
            path: self.path.clone(),
            message,
        }
    }

    pub fn value(&self, key: &str) -> Result<&Value> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| self.err(format!("missing metadata {key}")))
    }

    pub fn u32(&self, key: &str) -> Result<u32> {
        self.value(key)?
            .to_u32()
            .map_err(|e| self.err(format!("{key}: {e}")))
    }

    pub fn f32(&self, key: &str) -> Result<f32> {
        self.value(key)?
            .to_f32()
            .map_err(|e| self.err(format!("{key}: {e}")))
    }

    pub fn string(&self, key: &str) -> Result<String> {
        self.value(key)?
            .to_string()
            .cloned()
            .map_err(|e| self.err(format!("{key}: {e}")))
    }

    pub fn strings(&self, key: &str) -> Result<Vec<String>> {
        self.value(key)?
            .to_vec()
            .map_err(|e| self.err(format!("{key}: {e}")))?
            .iter()
            .map(|v| {
                v.to_string()
                    .cloned()
                    .map_err(|e| self.err(format!("{key}: {e}")))
            })
            .collect()
    }

    pub fn i32s(&self, key: &str) -> Result<Vec<i32>> {
        self.value(key)?
            .to_vec()
            .map_err(|e| self.err(format!("{key}: {e}")))?
            .iter()
            .map(|v| v.to_i32().map_err(|e| self.err(format!("{key}: {e}"))))
            .collect()
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// A tensor dequantized to f32, `[rows, cols]` as HF stores it.
    pub fn tensor(&mut self, name: &str) -> Result<Tensor> {
        let q = self
            .content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .map_err(|e| Error::MissingTensor {
                path: self.path.clone(),
                tensor: format!("{name} ({e})"),
            })?;
        Ok(q.dequantize(&Device::Cpu)?)
    }

    /// q or k projection back in HF's (rotate-half) row order; llama.cpp interleaves each head's rows.
    pub fn attention_tensor(&mut self, name: &str, heads: usize) -> Result<Tensor> {
        let w = self.tensor(name)?;
        let (rows, cols) = w.dims2()?;
        let half = rows / heads / 2;
        Ok(w.reshape((heads, half, 2, cols))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((rows, cols))?)
    }
}
