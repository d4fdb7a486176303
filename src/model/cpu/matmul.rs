//! `y = x · Wᵀ` on the CPU for the few-row products of decoding (and of experts that see few tokens).
//!
//! With one to a few rows, a projection is a matrix–vector product bound by reading `W` once from memory.
//! candle's blocked GEMM packs its operands and leaves the second core idle for such shapes; this kernel
//! streams each weight row once, dots it with every input row while the row sits in L1, and splits the
//! weight rows over the rayon pool. f32, bf16, f16 and e4m3 weights (widened in registers by `super::simd`),
//! f32 activations and accumulation. AVX2+FMA is chosen at run time; other CPUs get a portable loop the
//! compiler vectorises. AVX-512 kernels take over from two rows on: `super::dpbf16` for bf16 weights,
//! `super::tile512` for f32 weights.

use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{DType, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

use super::elem::{dot_lanes, E4m3, Widen};
use super::host::{with_f32, with_hosts, HostSlices};
use super::simd::{self, has_fma};
use super::{dpbf16, tile512};
use crate::device::MatmulPrecision;
use crate::error::{Error, Result};

/// Up to this many input rows the streaming kernel beats candle's GEMM (`benches/matmul`: 2× at 16 rows,
/// 0.7× at 64); above it candle's packed, cache-blocked GEMM wins.
pub const MAX_ROWS: usize = 32;

/// From this many input rows on, bf16 weights go through `super::dpbf16` (bf16 dot-product instructions
/// on the weights as stored, no widening: 1.5× faster than the f32 tiles at 2–8 rows) where the CPU has
/// AVX512-BF16 and `--matmul-precision` is not `highest`. Activations are split in two bf16 terms, or
/// rounded for prompt-sized products (more than [`MAX_ROWS`]) under `medium`. One row keeps the f32 dot.
pub const DPBF16_MIN_ROWS: usize = 2;

/// `--matmul-precision` for this process (0 highest, 1 high, 2 medium): a kernel choice like the thread
/// count, set once at start-up.
static MATMUL_PRECISION: AtomicU8 = AtomicU8::new(1);

/// Sets how products of bf16 weights treat their f32 activations (see [`MatmulPrecision`]).
pub fn set_matmul_precision(p: MatmulPrecision) {
    let v = match p {
        MatmulPrecision::Highest => 0,
        MatmulPrecision::High => 1,
        MatmulPrecision::Medium => 2,
    };
    MATMUL_PRECISION.store(v, Ordering::Relaxed);
}

/// Whether bf16 products take `super::dpbf16`, and whether prompt-sized ones keep the split (decode-sized
/// ones always do).
fn dpbf16_mode() -> Option<bool> {
    match MATMUL_PRECISION.load(Ordering::Relaxed) {
        0 => None,
        1 => Some(true),
        _ => Some(false),
    }
}

/// The most input rows the streaming kernels serve for weights of `dtype`: without bound for bf16 on
/// AVX512-BF16 CPUs, [`MAX_ROWS`] otherwise.
pub fn max_rows(dtype: DType) -> usize {
    if dtype == DType::BF16 && dpbf16::available() && dpbf16_mode().is_some() {
        usize::MAX
    } else {
        MAX_ROWS
    }
}

/// Weight rows per parallel task: big enough to amortise scheduling, small enough to balance two or more
/// cores on a 512-row expert projection.
const ROWS_PER_TASK: usize = 32;

/// `x · Wᵀ` for `x` `[m, k]` and `w` `[n, k]`: the streaming kernel for small `m` on the CPU, candle's
/// matmul everywhere else (other devices, large `m`, other dtypes, strided operands).
pub fn matmul_wt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    matmul_wt_many(x, &[w])?
        .pop()
        .ok_or_else(|| Error::Batch("streaming matmul produced no output".into()))
}

