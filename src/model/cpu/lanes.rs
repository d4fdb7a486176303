//! `x · Wᵀ` for f32 weights and decode batches of [`MIN_ROWS`]–32 input rows on AVX-512 CPUs: the input
//! rows go across the vector lanes. `x` is transposed once per product into `[k, 16]` panels (one per 16
//! rows, zero-padded), and every weight element is broadcast into one FMA that serves all the rows of a
//! panel: sixteen weight rows (eight with two panels) accumulate at once, one lane per input row — no
//! horizontal sums; each block's sums go straight into the row-major `[m, n]` result.
//!
//! Why not the dot-product tiles of `super::simd` for these shapes: there each input row is a stream of
//! its own, 16 rows × 4 KiB of `x` pass through L1 again for every four weight rows, and a 16-row
//! projection runs at the L2's pace (~40% of the FMA peak). Here the panel is read once per sixteen
//! weight rows (a 64-byte line per 16 FMAs) and each weight line serves 16 FMAs from L1: the 16-row lm
//! head of the bench-shaped model (`benches/matmul` `matmul_wt/lm_head_49152x1024/streaming/16`) takes
//! 12.6 ms instead of 17.6. One panel runs at ~68% of the FMA peak in cache (a broadcast per FMA), two
//! at ~95% (each broadcast feeds two); an 8-lane (ymm) split of one panel measured no better.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// From this many input rows on, f32 products take this kernel: with fewer, too many lanes idle (8 rows
/// of a 16,384 × 1,024 weight: 4.4 ms here, 2.8 ms in the dot-product tiles).
pub(crate) const MIN_ROWS: usize = 12;

/// Input rows per panel: one zmm of f32.
const LANES: usize = 16;

/// The most input rows: two panels (16 accumulators, eight weight rows at a time).
pub(crate) const MAX_ROWS: usize = 2 * LANES;

/// Whether the CPU runs the kernel: AVX512-F.
#[cfg(target_arch = "x86_64")]
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn available() -> bool {
    false
}

/// An input `[m, k]` transposed into panels: for each `k`, the `m` values in lane order, zero-padded to
/// a whole number of 16-lane panels.
pub(crate) struct LaneMajor {
    data: Vec<f32>,
    m: usize,
    k: usize,
    panels: usize,
}

impl LaneMajor {
    /// `x` (`[m, k]`, row-major, `1 <= m <= MAX_ROWS`) in lane order.
    pub(crate) fn new(x: &[f32], m: usize, k: usize) -> Self {
        debug_assert!((1..=MAX_ROWS).contains(&m) && x.len() == m * k);
        let panels = m.div_ceil(LANES);
        let width = panels * LANES;
        let mut data = vec![0f32; k * width];
        // Row by row: sequential reads (sixteen rows read side by side sit 4 KiB apart, in one L1 set).
        for (i, row) in x.chunks_exact(k).enumerate() {
            for (j, &v) in row.iter().enumerate() {
                data[j * width + i] = v;
            }
        }
        Self { data, m, k, panels }
    }
}

/// `out[i * ld + (r - first)] = x[i] · w[r]` for the weight rows `first..first + rows` of `w` (`[n, k]`,
/// f32, row-major): a `[m, rows]` block of a row-major result with row stride `ld`. Rows after the block
/// (up to the end of `w`) are prefetched as it ends: a thread that takes several blocks in a row mostly
/// takes the next one.
///
/// # Safety
/// [`available`] must hold; `w.len()` is a multiple of `x.k` with `first + rows` rows at most, `rows <=
/// ld`, and `out` valid for writes at `i * ld + j` for every `i < x.m`, `j < rows`, with no other thread
/// touching those.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn tile(
    x: &LaneMajor,
    w: &[f32],
    first: usize,
    rows: usize,
    out: *mut f32,
    ld: usize,
) {
    let end = first + rows;
    let mut r = first;
    while r < end {
        let left = end - r;
        let at = out.add(r - first);
        r += if x.panels == 1 {
            match left {
                16.. => block::<1, 16>(x, w, r, at, ld),
                8.. => block::<1, 8>(x, w, r, at, ld),
                4.. => block::<1, 4>(x, w, r, at, ld),
                2 | 3 => block::<1, 2>(x, w, r, at, ld),
                _ => block::<1, 1>(x, w, r, at, ld),
            }
        } else {
            match left {
                8.. => block::<2, 8>(x, w, r, at, ld),
                4.. => block::<2, 4>(x, w, r, at, ld),
                2 | 3 => block::<2, 2>(x, w, r, at, ld),
                _ => block::<2, 1>(x, w, r, at, ld),
            }
        };
    }
}

