//! `y = x · Wᵀ` on the CPU for the few-row products of decoding (and of experts that see few tokens).
//!
//! With one to a few rows, a projection is a matrix–vector product bound by reading `W` once from memory.
//! candle's blocked GEMM packs its operands and leaves the second core idle for such shapes; this kernel
//! streams each weight row once, dots it with every input row while the row sits in L1, and splits the
//! weight rows over the rayon pool. f32 and bf16 weights (bf16 widened on the fly), f32 activations and
//! accumulation. AVX2+FMA is chosen at run time; other CPUs get a portable loop the compiler vectorises.

use candle_core::{DType, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

use super::host::{with_f32, with_hosts, HostSlices};
use crate::error::{Error, Result};

/// Up to this many input rows the streaming kernel beats candle's GEMM (`benches/matmul`: 2× at 16 rows,
/// 0.7× at 64); above it candle's packed, cache-blocked GEMM wins.
pub const MAX_ROWS: usize = 32;

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
        && (1..=MAX_ROWS).contains(&x.dim(0)?)
        && x.dim(1)? == w.dim(1)?
        && w.is_contiguous())
}

/// A weight element the kernel can widen to f32.
pub trait WeightElem: Copy + Send + Sync {
    fn widen(self) -> f32;
    /// # Safety
    /// AVX2, FMA and F16C must be available and `x.len() == w.len()`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn dot_avx2(x: &[f32], w: &[Self]) -> f32;
    /// # Safety
    /// AVX2, FMA and F16C must be available; `x` is `[m, k]`, `w` `[rows, k]`, `out` `[rows, m]`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn tile_avx2(x: &[f32], m: usize, k: usize, w: &[Self], out: &mut [f32]);
}

/// A weight type's AVX2 methods: the generic kernels over its `avx2::Load8`.
macro_rules! avx2_methods {
    ($t:ty) => {
        #[cfg(target_arch = "x86_64")]
        unsafe fn dot_avx2(x: &[f32], w: &[$t]) -> f32 {
            avx2::dot(x, w)
        }
        #[cfg(target_arch = "x86_64")]
        unsafe fn tile_avx2(x: &[f32], m: usize, k: usize, w: &[$t], out: &mut [f32]) {
            avx2::tile(x, m, k, w, out)
        }
    };
}

impl WeightElem for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
    avx2_methods!(f32);
}

impl WeightElem for bf16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }
    avx2_methods!(bf16);
}

impl WeightElem for f16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
    avx2_methods!(f16);
}

/// An e4m3 FP8 weight byte, widened to its value ÷ 256: its exponent and mantissa bits placed in an f16
/// (bias 15 instead of 7) give exactly that, normals and subnormals alike, in one conversion instruction.
/// The FP8 kernel (`super::fp8`) folds the 256 into the block scales.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(transparent)]
pub struct E4m3(pub u8);

impl E4m3 {
    #[inline(always)]
    fn f16_bits(self) -> u16 {
        (u16::from(self.0 & 0x80) << 8) | (u16::from(self.0 & 0x7F) << 7)
    }
}

