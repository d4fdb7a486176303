//! Borrowing CPU tensors' data for the host kernels: one contiguous f32 tensor (activations, caches),
//! or several weight tensors of one stored dtype (f32, bf16, f16).

use candle_core::{CpuStorage, Layout, Storage, Tensor};
use half::{bf16, f16};

use crate::error::{Error, Result};

/// Borrow a contiguous f32 CPU tensor's data (attention, the streaming matmul's activations).
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout): (_, &Layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => f(&v[a..b]),
        _ => Err(Error::Batch(
            "host kernels need contiguous f32 CPU tensors".into(),
        )),
    }
}

/// Several CPU tensors' data of one dtype, borrowed.
pub(crate) enum HostSlices<'a> {
    F32(Vec<&'a [f32]>),
    Bf16(Vec<&'a [bf16]>),
    F16(Vec<&'a [f16]>),
}

/// Runs `f` on the data of several contiguous CPU tensors of one dtype (f32, bf16 or f16).
pub(crate) fn with_hosts<R>(
    ts: &[&Tensor],
    f: impl FnOnce(HostSlices<'_>) -> Result<R>,
) -> Result<R> {
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut f32s = Vec::new();
    let mut bf16s = Vec::new();
    let mut f16s = Vec::new();
    for (storage, layout) in &guards {
        match (&**storage, layout.contiguous_offsets()) {
            (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => f32s.push(&v[a..b]),
            (Storage::Cpu(CpuStorage::BF16(v)), Some((a, b))) => bf16s.push(&v[a..b]),
            (Storage::Cpu(CpuStorage::F16(v)), Some((a, b))) => f16s.push(&v[a..b]),
            _ => {
                return Err(Error::Batch(
                    "host kernel needs contiguous f32, bf16 or f16 CPU tensors".into(),
                ))
            }
        }
    }
    match (f32s.is_empty(), bf16s.is_empty(), f16s.is_empty()) {
        (_, true, true) => f(HostSlices::F32(f32s)),
        (true, false, true) => f(HostSlices::Bf16(bf16s)),
        (true, true, false) => f(HostSlices::F16(f16s)),
        _ => Err(Error::Batch(
            "host kernel needs weights of one dtype".into(),
        )),
    }
}
