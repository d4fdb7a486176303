//! `x · Wᵀ` with W block-quantized (Q4_0 … Q8_0, Q2_K … Q6_K) read in place: each activation row is
//! quantized once to the weight type's dot-product partner (Q8_0, Q8_1 or Q8_K, as llama.cpp does), then
//! every (weight row, activation row) pair is one block dot product (candle's ports of ggml's AVX2
//! kernels). Work is split over weight rows on the compute pool; all products of a call (q/k/v, gate/up,
//! every active expert) share one fork-join, and each weight row is read once for all activation rows.

use candle_core::quantized::GgmlType;
use candle_core::Tensor;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::model::cpu::host::with_f32;
use crate::model::cpu::{kquants, q4k_x8, q8_0};
use crate::weights::quant::blocks;
use crate::weights::{QuantMatrix, QuantType};

/// `x · Wᵀ` for each of `ws` (same input): `x` `[T, in]` f32 on the CPU → `[T, out]` per weight.
pub fn matmul_wt_quant(x: &Tensor, ws: &[&QuantMatrix]) -> Result<Vec<Tensor>> {
    let (m, k) = x.dims2()?;
    if let Some(w) = ws.iter().find(|w| w.cols() != k) {
        return Err(Error::Batch(format!(
            "quantized matmul: input has {k} columns, weight {w:?}"
        )));
    }
    let x = x.to_dtype(candle_core::DType::F32)?.contiguous()?;
    let outs = with_f32(&x, |xs| {
        let products: Vec<QuantProduct<'_>> =
            ws.iter().map(|w| QuantProduct { x: xs, m, w }).collect();
        Ok(quant_products(&products))
    })?;
    outs.into_iter()
        .zip(ws)
        .map(|(o, w)| Ok(Tensor::from_vec(o, (m, w.rows()), x.device())?))
        .collect()
}

/// One product `x · Wᵀ`: `x` is `[m, w.cols()]`, the result `[m, w.rows()]`.
pub struct QuantProduct<'a> {
    pub x: &'a [f32],
    pub m: usize,
    pub w: &'a QuantMatrix,
}

/// Weight rows per work item: enough items for every thread to stay busy, few enough to amortise.
fn chunk_rows(total_rows: usize, row_bytes: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let by_work = total_rows.div_ceil(threads * 8);
    // At least ~16 KiB of weights per item.
    let by_bytes = (16 << 10) / row_bytes.max(1);
    by_work.max(by_bytes).clamp(1, 256)
}

/// Activation rows quantized to `D`, in 8-byte aligned storage.
fn quantize_rows<D: GgmlType>(x: &[f32], m: usize, k: usize) -> Vec<u64> {
    let per_row = k / D::BLCK_SIZE;
    let bytes = m * per_row * std::mem::size_of::<D>();
    let mut words = vec![0u64; bytes.div_ceil(8)];
    // SAFETY: `words` holds `bytes` bytes, 8-byte aligned (≥ any block's alignment); the block types are
    // plain integer/f16/f32 data, valid for the zero pattern `vec!` wrote.
    let ys = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<D>(), m * per_row) };
    for (row, out) in x.chunks(k.max(1)).zip(ys.chunks_mut(per_row.max(1))) {
        D::from_float(row, out);
    }
    words
}

fn words_as<D: GgmlType>(words: &[u64], n: usize) -> &[D] {
    let bytes = &words_bytes(words)[..n * std::mem::size_of::<D>()];
    blocks::<D>(bytes)
}

fn words_bytes(words: &[u64]) -> &[u8] {
    // SAFETY: any u64 slice is a valid byte slice of 8× the length.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), words.len() * 8) }
}

/// Whether candle's dot product serves `k` columns of `ty` (its Q4_1 / Q5_0 / Q5_1 kernels take pairs of
/// blocks); otherwise rows are dequantized and dotted in f32.
fn block_dot_applies(ty: QuantType, k: usize) -> bool {
    let blocks = k / ty.block_elems();
    !matches!(ty, QuantType::Q4_1 | QuantType::Q5_0 | QuantType::Q5_1) || blocks.is_multiple_of(2)
}

/// The rows `rows` of one product into `out` (`[rows.len(), m]`, weight-row major).
fn run_rows<B: GgmlType>(
    p: &QuantProduct<'_>,
    xq: &[u64],
    rows: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let k = p.w.cols();
    let (wpr, xpr) = (k / B::BLCK_SIZE, k / B::VecDotType::BLCK_SIZE);
    let rb = p.w.row_bytes();
    let w: &[B] = blocks(&p.w.data()[rows.start * rb..rows.end * rb]);
    let xs: &[B::VecDotType] = words_as(xq, p.m * xpr);
    for (wrow, dst) in w.chunks(wpr.max(1)).zip(out.chunks_mut(p.m.max(1))) {
        for (o, xrow) in dst.iter_mut().zip(xs.chunks(xpr.max(1))) {
            *o = B::vec_dot(k, wrow, xrow);
        }
    }
}

