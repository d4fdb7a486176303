//! Block-quantized experts on a GPU (GGUF Q8_0 / Q2_K…Q6_K): each projection's stacked `[E, rows, cols]`
//! tensor uploaded once as stored and run by candle's fused `indexed_moe_forward` kernels (activations
//! quantized to Q8_1 on the device, every token's k experts in one launch): gate and up on the `[T, 1, H]`
//! input, SwiGLU, down on the `[T, k, I]` rows, then the routing-weighted sum over k. Compiled in CI
//! (`--features cuda`); not yet run on a GPU (no device in the session that wrote it).

use std::borrow::Cow;

use candle_core::quantized::{QStorage, QTensor};
use candle_core::{DType, Device, Tensor};

use super::experts::ExpertsBackend;
use super::router::Routes;
use crate::error::{Error, Result};
use crate::weights::QuantType;

/// The types candle's `indexed_moe_forward` takes.
pub fn supports(ty: QuantType) -> bool {
    matches!(
        ty,
        QuantType::Q8_0
            | QuantType::Q2_K
            | QuantType::Q3_K
            | QuantType::Q4_K
            | QuantType::Q5_K
            | QuantType::Q6_K
    )
}

/// One stacked projection as stored: type, `[E, rows, cols]`, bytes.
pub struct Stacked<'a> {
    pub ty: QuantType,
    pub shape: [usize; 3],
    pub bytes: &'a [u8],
}

pub struct CudaQuantExperts {
    gate: QTensor,
    up: QTensor,
    down: QTensor,
    bytes_per_expert: usize,
}

fn upload(s: &Stacked<'_>, device: &Device) -> Result<QTensor> {
    let storage = QStorage::from_data(Cow::Borrowed(s.bytes), device, s.ty.ggml())?;
    let [e, rows, cols] = s.shape;
    Ok(QTensor::new(storage, (e, rows, cols))?)
}

impl CudaQuantExperts {
    /// `(gate, up, down)` stacked projections: `[E, I, H]`, `[E, I, H]`, `[E, H, I]`.
    pub fn new(projections: [Stacked<'_>; 3], device: &Device) -> Result<Self> {
        if !device.is_cuda() || projections.iter().any(|p| !supports(p.ty)) {
            return Err(Error::Device(
                "quantized GPU experts need a CUDA device and Q8_0 or K-quant weights".into(),
            ));
        }
        let experts = projections[0].shape[0].max(1);
        let bytes_per_expert = projections.iter().map(|p| p.bytes.len() / experts).sum();
        let [g, u, d] = projections;
        Ok(Self {
            gate: upload(&g, device)?,
            up: upload(&u, device)?,
            down: upload(&d, device)?,
            bytes_per_expert,
        })
    }
}

/// A contiguous f32 copy starting at offset 0 (the fused kernels read the storage from its start).
fn dense_f32(t: &Tensor) -> Result<Tensor> {
    let t = t.to_dtype(DType::F32)?.contiguous()?;
    Ok(if t.layout().start_offset() == 0 {
        t
    } else {
        t.copy()?
    })
}

impl ExpertsBackend for CudaQuantExperts {
    fn forward(&self, x: &Tensor, routes: &Routes) -> Result<Tensor> {
        let (t, hidden) = x.dims2()?;
        let (rt, k) = routes.ids.dims2()?;
        if rt != t {
            return Err(Error::Batch(format!("{rt} routed rows for {t} tokens")));
        }
        let ids = routes
            .ids
            .to_device(x.device())?
            .to_dtype(DType::U32)?
            .contiguous()?;
        let ids = if ids.layout().start_offset() == 0 {
            ids
        } else {
            ids.copy()?
        };
        let x3 = dense_f32(x)?.reshape((t, 1, hidden))?;
        let g = self.gate.indexed_moe_forward(&x3, &ids)?; // [T, k, I]
        let u = self.up.indexed_moe_forward(&x3, &ids)?;
        let h = dense_f32(&(candle_nn::ops::silu(&g)? * u)?)?;
        let y = self.down.indexed_moe_forward(&h, &ids)?; // [T, k, H]
        let w = routes
            .weights
            .to_device(x.device())?
            .to_dtype(DType::F32)?
            .reshape((t, k, 1))?;
        Ok(y.broadcast_mul(&w)?.sum(1)?.to_dtype(x.dtype())?)
    }

    fn bytes_per_expert(&self) -> usize {
        self.bytes_per_expert
    }
}