/// `[x · W₁ᵀ, x · W₂ᵀ, …]` with every weight in one parallel pass when the kernel applies (q/k/v, gate/up):
/// one fork-join instead of one per projection.
pub fn matmul_wt_many(x: &Tensor, ws: &[&Tensor]) -> Result<Vec<Tensor>> {
    let dtype = ws.first().map(|w| w.dtype());
    let mut fast = true;
    for w in ws {
        fast &= streamable(x, w)? && Some(w.dtype()) == dtype;
    }
    if !fast && chunkable(x, ws)? {
        return chunked(x, ws);
    }
    if !fast {
        return ws
            .iter()
            .map(|w| {
                if w.dtype() == x.dtype() {
                    Ok(x.matmul(&w.t()?)?)
                } else {
                    super::widen::matmul_wt_widened(x, w)
                }
            })
            .collect();
    }
    let x = x.contiguous()?;
    let (m, k) = x.dims2()?;
    let outs = with_f32(&x, |xs| {
        with_hosts(ws, |views| {
            Ok(match views {
                HostSlices::F32(ws) => run_products(
                    &ws.iter()
                        .map(|w| Product { x: xs, m, w, k })
                        .collect::<Vec<_>>(),
                ),
                HostSlices::Bf16(ws) => run_products(
                    &ws.iter()
                        .map(|w| Product { x: xs, m, w, k })
                        .collect::<Vec<_>>(),
                ),
                HostSlices::F16(ws) => run_products(
                    &ws.iter()
                        .map(|w| Product { x: xs, m, w, k })
                        .collect::<Vec<_>>(),
                ),
            })
        })
    })?;
    outs.into_iter()
        .map(|y| {
            let n = y.len() / m;
            Ok(Tensor::from_vec(y, (m, n), x.device())?)
        })
        .collect()
}

/// Up to this many rows, f32 activations against bf16 / f16 weights go through the streaming kernel in
/// chunks of [`MAX_ROWS`] (each chunk reads the weights once, at their stored size); beyond it the weights
/// are widened panel by panel for candle's GEMM (`super::widen`).
pub const MAX_CHUNKED_ROWS: usize = 2 * MAX_ROWS;