/// The slow path for layouts the block dot does not take: dequantize each weight row, dot in f32.
fn run_rows_f32(p: &QuantProduct<'_>, rows: std::ops::Range<usize>, out: &mut [f32]) {
    let k = p.w.cols();
    let mut wrow = vec![0f32; k];
    for (r, dst) in rows.zip(out.chunks_mut(p.m.max(1))) {
        p.w.dequantize_rows(r, &mut wrow);
        for (o, xrow) in dst.iter_mut().zip(p.x.chunks(k.max(1))) {
            *o = wrow.iter().zip(xrow).map(|(a, b)| a * b).sum();
        }
    }
}

/// A product's activations, quantized for its weight type's kernel.
enum Activations {
    /// Our Q8_0 kernel (`model::cpu::q8_0`).
    Q8(q8_0::Q8Rows),
    /// Our Q4_K / Q6_K kernels (`model::cpu::kquants`, `model::cpu::q4k_x8` with its per-32 sums).
    K(kquants::Q8KRows, Vec<i16>),
    /// candle's block dot product, activations in its `VecDotType` blocks.
    Blocks(Vec<u64>),
    /// Dequantize-and-dot (layouts the block dot does not take).
    F32,
}

/// Which quantized form a product's activations take.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    Q8,
    K,
    Blocks(QuantType),
    F32,
}

