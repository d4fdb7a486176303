//! `x · Wᵀ` for f32 weights and 2–32 input rows (decode batches, experts, chunks of short prompts) on
//! AVX-512 CPUs: the dot-product tiles of `super::simd` with 16-wide registers and 32 of them — four
//! weight rows against up to four input rows per block (8 loads per 16 FMAs), sixteen or more
//! accumulators in flight in four-weight-row blocks (the k loop unrolled where a block has fewer), k
//! tails as masked loads, and each block's sums written in place into the row-major result.
//!
//! Against the AVX2 tiles (both cores, min of 20 alternated runs): 2–4 rows of a 16,384 × 1,024 weight
//! 2–10% less time (both at about the one-row time: the weight read), 8 rows 9–14% less; the 16-row lm
//! head of the bench-shaped model 17.6 → ~11.5 ms. Also measured and dropped: the input rows across the
//! lanes (x transposed into 16-row panels, each weight broadcast into one FMA for all of them) — as fast
//! at 16 rows of the lm head, slower at 12 rows and on 1,024-row projections (a broadcast per FMA: one
//! panel reached ~68% of the FMA peak).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Whether the CPU runs the kernel: AVX512-F.
#[cfg(target_arch = "x86_64")]
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn available() -> bool {
    false
}

/// `out[i * ld + (r - first)] = x[i] · w[r]` for `x` `[m, k]` and the weight rows `first..first + rows`
/// of `w` (`[n, k]`, row-major): a `[m, rows]` block of a row-major result with row stride `ld`. The
/// rows after the block (to the end of `w`) are prefetched as it ends: a thread that takes several
/// blocks in a row mostly takes the next one.
///
/// # Safety
/// AVX512-F must be available; `x.len() == m * k`, `w.len()` a multiple of `k` with at least
/// `first + rows` rows, `rows <= ld`, and `out` valid for writes at `i * ld + j` for every `i < m`,
/// `j < rows`, with no other thread touching those.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    first: usize,
    rows: usize,
    out: *mut f32,
    ld: usize,
) {
    let end = first + rows;
    let mut r = first;
    while r < end {
        let at = out.add(r - first);
        r += match end - r {
            1 => weight_rows::<1>(x, m, k, w, r, at, ld),
            2 | 3 => weight_rows::<2>(x, m, k, w, r, at, ld),
            _ => weight_rows::<4>(x, m, k, w, r, at, ld),
        };
    }
}

/// Weight rows `r..r + R` against every input row, four input rows at a time, written to
/// `out[i * ld + j]`; returns `R`. The first group prefetches the next `R` weight rows into L2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn weight_rows<const R: usize>(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    r: usize,
    out: *mut f32,
    ld: usize,
) -> usize {
    let n = w.len() / k;
    let ws: [*const f32; R] = std::array::from_fn(|j| w.as_ptr().add((r + j) * k));
    let next: [*const f32; R] = std::array::from_fn(|j| w.as_ptr().add((r + R + j).min(n - 1) * k));
    let xr = |i: usize| x.as_ptr().add(i * k);
    let mut i = 0;
    while i < m {
        let pf = (i == 0).then_some(next);
        let c = (m - i).min(4);
        match c {
            1 => store(block::<R, 1, 4>(ws, [xr(i)], k, pf), out, i, ld),
            2 => store(block::<R, 2, 2>(ws, [xr(i), xr(i + 1)], k, pf), out, i, ld),
            3 => store(
                block::<R, 3, 2>(ws, [xr(i), xr(i + 1), xr(i + 2)], k, pf),
                out,
                i,
                ld,
            ),
            _ => store(
                block::<R, 4, 1>(ws, [xr(i), xr(i + 1), xr(i + 2), xr(i + 3)], k, pf),
                out,
                i,
                ld,
            ),
        }
        i += c;
    }
    R
}

