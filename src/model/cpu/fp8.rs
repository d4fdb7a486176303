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
//! This is the kernel; the weight store still dequantizes FP8 checkpoints to bf16 at load (wiring it into
//! the projections and experts is the next step of issue 14).

use super::matmul::{run_products, E4m3, Product};

/// One block-FP8 weight: `w` `[n, k]` e4m3 bytes, `scales` `[⌈n/br⌉, ⌈k/bc⌉]` row-major.
#[derive(Clone, Copy)]
pub struct Fp8Weight<'a> {
    pub w: &'a [E4m3],
    pub scales: &'a [f32],
    pub n: usize,
    pub k: usize,
    pub block: (usize, usize),
}

/// `[x · W₁ᵀ, x · W₂ᵀ, …]` for f32 `x` `[m, k]`; each result `[m, n]` row-major.
pub fn matmul_fp8(x: &[f32], m: usize, weights: &[Fp8Weight<'_>]) -> Vec<Vec<f32>> {
    // The scaled copies of x, one per row block of each weight (they must outlive the products).
    let mut scaled: Vec<Vec<f32>> = Vec::new();
    let mut spans: Vec<(usize, usize, usize)> = Vec::new(); // (weight, first row, rows)
    for (wi, w) in weights.iter().enumerate() {
        let (br, bc) = (w.block.0.max(1), w.block.1.max(1));
        let col_blocks = w.k.div_ceil(bc);
        for rb in 0..w.n.div_ceil(br) {
            let row_scales = &w.scales[rb * col_blocks..(rb + 1) * col_blocks];
            let mut xs = Vec::with_capacity(m * w.k);
            for row in x.chunks_exact(w.k).take(m) {
                for (cb, cols) in row.chunks(bc).enumerate() {
                    // ×256: E4m3 widens to the weight's value ÷ 256.
                    let s = row_scales[cb] * 256.0;
                    xs.extend(cols.iter().map(|v| v * s));
                }
            }
            scaled.push(xs);
            let first = rb * br;
            spans.push((wi, first, br.min(w.n - first)));
        }
    }
    let products: Vec<Product<'_, E4m3>> = spans
        .iter()
        .zip(&scaled)
        .map(|(&(wi, first, rows), xs)| {
            let w = &weights[wi];
            Product {
                x: xs,
                m,
                w: &w.w[first * w.k..(first + rows) * w.k],
                k: w.k,
            }
        })
        .collect();
    let parts = run_products(&products);
    // Each part is `[m, rows]`: place its columns into the weight's `[m, n]`.
    let mut outs: Vec<Vec<f32>> = weights.iter().map(|w| vec![0f32; m * w.n]).collect();
    for (&(wi, first, rows), part) in spans.iter().zip(parts) {
        let n = weights[wi].n;
        for i in 0..m {
            outs[wi][i * n + first..i * n + first + rows]
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
        use crate::model::cpu::matmul::WeightElem;
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
