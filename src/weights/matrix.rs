//! A weight matrix as the model holds it: a dense tensor (f32 / bf16 / f16, or anything on a GPU) or a
//! block-quantized one read in place by the CPU kernels.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::quant::QuantMatrix;
use crate::error::Result;

/// `[rows, cols]` = `[out, in]`, as checkpoints store projections.
#[derive(Debug, Clone)]
pub enum Matrix {
    Dense(Tensor),
    Quant(Arc<QuantMatrix>),
}

impl From<Tensor> for Matrix {
    fn from(t: Tensor) -> Self {
        Matrix::Dense(t)
    }
}

impl Matrix {
    pub fn dims(&self) -> Result<(usize, usize)> {
        Ok(match self {
            Matrix::Dense(t) => t.dims2()?,
            Matrix::Quant(q) => (q.rows(), q.cols()),
        })
    }

    /// Bytes held.
    pub fn byte_len(&self) -> usize {
        match self {
            Matrix::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Matrix::Quant(q) => q.byte_len(),
        }
    }

    pub fn as_dense(&self) -> Option<&Tensor> {
        match self {
            Matrix::Dense(t) => Some(t),
            Matrix::Quant(_) => None,
        }
    }

    /// The matrix as a dense f32 tensor (dequantized when quantized).
    pub fn to_f32(&self, device: &Device) -> Result<Tensor> {
        Ok(match self {
            Matrix::Dense(t) => t.to_dtype(candle_core::DType::F32)?,
            Matrix::Quant(q) => Tensor::from_vec(q.dequantize(), (q.rows(), q.cols()), device)?,
        })
    }

    /// Rows `ids` in f32 (an embedding lookup): `[ids.len(), cols]`.
    pub fn rows_f32(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        match self {
            Matrix::Dense(t) => {
                let idx = Tensor::from_slice(ids, ids.len(), t.device())?;
                Ok(t.index_select(&idx, 0)?.to_dtype(candle_core::DType::F32)?)
            }
            Matrix::Quant(q) => {
                let cols = q.cols();
                let mut out = vec![0f32; ids.len() * cols];
                for (&id, row) in ids.iter().zip(out.chunks_mut(cols.max(1))) {
                    let id = id as usize;
                    if id >= q.rows() {
                        return Err(crate::Error::Batch(format!(
                            "token id {id} outside the embedding's {} rows",
                            q.rows()
                        )));
                    }
                    q.dequantize_rows(id, row);
                }
                Ok(Tensor::from_vec(out, (ids.len(), cols), device)?)
            }
        }
    }
}