/// Whether `x` (more than [`MAX_ROWS`] rows) against `ws` can run as chunks of the streaming kernel.
fn chunkable(x: &Tensor, ws: &[&Tensor]) -> Result<bool> {
    let Some(first) = ws.first() else {
        return Ok(false);
    };
    if x.rank() != 2 || !(MAX_ROWS + 1..=MAX_CHUNKED_ROWS).contains(&x.dim(0)?) {
        return Ok(false);
    }
    let probe = x.narrow(0, 0, 1)?;
    for w in ws {
        if !streamable(&probe, w)? || w.dtype() != first.dtype() || w.dtype() == DType::F32 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// [`matmul_wt_many`] over chunks of [`MAX_ROWS`] rows, joined.
fn chunked(x: &Tensor, ws: &[&Tensor]) -> Result<Vec<Tensor>> {
    let m = x.dim(0)?;
    let mut parts: Vec<Vec<Tensor>> = vec![Vec::new(); ws.len()];
    for first in (0..m).step_by(MAX_ROWS) {
        let rows = MAX_ROWS.min(m - first);
        for (part, y) in parts
            .iter_mut()
            .zip(matmul_wt_many(&x.narrow(0, first, rows)?, ws)?)
        {
            part.push(y);
        }
    }
    parts.into_iter().map(|p| Ok(Tensor::cat(&p, 0)?)).collect()
}

fn streamable(x: &Tensor, w: &Tensor) -> Result<bool> {
    Ok(x.device().is_cpu()
        && x.rank() == 2
        && w.rank() == 2
        && x.dtype() == DType::F32
        && matches!(w.dtype(), DType::F32 | DType::BF16 | DType::F16)
        && (1..=max_rows(w.dtype())).contains(&x.dim(0)?)
        && x.dim(1)? == w.dim(1)?
        && w.is_contiguous())
}

/// A weight element the streaming kernel reads as stored: widened to f32 in registers by the SIMD kernels
/// (`super::simd`) where the CPU has them.
pub trait WeightElem: Widen {
    /// # Safety
    /// AVX2, FMA and F16C must be available and `x.len() == w.len()`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn dot_avx2(x: &[f32], w: &[Self]) -> f32;
    /// # Safety
    /// AVX2, FMA and F16C must be available; `x` is `[m, k]`, `w` `[rows, k]`, `out` `[rows, m]`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn tile_avx2(x: &[f32], m: usize, k: usize, w: &[Self], out: &mut [f32]);
    /// The weights as bf16 where they are (for the AVX512-BF16 kernel of `super::dpbf16`).
    fn as_bf16(_w: &[Self]) -> Option<&[bf16]> {
        None
    }
    /// The weights as f32 where they are (for the AVX-512 tiles of `super::tile512`).
    fn as_f32(_w: &[Self]) -> Option<&[f32]> {
        None
    }
}

/// The generic SIMD kernels for a weight type.
macro_rules! simd_kernels {
    ($t:ty $(, $extra:item)*) => {
        impl WeightElem for $t {
            $($extra)*
            #[cfg(target_arch = "x86_64")]
            unsafe fn dot_avx2(x: &[f32], w: &[$t]) -> f32 {
                simd::dot(x, w)
            }
            #[cfg(target_arch = "x86_64")]
            unsafe fn tile_avx2(x: &[f32], m: usize, k: usize, w: &[$t], out: &mut [f32]) {
                simd::tile(x, m, k, w, out)
            }
        }
    };
}

simd_kernels!(
    f32,
    fn as_f32(w: &[f32]) -> Option<&[f32]> {
        Some(w)
    }
);
simd_kernels!(
    bf16,
    fn as_bf16(w: &[bf16]) -> Option<&[bf16]> {
        Some(w)
    }
);
simd_kernels!(f16);

impl WeightElem for E4m3 {
    #[cfg(target_arch = "x86_64")]
    unsafe fn dot_avx2(x: &[f32], w: &[E4m3]) -> f32 {
        if simd::has_avx512() {
            // SAFETY: AVX-512 F/BW checked just above; the caller guarantees the rest.
            return simd::dot_e4m3_avx512(x, w);
        }
        simd::dot(x, w)
    }
    #[cfg(target_arch = "x86_64")]
    unsafe fn tile_avx2(x: &[f32], m: usize, k: usize, w: &[E4m3], out: &mut [f32]) {
        simd::tile(x, m, k, w, out)
    }
}

/// Computes `[m, n]` from `x` `[m, k]` and `w` `[n, k]` (both row-major slices).
pub fn run<W: WeightElem>(x: &[f32], w: &[W], m: usize, n: usize, k: usize) -> Vec<f32> {
    debug_assert_eq!(w.len(), n * k);
    run_products(&[Product { x, m, w, k }])
        .pop()
        .unwrap_or_default()
}

/// One product `x · Wᵀ`: `x` is `[m, k]`, `w` is `[n, k]` with `n = w.len() / k`.
#[derive(Clone, Copy)]
pub struct Product<'a, W> {
    pub x: &'a [f32],
    pub m: usize,
    pub w: &'a [W],
    pub k: usize,
}

/// For each product that takes the AVX512-BF16 kernel, the index of its input rounded to bf16 in the
/// returned list (products sharing an input, like an expert's gate and up, share one rounding).
fn rounded_inputs<W: WeightElem>(
    products: &[Product<'_, W>],
) -> (Vec<Option<usize>>, Vec<dpbf16::Bf16Rows>) {
    let mut index = Vec::with_capacity(products.len());
    let mut rounded: Vec<dpbf16::Bf16Rows> = Vec::new();
    // Each rounding's input, as (start, length).
    let mut sources: Vec<(*const f32, usize)> = Vec::new();
    let mode = dpbf16_mode().filter(|_| dpbf16::available());
    for p in products {
        let Some(split) = mode.filter(|_| p.m >= DPBF16_MIN_ROWS && W::as_bf16(p.w).is_some())
        else {
            index.push(None);
            continue;
        };
        let source = (p.x.as_ptr(), p.x.len());
        match sources.iter().position(|&s| s == source) {
            Some(i) => index.push(Some(i)),
            None => {
                sources.push(source);
                // Decode-sized products are never rounded, whatever the mode: a sequence's decode does
                // not depend on `--matmul-precision` or (beyond f32 summation order) on its batch.
                let split = split || p.m <= MAX_ROWS;
                rounded.push(dpbf16::Bf16Rows::new(p.x, split));
                index.push(Some(rounded.len() - 1));
            }
        }
    }
    (index, rounded)
}

/// Runs several products in one parallel pass over all their weight rows; returns each `[m, n]`.
pub fn run_products<W: WeightElem>(products: &[Product<'_, W>]) -> Vec<Vec<f32>> {
    let fma = has_fma();
    let (rounded, rounded_x) = rounded_inputs(products);
    // f32 weights and two or more rows on AVX-512 CPUs: `super::tile512`, in place.
    let f32_tiles = tile512::available();
    let in_place: Vec<bool> = products
        .iter()
        .zip(&rounded)
        .map(|(p, r)| r.is_some() || (f32_tiles && p.m >= 2 && W::as_f32(p.w).is_some()))
        .collect();
    // Each result, `[n, m]` (transposed: each task owns a contiguous run of one product's output
    // columns) — or `[m, n]` for the AVX-512 kernels, whose tasks write disjoint column ranges in place
    // (prompt-sized results, where a transposing pass would cost as much as a third of the product; a
    // 16-row lm head, 5% of it).
    let mut ys: Vec<Vec<f32>> = products
        .iter()
        .map(|p| vec![0f32; (p.w.len() / p.k.max(1)) * p.m])
        .collect();
    let mut tasks = Vec::new();
    for (((p, y), xb), &in_place) in products
        .iter()
        .zip(ys.iter_mut())
        .zip(&rounded)
        .zip(&in_place)
    {
        if p.m == 0 || p.k == 0 {
            continue;
        }
        let n = y.len() / p.m;
        if in_place {
            let out = Columns(y.as_mut_ptr());
            let x = xb.map(|i| &rounded_x[i]);
            for first in (0..n).step_by(ROWS_PER_TASK) {
                let rows = ROWS_PER_TASK.min(n - first);
                tasks.push((p, first, Out::InPlace { y: out, n, rows, x }));
            }
        } else {
            for (c, out) in y.chunks_mut(ROWS_PER_TASK * p.m).enumerate() {
                tasks.push((p, c * ROWS_PER_TASK, Out::Transposed(out)));
            }
        }
    }
    tasks.into_par_iter().for_each(|(p, first, out)| {
        let (m, k) = (p.m, p.k);
        let out = match out {
            Out::Transposed(out) => out,
            Out::InPlace { y, n, rows, x } => {
                // SAFETY (both kernels): `rounded_inputs` rounds only where `dpbf16::available`, and
                // `in_place` picks `tile512` only where it is available; `y` is this product's `[m, n]`
                // result, alive until the pass ends, and this task alone writes its columns
                // `first..first + rows`.
                #[cfg(target_arch = "x86_64")]
                match (x, W::as_bf16(p.w), W::as_f32(p.w)) {
                    (Some(x), Some(w), _) => {
                        let w = &w[first * k..(first + rows) * k];
                        unsafe { dpbf16::tile(x, m, k, w, y.0.add(first), n) };
                    }
                    (None, _, Some(w)) => unsafe {
                        tile512::tile(p.x, m, k, w, first, rows, y.0.add(first), n)
                    },
                    _ => debug_assert!(false, "in-place product without its kernel"),
                }
                let _ = (x, y, n, rows);
                return;
            }
        };
        #[cfg(target_arch = "x86_64")]
        if fma && m >= 2 {
            let rows = out.len() / m;
            // SAFETY: AVX2+FMA checked by `has_fma`; shapes as the method requires.
            unsafe { W::tile_avx2(p.x, m, k, &p.w[first * k..(first + rows) * k], out) };
            return;
        }
        for (r, out_row) in out.chunks_exact_mut(m).enumerate() {
            let row = &p.w[(first + r) * k..(first + r + 1) * k];
            for (i, o) in out_row.iter_mut().enumerate() {
                *o = dot(&p.x[i * k..(i + 1) * k], row, fma);
            }
        }
    });
    products
        .iter()
        .zip(ys)
        .zip(&in_place)
        .map(|((p, y), &in_place)| {
            if p.m <= 1 || in_place {
                return y;
            }
            transpose(&y, y.len() / p.m, p.m)
        })
        .collect()
}

/// Where a task of [`run_products`] writes.
enum Out<'a> {
    /// Its own `[rows, m]` run of the transposed result.
    Transposed(&'a mut [f32]),
    /// Columns `first..first + rows` of the `[m, n]` result at `y`: by the AVX512-BF16 kernel from the
    /// product's input as bf16 (`x`), or (`x` None, f32 weights) by `super::tile512`.
    InPlace {
        y: Columns,
        n: usize,
        rows: usize,
        x: Option<&'a dpbf16::Bf16Rows>,
    },
}

/// A result buffer that several tasks write at once, each in its own columns.
#[derive(Clone, Copy)]
struct Columns(*mut f32);

// SAFETY: tasks holding a `Columns` write disjoint column ranges of a buffer that outlives the parallel
// pass (see `run_products`); nothing reads it until the pass has joined.
unsafe impl Send for Columns {}
unsafe impl Sync for Columns {}

/// `[rows, cols]` → `[cols, rows]`, in square blocks that stay in L1 (a plain column walk of a
/// 512 × 1,024 result strides 4 KiB per write and cost as much as the product).
fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const B: usize = 32;
    let mut t = vec![0f32; a.len()];
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    t[c * rows + r] = a[r * cols + c];
                }
            }
        }
    }
    t
}

