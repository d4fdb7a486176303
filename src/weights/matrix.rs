//! A weight matrix as the model holds it: a dense tensor (f32 / bf16 / f16, or anything on a GPU), a
//! block-quantized one read in place by the CPU kernels, a block-FP8 one as stored (CPU, the FP8 kernel),
//! or (feature `cuda`) a block-quantized one on the GPU run by candle's quantized matmul.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::quant::QuantMatrix;
use crate::error::Result;

/// A block-FP8 matrix as stored: e4m3 bytes `[rows, cols]` and one f32 scale per `block` (row-major
/// `[⌈rows/block.0⌉, ⌈cols/block.1⌉]`, the checkpoint's `weight_scale_inv`).
#[derive(Debug)]
pub struct Fp8Blocks {
    pub bytes: Vec<u8>,
    pub scales: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
    pub block: (usize, usize),
}

impl Fp8Blocks {
    /// Bytes held: one per weight, four per scale.
    pub fn byte_len(&self) -> usize {
        self.bytes.len() + 4 * self.scales.len()
    }

    /// `w · scale` in f32, as the reference `weight_dequant` computes it.
    pub fn to_f32(&self, device: &Device) -> Result<Tensor> {
        let w =
            Tensor::from_raw_buffer(&self.bytes, DType::F8E4M3, &[self.rows, self.cols], device)?
                .to_dtype(DType::F32)?;
        let (sr, sc) = (
            self.rows.div_ceil(self.block.0.max(1)),
            self.cols.div_ceil(self.block.1.max(1)),
        );
        let scale = Tensor::from_slice(&self.scales, (sr, sc), device)?;
        Ok((w * expand_block_scales(&scale, self.rows, self.cols)?)?)
    }
}

/// Block scales `[sr, sc]` spread over a `[rows, cols]` matrix: each scale over its
/// `⌈rows/sr⌉ × ⌈cols/sc⌉` block, cropped to the matrix.
pub(crate) fn expand_block_scales(scale: &Tensor, rows: usize, cols: usize) -> Result<Tensor> {
    let (sr, sc) = scale.dims2()?;
    let (br, bc) = (rows.div_ceil(sr.max(1)), cols.div_ceil(sc.max(1)));
    Ok(scale
        .unsqueeze(1)?
        .unsqueeze(3)?
        .broadcast_as((sr, br, sc, bc))?
        .reshape((sr * br, sc * bc))?
        .narrow(0, 0, rows)?
        .narrow(1, 0, cols)?)
}

/// `[rows, cols]` = `[out, in]`, as checkpoints store projections.
#[derive(Debug, Clone)]
pub enum Matrix {
    Dense(Tensor),
    Quant(Arc<QuantMatrix>),
    /// A block-FP8 projection held as stored on the CPU (e4m3 bytes + block scales; the FP8 kernel).
    Fp8(Arc<Fp8Blocks>),
    /// A GGUF block-quantized projection uploaded as stored: candle's `QMatMul` (MMVQ / MMQ kernels).
    #[cfg(feature = "cuda")]
    Gpu(Arc<GpuQuant>),
}

/// A quantized matrix on the GPU with its shape and size.
#[cfg(feature = "cuda")]
#[derive(Debug)]
pub struct GpuQuant {
    pub matmul: candle_core::quantized::QMatMul,
    pub rows: usize,
    pub cols: usize,
    pub bytes: usize,
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
            Matrix::Fp8(b) => (b.rows, b.cols),
            #[cfg(feature = "cuda")]
            Matrix::Gpu(g) => (g.rows, g.cols),
        })
    }

    /// Bytes held.
    pub fn byte_len(&self) -> usize {
        match self {
            Matrix::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Matrix::Quant(q) => q.byte_len(),
            Matrix::Fp8(b) => b.byte_len(),
            #[cfg(feature = "cuda")]
            Matrix::Gpu(g) => g.bytes,
        }
    }

    pub fn as_dense(&self) -> Option<&Tensor> {
        match self {
            Matrix::Dense(t) => Some(t),
            _ => None,
        }
    }

    /// The matrix as a dense f32 tensor (dequantized when quantized).
    pub fn to_f32(&self, device: &Device) -> Result<Tensor> {
        Ok(match self {
            Matrix::Dense(t) => t.to_dtype(candle_core::DType::F32)?,
            Matrix::Quant(q) => Tensor::from_vec(q.dequantize(), (q.rows(), q.cols()), device)?,
            Matrix::Fp8(b) => b.to_f32(device)?,
            #[cfg(feature = "cuda")]
            Matrix::Gpu(g) => match &g.matmul {
                candle_core::quantized::QMatMul::QTensor(t) => t.dequantize(device)?,
                candle_core::quantized::QMatMul::Tensor(t)
                | candle_core::quantized::QMatMul::TensorF16(t) => {
                    t.to_dtype(candle_core::DType::F32)?
                }
            },
        })
    }

    /// Rows `ids` in f32 (an embedding lookup): `[ids.len(), cols]`.
    pub fn rows_f32(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        match self {
            Matrix::Dense(t) => {
                let idx = Tensor::from_slice(ids, ids.len(), t.device())?;
                Ok(t.index_select(&idx, 0)?.to_dtype(candle_core::DType::F32)?)
            }
            // Embeddings are never block-FP8 in the checkpoints that ship it; dequantized whole if one is.
            #[cfg(feature = "cuda")]
            Matrix::Gpu(_) => {
                let idx = Tensor::from_slice(ids, ids.len(), device)?;
                Ok(self.to_f32(device)?.index_select(&idx, 0)?)
            }
            Matrix::Fp8(_) => {
                let idx = Tensor::from_slice(ids, ids.len(), device)?;
                Ok(self.to_f32(device)?.index_select(&idx, 0)?)
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
