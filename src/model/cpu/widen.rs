//! `x · Wᵀ` for many rows of f32 activations against bf16 / f16 weights (prompt processing, big decode
//! batches): the weight is widened to f32 a panel of rows at a time, in parallel, and each panel goes
//! through candle's packed GEMM. A panel is at most [`PANEL_BYTES`] of f32, so no weight (an lm head of
//! 150k rows, say) is ever held whole in f32: the checkpoint stays in its stored precision, and widening
//! costs one pass over the panel against `2·m` flops per element of GEMM work (~1% at 2,048 rows).

use candle_core::{DType, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

use super::elem::Widen;
use super::host::{with_hosts, HostSlices};
use crate::error::{Error, Result};

/// f32 bytes of one widened panel.
const PANEL_BYTES: usize = 16 << 20;

/// Weight rows widened per parallel task.
const ROWS_PER_TASK: usize = 16;

/// `x · Wᵀ` for f32 `x` `[m, k]` and a bf16 / f16 (or f32) CPU weight `w` `[n, k]`.
pub fn matmul_wt_widened(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        // Not a case the CPU kernels serve: candle in the activations' dtype.
        return Ok(x.matmul(&w.to_dtype(x.dtype())?.t()?)?);
    }
    let (n, k) = w.dims2()?;
    let w = w.contiguous()?;
    let rows_per_panel = (PANEL_BYTES / 4 / k.max(1)).clamp(1, n.max(1));
    let mut ys = Vec::with_capacity(n.div_ceil(rows_per_panel));
    for first in (0..n).step_by(rows_per_panel) {
        let rows = rows_per_panel.min(n - first);
        let panel = widen_rows(&w.narrow(0, first, rows)?, rows, k)?;
        ys.push(x.matmul(&panel.t()?)?);
    }
    if ys.len() == 1 {
        return ys.pop().ok_or_else(|| Error::Batch("empty weight".into()));
    }
    Ok(Tensor::cat(&ys, 1)?)
}

/// A contiguous `[rows, k]` weight view widened to an f32 tensor, rows split over the pool.
fn widen_rows(w: &Tensor, rows: usize, k: usize) -> Result<Tensor> {
    let mut out = vec![0f32; rows * k];
    with_hosts(&[w], |views| {
        match views {
            HostSlices::F32(v) => widen_into(v[0], &mut out, k),
            HostSlices::Bf16(v) => widen_into::<bf16>(v[0], &mut out, k),
            HostSlices::F16(v) => widen_into::<f16>(v[0], &mut out, k),
        }
        Ok(())
    })?;
    Ok(Tensor::from_vec(out, (rows, k), w.device())?)
}

fn widen_into<W: Widen>(src: &[W], out: &mut [f32], k: usize) {
    out.par_chunks_mut(ROWS_PER_TASK * k.max(1))
        .zip(src.par_chunks(ROWS_PER_TASK * k.max(1)))
        .for_each(|(o, s)| {
            for (d, &v) in o.iter_mut().zip(s) {
                *d = v.widen();
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Against the weight widened by candle and candle's f32 matmul, for row counts on both sides of the
    /// streaming kernel's limit and panels that do not divide the weight.
    #[test]
    fn equals_widen_then_matmul() -> Result<()> {
        let dev = Device::Cpu;
        for dtype in [DType::BF16, DType::F16] {
            for (m, n, k) in [
                (33, 70, 24),
                (100, 9, 40),
                (300, 5, 8),
                (1, 3, 5),
                (4, 37, 133),
            ] {
                let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
                let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?.to_dtype(dtype)?;
                let reference = x.matmul(&w.to_dtype(DType::F32)?.t()?)?;
                let got = matmul_wt_widened(&x, &w)?;
                let diff = (got - reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff < 1e-4, "{dtype:?} m={m} n={n} k={k}: {diff}");
                // Through the public entry point too (which streams up to 32 rows, and bf16 at any
                // row count on AVX512-BF16 CPUs, activations split in two bf16 terms: `high`).
                // The split leaves each activation within 2⁻¹⁷ of itself: a product's error is bounded
                // by that share of Σ|x·w| (random data: up to ~1e-4 at k = 133, so no fixed bound).
                let via = crate::model::cpu::matmul::matmul_wt(&x, &w)?;
                let diff = (via - x.matmul(&w.to_dtype(DType::F32)?.t()?)?)?
                    .abs()?
                    .max_all()?
                    .to_scalar::<f32>()?;
                let magnitude = x
                    .abs()?
                    .matmul(&w.to_dtype(DType::F32)?.abs()?.t()?)?
                    .max_all()?
                    .to_scalar::<f32>()?;
                let bound = magnitude * 2f32.powi(-16) + 1e-5;
                assert!(diff < bound, "matmul_wt {dtype:?} m={m}: {diff} > {bound}");
            }
        }
        Ok(())
    }

    #[test]
    fn panels_split_a_large_weight() -> Result<()> {
        let dev = Device::Cpu;
        // 4 M rows × 2 columns of f32 would be 32 MiB: two panels.
        let (n, k, m) = (4 << 20, 2, 40);
        let w = Tensor::ones((n, k), DType::BF16, &dev)?;
        let x = Tensor::ones((m, k), DType::F32, &dev)?;
        let y = matmul_wt_widened(&x, &w)?;
        assert_eq!(y.dims(), &[m, n]);
        assert_eq!(y.sum_all()?.to_scalar::<f32>()?, (m * n * k) as f32);
        Ok(())
    }
}