#[inline(always)]
fn dot<W: WeightElem>(x: &[f32], w: &[W], fma: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if fma {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time by `has_fma`); both slices have the
        // same length (`k`), which `simd::dot` relies on.
        return unsafe { W::dot_avx2(x, w) };
    }
    let _ = fma;
    dot_lanes(x, w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cpu::test_values::random;
    use candle_core::Device;

    fn reference(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut y = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for t in 0..k {
                    s += f64::from(x[i * k + t]) * f64::from(w[j * k + t]);
                }
                y[i * n + j] = s as f32;
            }
        }
        y
    }

    #[test]
    fn matches_reference_on_odd_shapes() {
        // k not a multiple of the lanes, n not a multiple of the task size, m = 1 and m > 1.
        for &(m, n, k) in &[
            (1, 1, 1),
            (1, 77, 131),
            (3, 65, 1024),
            (8, 33, 37),
            (5, 512, 96),
            (32, 7, 45),
            (2, 3, 8),
            // 12–32 rows (`super::tile512` on AVX-512 CPUs): every input-row remainder, tails everywhere.
            (12, 70, 45),
            (16, 100, 1024),
            (17, 33, 64),
            (31, 65, 100),
        ] {
            let x = random(m * k, 1);
            let w = random(n * k, 2);
            let got = run(&x, &w, m, n, k);
            let want = reference(&x, &w, m, n, k);
            for (g, r) in got.iter().zip(&want) {
                assert!(
                    (g - r).abs() <= 1e-5 * (1.0 + r.abs()),
                    "{m}x{n}x{k}: {g} vs {r}"
                );
            }
        }
    }

    /// Several products in one pass, three sharing one 16-row input, one with 3 rows, each result in
    /// its own layout.
    #[test]
    fn products_sharing_an_input_match_reference() {
        // q/k/v-style: three weights against one input, plus one of 3 rows.
        let (m, k) = (16, 96);
        let x = random(m * k, 5);
        let ws: Vec<Vec<f32>> = [64, 16, 40]
            .iter()
            .map(|&n| random(n * k, n as u64))
            .collect();
        let x3 = random(3 * k, 6);
        let mut products: Vec<Product<'_, f32>> =
            ws.iter().map(|w| Product { x: &x, m, w, k }).collect();
        products.push(Product {
            x: &x3,
            m: 3,
            w: &ws[0],
            k,
        });
        let got = run_products(&products);
        for (p, y) in products.iter().zip(&got) {
            let want = reference(p.x, p.w, p.m, p.w.len() / k, k);
            assert_eq!(y.len(), want.len());
            for (g, r) in y.iter().zip(&want) {
                assert!((g - r).abs() <= 1e-5 * (1.0 + r.abs()), "{g} vs {r}");
            }
        }
    }

    /// Every tile shape the kernel picks: 1–9 input rows (groups of four and each remainder) against
    /// weight-row counts that leave each remainder of the four-row groups, k below, at and past the
    /// unrolled loop's stride.
    #[test]
    fn every_tile_shape_matches_reference() {
        for m in 1..=9 {
            for n in [1, 2, 3, 5, 6, 7, 33] {
                for k in [7, 8, 16, 37, 64] {
                    let x = random(m * k, (m * 100 + n * 10 + k) as u64);
                    let w = random(n * k, 9);
                    let want = reference(&x, &w, m, n, k);
                    let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
                    let wbf: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
                    let want_b = reference(&x, &wbf, m, n, k);
                    // f16 weights: the AVX2 tiles on every x86 CPU (f32 and bf16 take the AVX-512
                    // kernels where the CPU has them).
                    let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
                    let whf: Vec<f32> = wh.iter().map(|v| v.to_f32()).collect();
                    let want_h = reference(&x, &whf, m, n, k);
                    let cases = [
                        (run(&x, &w, m, n, k), &want),
                        (run(&x, &wb, m, n, k), &want_b),
                        (run(&x, &wh, m, n, k), &want_h),
                    ];
                    for (got, want) in cases {
                        for (g, r) in got.iter().zip(want.iter()) {
                            assert!(
                                (g - r).abs() <= 1e-5 * (1.0 + r.abs()),
                                "{m}x{n}x{k}: {g} vs {r}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn bf16_weights_are_widened_exactly() {
        let (m, n, k) = (2, 40, 70);
        let x = random(m * k, 3);
        let w: Vec<bf16> = random(n * k, 4).into_iter().map(bf16::from_f32).collect();
        let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
        let got = run(&x, &w, m, n, k);
        let want = reference(&x, &wf, m, n, k);
        for (g, r) in got.iter().zip(&want) {
            assert!((g - r).abs() <= 1e-5 * (1.0 + r.abs()));
        }
    }

    #[test]
    fn tensor_path_agrees_with_candle_matmul() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::from_vec(random(4 * 300, 5), (4, 300), &dev)?;
        let w = Tensor::from_vec(random(200 * 300, 6), (200, 300), &dev)?;
        let fast = matmul_wt(&x, &w)?;
        let slow = x.matmul(&w.t()?)?;
        let diff = (fast - slow)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "max diff {diff}");
        // A strided x (a narrow of a wider tensor) goes through the same kernel after `contiguous`.
        let wide = Tensor::from_vec(random(4 * 600, 7), (4, 600), &dev)?;
        let xs = wide.narrow(1, 100, 300)?;
        let d2 = (matmul_wt(&xs, &w)? - xs.matmul(&w.t()?)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d2 < 1e-4);
        Ok(())
    }
}
