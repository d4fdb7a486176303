//! `x · Wᵀ` for block-FP8 weights (e4m3 with one f32 scale per `br × bc` block — DeepSeek-V3, Kimi K2:
//! 128 × 128 `weight_scale_inv`) read as stored, one byte per weight, never dequantized into memory.
//!
//! Within one block of weight rows every column block has one scale, so `Σ_j x_j · s(j) · w_j` is a plain
//! dot product of a *scaled copy of x* with the raw FP8 row: for each row block the input rows are scaled
//! once per column block (m × k multiplications per `br` weight rows, < 1% of the dot work at br = 128),
//! then the streaming kernel runs over the FP8 bytes widened in registers ([`E4m3`]: the byte's bits in an
//! f16, one conversion instruction per 8 weights, the ×256 of the bias folded into the scale). Every row
//! block of every weight is a task of one parallel pass.
//!
//! Used by every block-FP8 matrix of such checkpoints on the CPU: the routed experts
//! (`moe::fp8_experts`) and the dense projections (`layers::Linear`, [`matmul_wt_fp8`]).

use candle_core::Tensor;

use super::elem::E4m3;
use super::host::with_f32;
use super::matmul::{run_products, Product};
use crate::error::{Error, Result};
use crate::weights::Fp8Blocks;

impl<'a> From<&'a Fp8Blocks> for Fp8Weight<'a> {
    fn from(b: &'a Fp8Blocks) -> Self {
        Fp8Weight {
            w: e4m3(&b.bytes),
            scales: &b.scales,
            n: b.rows,
            k: b.cols,
            block: b.block,
        }
    }
}

/// `[x · W₁ᵀ, x · W₂ᵀ, …]` for an f32 CPU tensor `x` `[m, k]` and block-FP8 weights, in one pass.
pub fn matmul_wt_fp8(x: &Tensor, ws: &[&Fp8Blocks]) -> Result<Vec<Tensor>> {
    let x = x.to_dtype(candle_core::DType::F32)?.contiguous()?;
    let (m, k) = x.dims2()?;
    if let Some(w) = ws.iter().find(|w| w.cols != k) {
        return Err(Error::Batch(format!(
            "an FP8 projection of {} inputs given {k}",
            w.cols
        )));
    }
    let views: Vec<Fp8Weight<'_>> = ws.iter().map(|&w| w.into()).collect();
    let ys = with_f32(&x, |xs| Ok(matmul_fp8(xs, m, &views)))?;
    ys.into_iter()
        .zip(ws)
        .map(|(y, w)| Ok(Tensor::from_vec(y, (m, w.rows), x.device())?))
        .collect()
}

/// One block-FP8 weight: `w` `[n, k]` e4m3 bytes, `scales` `[⌈n/br⌉, ⌈k/bc⌉]` row-major.
#[derive(Clone, Copy)]
pub struct Fp8Weight<'a> {
    pub w: &'a [E4m3],
    pub scales: &'a [f32],
    pub n: usize,
    pub k: usize,
    pub block: (usize, usize),
}

/// The bytes of a block-FP8 matrix as [`E4m3`] weights.
pub fn e4m3(bytes: &[u8]) -> &[E4m3] {
    // SAFETY: `E4m3` is `repr(transparent)` over `u8`: same size, alignment and validity.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast(), bytes.len()) }
}

/// One product `x · Wᵀ` with `x` `[m, k]` f32.
#[derive(Clone, Copy)]
pub struct Fp8Product<'a> {
    pub x: &'a [f32],
    pub m: usize,
    pub weight: Fp8Weight<'a>,
}

