//! x86 SIMD kernels for `x · Wᵀ` with f32 activations and weights read as stored (f32, bf16, f16, e4m3
//! widened in registers): one-row dot products, register tiles for a few input rows, and the AVX-512 e4m3
//! row kernel. Chosen at run time ([`has_fma`], [`has_avx512`]); `matmul` and `fp8` drive them.
//!
//! The tiles keep at least eight independent accumulators in flight whatever the number of input rows
//! (an FMA's latency is four cycles and two issue per cycle): a decode batch spreads its tokens over the
//! experts, so most expert products see 1–4 rows, and a tile with two accumulator chains would leave
//! three quarters of the FMA throughput unused (`benches/matmul` `stored_precision`, 2–3 rows).

/// AVX2, FMA and F16C (every AVX2 CPU has F16C; the f16 and e4m3 loads need it).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_fma() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn has_fma() -> bool {
    false
}

/// Whether the AVX-512 row kernel applies (F and BW; F16C and FMA come with them).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{dot, dot_e4m3_avx512, tile, Load8};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::{bf16, f16};

    use crate::model::cpu::elem::{E4m3, Widen};

    /// Loads 8 weights as f32.
    pub trait Load8: Widen {
        /// # Safety
        /// `p` must point at 8 readable elements; AVX2 and F16C must be available.
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

    impl Load8 for E4m3 {
        #[inline(always)]
        unsafe fn load8(p: *const E4m3) -> __m256 {
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

    /// `out[r * m + i] = x[i] · w[r]` for `x` `[m, k]`, `w` `[rows, k]`: weight rows four at a time (they
    /// stay in L1 while every input row passes), input rows in groups of up to four.
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available; `x.len() == m * k`, `w.len() == rows * k`, `out.len() == rows * m`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn tile<W: Load8>(x: &[f32], m: usize, k: usize, w: &[W], out: &mut [f32]) {
        let rows = out.len() / m.max(1);
        let mut r = 0;
        while r < rows {
            let step = match rows - r {
                1 => 1,
                2 | 3 => 2,
                _ => 4,
            };
            match step {
                1 => weight_rows::<W, 1>(x, m, k, w, out, r),
                2 => weight_rows::<W, 2>(x, m, k, w, out, r),
                _ => weight_rows::<W, 4>(x, m, k, w, out, r),
            }
            r += step;
        }
    }

    /// Weight rows `r..r + R` against every input row.
    #[inline(always)]
    unsafe fn weight_rows<W: Load8, const R: usize>(
        x: &[f32],
        m: usize,
        k: usize,
        w: &[W],
        out: &mut [f32],
        r: usize,
    ) {
        let ws: [&[W]; R] = std::array::from_fn(|j| &w[(r + j) * k..(r + j + 1) * k]);
        // The next group's rows (or these again at the end): prefetched while the first input rows pass.
        let rows = w.len() / k.max(1);
        let next: [*const W; R] =
            std::array::from_fn(|j| w[((r + R + j).min(rows - 1)) * k..].as_ptr());
        let xr = |i: usize| &x[i * k..(i + 1) * k];
        let mut i = 0;
        while i < m {
            let pf = if i == 0 { Some(next) } else { None };
            match m - i {
                1 => {
                    tiles::<W, R, 1>(ws, [xr(i)], out, m, r, i, pf);
                    i += 1;
                }
                2 => {
                    tiles::<W, R, 2>(ws, [xr(i), xr(i + 1)], out, m, r, i, pf);
                    i += 2;
                }
                3 => {
                    tiles::<W, R, 3>(ws, [xr(i), xr(i + 1), xr(i + 2)], out, m, r, i, pf);
                    i += 3;
                }
                _ => {
                    let xs = [xr(i), xr(i + 1), xr(i + 2), xr(i + 3)];
                    tiles::<W, R, 4>(ws, xs, out, m, r, i, pf);
                    i += 4;
                }
            }
        }
    }

    /// `R` weight rows against `C` input rows, in blocks that fit the 16 vector registers with at least
    /// eight accumulators: `R × C ≤ 8` in one block (the k loop unrolled twice below eight), wider ones
    /// as pairs of weight rows.
    #[inline(always)]
    unsafe fn tiles<W: Load8, const R: usize, const C: usize>(
        ws: [&[W]; R],
        xs: [&[f32]; C],
        out: &mut [f32],
        m: usize,
        r: usize,
        i: usize,
        next: Option<[*const W; R]>,
    ) {
        if R * C <= 4 {
            store(out, m, r, i, block::<W, R, C, 2>(ws, xs, next));
        } else if R * C <= 8 {
            store(out, m, r, i, block::<W, R, C, 1>(ws, xs, next));
        } else {
            // R is 4 here (weight rows go in groups of 1, 2 or 4): two pairs.
            let mut j = 0;
            while j + 2 <= R {
                let pf = next.map(|p| [p[j], p[j + 1]]);
                let v = block::<W, 2, C, 1>([ws[j], ws[j + 1]], xs, pf);
                store(out, m, r + j, i, v);
                j += 2;
            }
        }
    }

    #[inline(always)]
    fn store<const R: usize, const C: usize>(
        out: &mut [f32],
        m: usize,
        r: usize,
        i: usize,
        v: [[f32; C]; R],
    ) {
        for (j, row) in v.iter().enumerate() {
            out[(r + j) * m + i..(r + j) * m + i + C].copy_from_slice(row);
        }
    }

    /// `R` weight rows against `C` input rows: `U × R × C` accumulators (`U` interleaved halves of the k
    /// loop), each loaded weight vector feeding `C` FMAs and each input vector `R`.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    unsafe fn block<W: Load8, const R: usize, const C: usize, const U: usize>(
        w: [&[W]; R],
        x: [&[f32]; C],
        next: Option<[*const W; R]>,
    ) -> [[f32; C]; R] {
        let k = x[0].len();
        // Weights per cache line: one prefetch per line of each next row, as far ahead as this block.
        let line = 64 / std::mem::size_of::<W>();
        let mut acc = [[[_mm256_setzero_ps(); C]; R]; U];
        let mut i = 0;
        while i + 8 * U <= k {
            if let Some(next) = next {
                if i % line == 0 {
                    for p in next {
                        _mm_prefetch::<_MM_HINT_T1>(p.add(i).cast());
                    }
                }
            }
            for u in 0..U {
                let at = i + 8 * u;
                let mut xv = [_mm256_setzero_ps(); C];
                for c in 0..C {
                    xv[c] = _mm256_loadu_ps(x[c].as_ptr().add(at));
                }
                for r in 0..R {
                    let wv = W::load8(w[r].as_ptr().add(at));
                    for c in 0..C {
                        acc[u][r][c] = _mm256_fmadd_ps(xv[c], wv, acc[u][r][c]);
                    }
                }
            }
            i += 8 * U;
        }
        while i + 8 <= k {
            for r in 0..R {
                let wv = W::load8(w[r].as_ptr().add(i));
                for c in 0..C {
                    let xv = _mm256_loadu_ps(x[c].as_ptr().add(i));
                    acc[0][r][c] = _mm256_fmadd_ps(xv, wv, acc[0][r][c]);
                }
            }
            i += 8;
        }
        let mut out = [[0f32; C]; R];
        for r in 0..R {
            for c in 0..C {
                let mut v = acc[0][r][c];
                for u in 1..U {
                    v = _mm256_add_ps(v, acc[u][r][c]);
                }
                let mut s = hsum(v);
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

    /// One row: `Σ x_j · w_j` with four 8-wide accumulators (hiding the FMA latency).
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available and `x.len() == w.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn dot<W: Load8>(x: &[f32], w: &[W]) -> f32 {
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
        let mut total = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
        while i < k {
            total += x[i] * w[i].widen();
            i += 1;
        }
        total
    }

    /// One row of e4m3 weights: `Σ x_j · w_j` (w widened ÷ 256, as [`E4m3`]), 32 weights per step: the
    /// bytes become 32 f16 in one zmm (zero-extend, shift into the high byte, arithmetic shift, clear bit
    /// 14), two 16-wide conversions, two FMAs — a third of the AVX2 path's instructions per weight, which
    /// is compute-bound.
    ///
    /// # Safety
    /// AVX-512 F and BW must be available; `x.len() == w.len()`.
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
    pub(crate) unsafe fn dot_e4m3_avx512(x: &[f32], w: &[E4m3]) -> f32 {
        let k = x.len().min(w.len());
        let (xp, wp) = (x.as_ptr(), w.as_ptr().cast::<u8>());
        let mask = _mm512_set1_epi16(!0x4000);
        let mut a0 = _mm512_setzero_ps();
        let mut a1 = _mm512_setzero_ps();
        let mut i = 0;
        while i + 32 <= k {
            let b = _mm512_cvtepu8_epi16(_mm256_loadu_si256(wp.add(i).cast()));
            let h = _mm512_and_si512(_mm512_srai_epi16::<1>(_mm512_slli_epi16::<8>(b)), mask);
            let lo = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
            let hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(h));
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(xp.add(i)), lo, a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(xp.add(i + 16)), hi, a1);
            i += 32;
        }
        let mut total = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
        while i < k {
            total += x[i] * w[i].widen();
            i += 1;
        }
        total
    }
}