/// Weight rows `r..r + R` against the `P` panels of `x`, written to `out[i * ld + j]`; returns `R`. The
/// next `R` rows of `w` (or its last ones again) are prefetched into L2 on the way: one line of each per
/// 16 values of `k`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::needless_range_loop)]
unsafe fn block<const P: usize, const R: usize>(
    x: &LaneMajor,
    w: &[f32],
    r: usize,
    out: *mut f32,
    ld: usize,
) -> usize {
    let (m, k) = (x.m, x.k);
    let width = P * LANES;
    let n = w.len() / k;
    let wp: [*const f32; R] = std::array::from_fn(|j| w.as_ptr().add((r + j) * k));
    let next: [*const f32; R] = std::array::from_fn(|j| w.as_ptr().add((r + R + j).min(n - 1) * k));
    let xp = x.data.as_ptr();
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    // Each weight row's next 16 values, copied together: broadcasts read them from one kilobyte of L1
    // (read in place, sixteen rows 4 KiB apart would share one L1 set and evict each other).
    let mut tile = [[0f32; LANES]; R];
    let mut at = 0;
    while at + LANES <= k {
        for p in next {
            _mm_prefetch::<_MM_HINT_T1>(p.add(at).cast());
        }
        copy(&wp, &mut tile, at);
        let tp = tile.as_ptr().cast::<f32>();
        for u in 0..LANES {
            step::<P, R>(xp, tp.add(u), LANES, width, at + u, &mut acc);
        }
        at += LANES;
    }
    while at < k {
        step::<P, R>(xp, wp[0].add(at), k, width, at, &mut acc);
        at += 1;
    }
    // Lane i of row j's accumulators is output (i, j): through a small buffer into the result's rows.
    let mut sums = [[[0f32; LANES]; P]; R];
    for j in 0..R {
        for p in 0..P {
            _mm512_storeu_ps(sums[j][p].as_mut_ptr(), acc[j][p]);
        }
    }
    for i in 0..m {
        let row = out.add(i * ld);
        for j in 0..R {
            *row.add(j) = sums[j][i / LANES][i % LANES];
        }
    }
    R
}

/// Each weight row's 16 values from `at` into one row of `tile`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn copy<const R: usize>(wp: &[*const f32; R], tile: &mut [[f32; LANES]; R], at: usize) {
    for (j, row) in tile.iter_mut().enumerate() {
        _mm512_storeu_ps(row.as_mut_ptr(), _mm512_loadu_ps(wp[j].add(at)));
    }
}

/// One value of `k` (`at`): the panels' inputs there times each weight row's element, row `j`'s at
/// `w.add(j * stride)`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::needless_range_loop)]
unsafe fn step<const P: usize, const R: usize>(
    xp: *const f32,
    w: *const f32,
    stride: usize,
    width: usize,
    at: usize,
    acc: &mut [[__m512; P]; R],
) {
    let mut xv = [_mm512_setzero_ps(); P];
    for p in 0..P {
        xv[p] = _mm512_loadu_ps(xp.add(at * width + p * LANES));
    }
    for j in 0..R {
        let b = _mm512_set1_ps(*w.add(j * stride));
        for p in 0..P {
            acc[j][p] = _mm512_fmadd_ps(xv[p], b, acc[j][p]);
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Every panel count, row-group tail and k tail against an f64 reference, written into a block of a
    /// wider result and nowhere else.
    #[test]
    fn every_shape_matches_reference() {
        if !available() {
            return;
        }
        for m in [1, 7, 8, 15, 16, 17, 24, 32] {
            for rows in [2, 3, 5, 8, 13, 16, 17, 18, 41] {
                for k in [1, 15, 16, 33, 64] {
                    let x = random(m * k, (m * 100 + k) as u64);
                    let w = random(rows * k, (rows * 7 + k) as u64);
                    // Rows 1.. of the weight into columns 2.. of a wider result.
                    let ld = rows + 3;
                    let mut out = vec![f32::NAN; m * ld];
                    let lanes = LaneMajor::new(&x, m, k);
                    // SAFETY: AVX-512F checked above; shapes as documented.
                    unsafe { tile(&lanes, &w, 1, rows - 1, out.as_mut_ptr().add(2), ld) };
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