impl WeightElem for E4m3 {
    #[inline(always)]
    fn widen(self) -> f32 {
        f16::from_bits(self.f16_bits()).to_f32()
    }
    #[cfg(target_arch = "x86_64")]
    unsafe fn dot_avx2(x: &[f32], w: &[E4m3]) -> f32 {
        if super::fp8::has_avx512() {
            // SAFETY: AVX-512 F/BW checked just above; the caller guarantees the rest.
            return super::fp8::dot_e4m3_avx512(x, w);
        }
        avx2::dot(x, w)
    }
    #[cfg(target_arch = "x86_64")]
    unsafe fn tile_avx2(x: &[f32], m: usize, k: usize, w: &[E4m3], out: &mut [f32]) {
        avx2::tile(x, m, k, w, out)
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

/// Runs several products in one parallel pass over all their weight rows; returns each `[m, n]`.
pub fn run_products<W: WeightElem>(products: &[Product<'_, W>]) -> Vec<Vec<f32>> {
    let fma = has_fma();
    // Transposed results: each task owns a contiguous run of one product's output columns.
    let mut yts: Vec<Vec<f32>> = products
        .iter()
        .map(|p| vec![0f32; (p.w.len() / p.k.max(1)) * p.m])
        .collect();
    let mut tasks = Vec::new();
    for (p, yt) in products.iter().zip(yts.iter_mut()) {
        if p.m == 0 || p.k == 0 {
            continue;
        }
        for (c, out) in yt.chunks_mut(ROWS_PER_TASK * p.m).enumerate() {
            tasks.push((p, c * ROWS_PER_TASK, out));
        }
    }
    tasks.into_par_iter().for_each(|(p, first, out)| {
        let (m, k) = (p.m, p.k);
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
        .zip(yts)
        .map(|(p, yt)| {
            if p.m <= 1 {
                return yt;
            }
            let n = yt.len() / p.m;
            let mut y = vec![0f32; p.m * n];
            for (j, col) in yt.chunks_exact(p.m).enumerate() {
                for (i, &v) in col.iter().enumerate() {
                    y[i * n + j] = v;
                }
            }
            y
        })
        .collect()
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn has_fma() -> bool {
    // Every AVX2 CPU has F16C too; the f16 weight loads need it.
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn has_fma() -> bool {
    false
}

#[inline(always)]
fn dot<W: WeightElem>(x: &[f32], w: &[W], fma: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if fma {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time by `has_fma`); both slices have the
        // same length (`k`), which `avx2::dot` relies on.
        return unsafe { W::dot_avx2(x, w) };
    }
    let _ = fma;
    dot_lanes(x, w)
}

/// Lane-wise accumulation (16 independent sums) that the compiler can vectorise without reassociating.
#[inline(always)]
pub(crate) fn dot_lanes<W: WeightElem>(x: &[f32], w: &[W]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let xc = x.chunks_exact(LANES);
    let wc = w.chunks_exact(LANES);
    let (xt, wt) = (xc.remainder(), wc.remainder());
    for (xs, ws) in xc.zip(wc) {
        for l in 0..LANES {
            acc[l] += xs[l] * ws[l].widen();
        }
    }
    let mut tail = 0f32;
    for (a, b) in xt.iter().zip(wt) {
        tail += a * b.widen();
    }
    // Pairwise: lane-wise halving adds vectorise; a sequential sum would be 16 dependent additions.
    let mut half = LANES / 2;
    while half > 0 {
        for l in 0..half {
            acc[l] += acc[l + half];
        }
        half /= 2;
    }
    acc[0] + tail
}

/// Explicit AVX2+FMA kernels: dot products with four 8-wide accumulators (hiding the FMA latency), and
/// register tiles of 2 weight rows × 4 input rows where each loaded weight vector feeds 4 FMAs.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use half::{bf16, f16};

    /// Loads 8 weights as f32.
    pub trait Load8 {
        /// # Safety
        /// `p` must point at 8 readable elements; AVX2 must be available.
        unsafe fn load8(p: *const Self) -> __m256;
    }

    impl Load8 for f32 {
        #[inline(always)]
        unsafe fn load8(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
    }

    impl Load8 for bf16 {
        #[inline(always)]
        unsafe fn load8(p: *const bf16) -> __m256 {
            let h = _mm_loadu_si128(p.cast());
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        }
    }

    impl Load8 for super::E4m3 {
        #[inline(always)]
        unsafe fn load8(p: *const super::E4m3) -> __m256 {
            // 8 bytes into the high byte of 8 u16 (b << 8), arithmetic shift right by one (sign to bits
            // 15 and 14, exponent and mantissa to 13..7), clear bit 14: the f16 bits → f32.
            let hi = _mm_unpacklo_epi8(_mm_setzero_si128(), _mm_loadl_epi64(p.cast()));
            let h = _mm_and_si128(_mm_srai_epi16::<1>(hi), _mm_set1_epi16(!0x4000));
            _mm256_cvtph_ps(h)
        }
    }

    impl Load8 for f16 {
        #[inline(always)]
        unsafe fn load8(p: *const f16) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
        }
    }

    /// `out[r * m + i] = x[i] · w[r]` for `x` `[m, k]`, `w` `[rows, k]`, in 2×4 register tiles.
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available; `x.len() == m * k`, `w.len() == rows * k`, `out.len() == rows * m`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile<W: Load8 + super::WeightElem>(
        x: &[f32],
        m: usize,
        k: usize,
        w: &[W],
        out: &mut [f32],
    ) {
        let rows = out.len() / m.max(1);
        let xr = |i: usize| &x[i * k..(i + 1) * k];
        let wr = |r: usize| &w[r * k..(r + 1) * k];
        let mut r = 0;
        while r < rows {
            let pair = r + 2 <= rows;
            let mut i = 0;
            while i < m {
                if i + 4 <= m {
                    let xs = [xr(i), xr(i + 1), xr(i + 2), xr(i + 3)];
                    if pair {
                        let v = block::<W, 2, 4>([wr(r), wr(r + 1)], xs);
                        out[r * m + i..r * m + i + 4].copy_from_slice(&v[0]);
                        out[(r + 1) * m + i..(r + 1) * m + i + 4].copy_from_slice(&v[1]);
                    } else {
                        let v = block::<W, 1, 4>([wr(r)], xs);
                        out[r * m + i..r * m + i + 4].copy_from_slice(&v[0]);
                    }
                    i += 4;
                } else {
                    if pair {
                        let v = block::<W, 2, 1>([wr(r), wr(r + 1)], [xr(i)]);
                        out[r * m + i] = v[0][0];
                        out[(r + 1) * m + i] = v[1][0];
                    } else {
                        out[r * m + i] = block::<W, 1, 1>([wr(r)], [xr(i)])[0][0];
                    }
                    i += 1;
                }
            }
            r += if pair { 2 } else { 1 };
        }
    }

    /// `R` weight rows against `C` input rows: `R × C` accumulators, each weight vector loaded once.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    unsafe fn block<W: Load8 + super::WeightElem, const R: usize, const C: usize>(
        w: [&[W]; R],
        x: [&[f32]; C],
    ) -> [[f32; C]; R] {
        let k = x[0].len();
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut i = 0;
        while i + 8 <= k {
            let mut xv = [_mm256_setzero_ps(); C];
            for c in 0..C {
                xv[c] = _mm256_loadu_ps(x[c].as_ptr().add(i));
            }
            for r in 0..R {
                let wv = W::load8(w[r].as_ptr().add(i));
                for c in 0..C {
                    acc[r][c] = _mm256_fmadd_ps(xv[c], wv, acc[r][c]);
                }
            }
            i += 8;
        }
        let mut out = [[0f32; C]; R];
        for r in 0..R {
            for c in 0..C {
                let mut s = hsum(acc[r][c]);
                for j in i..k {
                    s += x[c][j] * w[r][j].widen();
                }
                out[r][c] = s;
            }
        }
        out
    }

    #[inline(always)]
    unsafe fn hsum(s: __m256) -> f32 {
        let hi = _mm256_extractf128_ps::<1>(s);
        let q = _mm_add_ps(_mm256_castps256_ps128(s), hi);
        let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
        let q = _mm_add_ss(q, _mm_shuffle_ps::<1>(q, q));
        _mm_cvtss_f32(q)
    }

    /// # Safety
    /// AVX2, FMA and F16C must be available and `x.len() == w.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot<W: Load8 + super::WeightElem>(x: &[f32], w: &[W]) -> f32 {
        let k = x.len().min(w.len());
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        let mut a0 = _mm256_setzero_ps();
        let mut a1 = _mm256_setzero_ps();
        let mut a2 = _mm256_setzero_ps();
        let mut a3 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 32 <= k {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i)), W::load8(wp.add(i)), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i + 8)), W::load8(wp.add(i + 8)), a1);
            a2 = _mm256_fmadd_ps(
                _mm256_loadu_ps(xp.add(i + 16)),
                W::load8(wp.add(i + 16)),
                a2,
            );
            a3 = _mm256_fmadd_ps(
                _mm256_loadu_ps(xp.add(i + 24)),
                W::load8(wp.add(i + 24)),
                a3,
            );
            i += 32;
        }
        while i + 8 <= k {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i)), W::load8(wp.add(i)), a0);
            i += 8;
        }
        let s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
        let hi = _mm256_extractf128_ps::<1>(s);
        let q = _mm_add_ps(_mm256_castps256_ps128(s), hi);
        let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
        let q = _mm_add_ss(q, _mm_shuffle_ps::<1>(q, q));
        let mut total = _mm_cvtss_f32(q);
        while i < k {
            total += x[i] * w[i].widen();
            i += 1;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
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