/// A block's sums for input rows `i..i + C` into `out[(i + c) * ld + j]`.
///
/// # Safety
/// `out` valid for those writes (see [`tile`]).
#[inline(always)]
unsafe fn store<const R: usize, const C: usize>(
    v: [[f32; C]; R],
    out: *mut f32,
    i: usize,
    ld: usize,
) {
    for (j, row) in v.iter().enumerate() {
        for (c, &value) in row.iter().enumerate() {
            *out.add((i + c) * ld + j) = value;
        }
    }
}

/// `R` weight rows against `C` input rows over all of `k`: `U × R × C` accumulators (`U` interleaved
/// 16-wide steps), each loaded weight vector feeding `C` FMAs and each input vector `R`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::needless_range_loop)]
unsafe fn block<const R: usize, const C: usize, const U: usize>(
    w: [*const f32; R],
    x: [*const f32; C],
    k: usize,
    next: Option<[*const f32; R]>,
) -> [[f32; C]; R] {
    let mut acc = [[[_mm512_setzero_ps(); C]; R]; U];
    let mut at = 0;
    while at + 16 * U <= k {
        for u in 0..U {
            let i = at + 16 * u;
            // One line of each next row per 16 weights: the whole next group by the end of the pass.
            if let Some(next) = next {
                for p in next {
                    _mm_prefetch::<_MM_HINT_T1>(p.add(i).cast());
                }
            }
            let mut xv = [_mm512_setzero_ps(); C];
            for c in 0..C {
                xv[c] = _mm512_loadu_ps(x[c].add(i));
            }
            for r in 0..R {
                let wv = _mm512_loadu_ps(w[r].add(i));
                for c in 0..C {
                    acc[u][r][c] = _mm512_fmadd_ps(xv[c], wv, acc[u][r][c]);
                }
            }
        }
        at += 16 * U;
    }
    while at < k {
        let left = k - at;
        let mask: __mmask16 = if left >= 16 { !0 } else { (1u16 << left) - 1 };
        for r in 0..R {
            let wv = _mm512_maskz_loadu_ps(mask, w[r].add(at));
            for c in 0..C {
                let xv = _mm512_maskz_loadu_ps(mask, x[c].add(at));
                acc[0][r][c] = _mm512_fmadd_ps(xv, wv, acc[0][r][c]);
            }
        }
        at += 16;
    }
    let mut out = [[0f32; C]; R];
    for r in 0..R {
        for c in 0..C {
            let mut v = acc[0][r][c];
            for u in 1..U {
                v = _mm512_add_ps(v, acc[u][r][c]);
            }
            out[r][c] = _mm512_reduce_add_ps(v);
        }
    }
    out
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::model::cpu::test_values::random;

    /// Every block shape (1–4 input rows in each remainder, weight-row tails 1–3) and k below, at and
    /// past each unrolled stride, against an f64 reference — written into a block of a wider result
    /// and nowhere else.
    #[test]
    fn every_shape_matches_reference() {
        if !is_x86_feature_detected!("avx512f") {
            return;
        }
        for m in 1..=33 {
            for rows in [2, 3, 4, 5, 6, 8, 10] {
                for k in [1, 15, 16, 17, 32, 64, 65, 100] {
                    let x = random(m * k, (m * 100 + k) as u64);
                    let w = random(rows * k, (rows * 7 + k) as u64);
                    // Rows 1.. of the weight into columns 2.. of a wider result.
                    let ld = rows + 3;
                    let mut out = vec![f32::NAN; m * ld];
                    // SAFETY: AVX-512F checked above; shapes as documented.
                    unsafe { tile(&x, m, k, &w, 1, rows - 1, out.as_mut_ptr().add(2), ld) };
                    for i in 0..m {
                        assert!(out[i * ld].is_nan() && out[i * ld + 1].is_nan());
                        assert!(out[i * ld + rows + 1].is_nan() && out[i * ld + rows + 2].is_nan());
                    }
                    for r in 1..rows {
                        for i in 0..m {
                            let want: f64 = (0..k)
                                .map(|j| x[i * k + j] as f64 * w[r * k + j] as f64)
                                .sum();
                            let got = out[i * ld + r + 1] as f64;
                            assert!(
                                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "m={m} rows={rows} k={k} r={r} i={i}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