/// Every product's `[m, n]` result.
pub fn quant_products(products: &[QuantProduct<'_>]) -> Vec<Vec<f32>> {
    let kernel = q8_0::kernel();
    // 1. Activations quantized once per input and form: products on the same input (q/k/v, an expert's
    //    gate and up) share them.
    let mut acts: Vec<Activations> = Vec::new();
    let mut keys: Vec<(usize, usize, usize, Form)> = Vec::new();
    let act_of: Vec<usize> = products
        .iter()
        .map(|p| {
            let k = p.w.cols();
            let form = if p.w.ty() == QuantType::Q8_0 {
                Form::Q8
            } else if kquants::serves(p.w.ty(), kernel) {
                Form::K
            } else if block_dot_applies(p.w.ty(), k) {
                Form::Blocks(p.w.ty())
            } else {
                Form::F32
            };
            let key = (p.x.as_ptr() as usize, p.x.len(), p.m, form);
            if let Some(at) = keys.iter().position(|k| *k == key) {
                return at;
            }
            keys.push(key);
            acts.push(match form {
                Form::Q8 => Activations::Q8(q8_0::Q8Rows::quantize(p.x, p.m, k)),
                Form::K => {
                    let x = kquants::Q8KRows::quantize(p.x, p.m, k);
                    let sums = q4k_x8::sums32(&x);
                    Activations::K(x, sums)
                }
                Form::Blocks(ty) => Activations::Blocks(crate::with_block_type!(ty, B => quantize_rows::<<B as GgmlType>::VecDotType>(p.x, p.m, k))),
                Form::F32 => Activations::F32,
            });
            acts.len() - 1
        })
        .collect();
    // 2. Work items of whole weight rows; each computes its rows weight-row major (`[rows, m]`, what
    //    the kernels write) into a buffer of its own, then writes them into the product's `[m, n]`
    //    result in place (a transpose of the whole result afterwards cost as much as a tenth of a prompt).
    let mut outs: Vec<Vec<f32>> = products
        .iter()
        .map(|p| vec![0f32; p.w.rows() * p.m])
        .collect();
    let targets: Vec<SharedOut> = outs
        .iter_mut()
        .map(|o| SharedOut {
            ptr: o.as_mut_ptr(),
            len: o.len(),
        })
        .collect();
    let total_rows: usize = products.iter().map(|p| p.w.rows()).sum();
    let mut items: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
    for (i, p) in products.iter().enumerate() {
        // Whole groups of eight rows (the interleaved layouts' steps are four and eight).
        let chunk = chunk_rows(total_rows, p.w.row_bytes() * p.m.max(1)).next_multiple_of(8);
        for start in (0..p.w.rows()).step_by(chunk.max(1)) {
            items.push((i, start..(start + chunk).min(p.w.rows())));
        }
    }
    items.into_par_iter().for_each(|(i, rows)| {
        let p = &products[i];
        let mut dst = vec![0f32; rows.len() * p.m];
        match &acts[act_of[i]] {
            Activations::Q8(x) => {
                let rb = p.w.stored_row_bytes();
                let w = &p.w.data()[rows.start * rb..rows.end * rb];
                if p.w.interleaved() {
                    q8_0::groups_times(kernel, w, x.blocks_per_row, x, p.m, &mut dst);
                } else {
                    q8_0::rows_times(w, rb, x, p.m, &mut dst);
                }
            }
            Activations::K(x, sums) => {
                let rb = p.w.stored_row_bytes();
                let w = &p.w.data()[rows.start * rb..rows.end * rb];
                if p.w.x8() {
                    q4k_x8::rows_times(kernel, w, x.blocks_per_row, x, sums, p.m, &mut dst);
                } else {
                    let rb = p.w.row_bytes();
                    kquants::rows_times(
                        p.w.ty(),
                        kernel,
                        w,
                        rb,
                        p.w.interleaved(),
                        x,
                        p.m,
                        &mut dst,
                    );
                }
            }
            Activations::Blocks(xq) => {
                crate::with_block_type!(p.w.ty(), B => run_rows::<B>(p, xq, rows.clone(), &mut dst))
            }
            Activations::F32 => run_rows_f32(p, rows.clone(), &mut dst),
        }
        targets[i].put_rows(&dst, rows.start, p.w.rows(), p.m);
    });
    outs
}

/// A product's `[m, n]` result, written by the work items in parallel: each item owns the columns
/// (weight rows) of its range in every row, so no element is written twice and none is read.
struct SharedOut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: see `put_rows` — items write disjoint elements; the buffer outlives the parallel section.
unsafe impl Sync for SharedOut {}
unsafe impl Send for SharedOut {}

impl SharedOut {
    /// Writes `src` (`[rows, m]`, weight rows `first..first + rows`) into the `[m, n]` result.
    fn put_rows(&self, src: &[f32], first: usize, n: usize, m: usize) {
        let rows = src.len() / m.max(1);
        assert!(
            first + rows <= n && m * n <= self.len,
            "work item inside its product"
        );
        for i in 0..m {
            for r in 0..rows {
                // SAFETY: `i · n + first + r < m · n ≤ len` (asserted); only this item writes columns
                // `first..first + rows` (the items' row ranges are disjoint), and nothing reads the
                // buffer until every item is done.
                unsafe { *self.ptr.add(i * n + first + r) = src[r * m + i] };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Against dequantize-then-f32 on the same quantized weights: the only difference allowed is the
    /// activation's own quantization (8-bit, ~0.4% of each block's max), so the bound scales with
    /// `‖x‖·‖w‖`.
    #[test]
    fn products_match_dequantized_reference_for_every_type_and_row_count() {
        for ty in QuantType::ALL {
            let k = if ty.block_elems() == 256 {
                512
            } else {
                96 + 32
            };
            let k = if block_dot_applies(ty, k) {
                k
            } else {
                k + ty.block_elems()
            };
            for (n, m) in [(7, 1), (33, 3), (5, 64), (300, 2), (64, 5)] {
                let wv = lcg(n as u64 * 31 + k as u64, n * k);
                let plain = QuantMatrix::quantize(ty, n, k, &wv).expect("quantize");
                let x = lcg(m as u64 + 7, m * k);
                let got = quant_products(&[QuantProduct {
                    x: &x,
                    m,
                    w: &plain,
                }])
                .remove(0);
                let w = plain.into_kernel_layout();
                let fast = quant_products(&[QuantProduct { x: &x, m, w: &w }]).remove(0);
                for (a, b) in fast.iter().zip(&got) {
                    assert!(
                        (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                        "{ty:?} kernel layout"
                    );
                }
                let wd = w.dequantize();
                for i in 0..m {
                    for j in 0..n {
                        let xr = &x[i * k..(i + 1) * k];
                        let wr = &wd[j * k..(j + 1) * k];
                        let want: f32 = xr.iter().zip(wr).map(|(a, b)| a * b).sum();
                        let norm = (xr.iter().map(|v| v * v).sum::<f32>()
                            * wr.iter().map(|v| v * v).sum::<f32>())
                        .sqrt();
                        let err = (got[i * n + j] - want).abs();
                        assert!(
                            err <= 0.02 * norm + 1e-4,
                            "{ty:?} n={n} m={m} [{i},{j}]: {err} vs {norm}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn odd_block_counts_take_the_f32_path_and_stay_exact() {
        let (n, k, m) = (4, 96, 2); // 3 blocks of 32
        let w = QuantMatrix::quantize(QuantType::Q5_0, n, k, &lcg(1, n * k)).expect("quantize");
        assert!(!block_dot_applies(QuantType::Q5_0, k));
        let x = lcg(2, m * k);
        let got = quant_products(&[QuantProduct { x: &x, m, w: &w }]).remove(0);
        let wd = w.dequantize();
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|c| x[i * k + c] * wd[j * k + c]).sum();
                assert!((got[i * n + j] - want).abs() < 1e-4);
            }
        }
    }
}