/// `[x · W₁ᵀ, x · W₂ᵀ, …]` for f32 `x` `[m, k]`; each result `[m, n]` row-major.
pub fn matmul_fp8(x: &[f32], m: usize, weights: &[Fp8Weight<'_>]) -> Vec<Vec<f32>> {
    let products: Vec<Fp8Product<'_>> = weights
        .iter()
        .map(|&weight| Fp8Product { x, m, weight })
        .collect();
    matmul_fp8_products(&products)
}

/// Several products, each with its own input rows, in one parallel pass; each result `[m, n]`.
pub fn matmul_fp8_products(products: &[Fp8Product<'_>]) -> Vec<Vec<f32>> {
    // The scaled copies of x, one per row block of each product (they must outlive the kernel's products).
    let mut scaled: Vec<Vec<f32>> = Vec::new();
    let mut spans: Vec<(usize, usize, usize)> = Vec::new(); // (product, first row, rows)
    for (pi, p) in products.iter().enumerate() {
        let w = &p.weight;
        let (br, bc) = (w.block.0.max(1), w.block.1.max(1));
        let col_blocks = w.k.div_ceil(bc);
        for rb in 0..w.n.div_ceil(br) {
            let row_scales = &w.scales[rb * col_blocks..(rb + 1) * col_blocks];
            let mut xs = Vec::with_capacity(p.m * w.k);
            for row in p.x.chunks_exact(w.k.max(1)).take(p.m) {
                for (cb, cols) in row.chunks(bc).enumerate() {
                    // ×256: E4m3 widens to the weight's value ÷ 256.
                    let s = row_scales[cb] * 256.0;
                    xs.extend(cols.iter().map(|v| v * s));
                }
            }
            scaled.push(xs);
            let first = rb * br;
            spans.push((pi, first, br.min(w.n - first)));
        }
    }
    let kernel_products: Vec<Product<'_, E4m3>> = spans
        .iter()
        .zip(&scaled)
        .map(|(&(pi, first, rows), xs)| {
            let (p, w) = (&products[pi], &products[pi].weight);
            Product {
                x: xs,
                m: p.m,
                w: &w.w[first * w.k..(first + rows) * w.k],
                k: w.k,
            }
        })
        .collect();
    let parts = run_products(&kernel_products);
    // Each part is `[m, rows]`: place its columns into the product's `[m, n]`.
    let mut outs: Vec<Vec<f32>> = products
        .iter()
        .map(|p| vec![0f32; p.m * p.weight.n])
        .collect();
    for (&(pi, first, rows), part) in spans.iter().zip(parts) {
        let n = products[pi].weight.n;
        for i in 0..products[pi].m {
            outs[pi][i * n + first..i * n + first + rows]
                .copy_from_slice(&part[i * rows..(i + 1) * rows]);
        }
    }
    outs
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// candle's own e4m3 → f32 of every byte.
    fn e4m3_table() -> Vec<f32> {
        let bytes: Vec<u8> = (0..=255).collect();
        candle_core::Tensor::from_raw_buffer(
            &bytes,
            candle_core::DType::F8E4M3,
            &[256],
            &candle_core::Device::Cpu,
        )
        .and_then(|t| t.to_dtype(candle_core::DType::F32))
        .and_then(|t| t.to_vec1::<f32>())
        .unwrap()
    }

    /// Every byte widens to its e4m3 value ÷ 256 exactly (normals, subnormals, both signs; NaN aside).
    #[test]
    fn every_e4m3_byte_widens_exactly() {
        use crate::model::cpu::elem::Widen;
        let table = e4m3_table();
        for b in 0..=255u8 {
            let v = table[b as usize];
            if v.is_nan() {
                continue;
            }
            assert_eq!(E4m3(b).widen() * 256.0, v, "byte {b:#04x}");
        }
    }

    /// Against dequantize-then-f32 (what the store does at load today), on odd sizes and 1–40 rows:
    /// the same products up to f32 summation order.
    #[test]
    fn equals_dequantize_then_f32() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let table = e4m3_table();
        for &(m, n, k, br, bc) in &[
            (1usize, 7usize, 5usize, 2usize, 2usize),
            (1, 5, 1000, 128, 128),
            (3, 130, 300, 128, 128),
            (8, 33, 64, 16, 32),
            (40, 9, 129, 4, 128),
        ] {
            let bytes: Vec<E4m3> = (0..n * k)
                .map(|_| {
                    // Finite values only (0x7F / 0xFF are NaN).
                    let b: u8 = rng.random();
                    E4m3(if b & 0x7F == 0x7F { b & 0xFE } else { b })
                })
                .collect();
            let (rb, cb) = (n.div_ceil(br), k.div_ceil(bc));
            let scales: Vec<f32> = (0..rb * cb).map(|_| rng.random_range(0.01..2.0)).collect();
            let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let w = Fp8Weight {
                w: &bytes,
                scales: &scales,
                n,
                k,
                block: (br, bc),
            };
            let got = matmul_fp8(&x, m, &[w, w]);
            for i in 0..m {
                for r in 0..n {
                    let mut want = 0f64;
                    for j in 0..k {
                        let v = table[bytes[r * k + j].0 as usize] * scales[(r / br) * cb + j / bc];
                        want += f64::from(x[i * k + j]) * f64::from(v);
                    }
                    for out in &got {
                        let diff = (f64::from(out[i * n + r]) - want).abs();
                        assert!(
                            diff <= 1e-4 * (1.0 + want.abs()),
                            "m={m} n={n} k={k} row {i} col {r}: {} vs {want}",
                            out[i * n + r]
                        );
                    }
                }
            }
        }
    }
}
