//! AVX2 + FMA inner loops of one paged-attention task (one token, one cache head, the query heads sharing
//! it), for key and value sizes that are multiples of 8:
//! - scores 8 slots at a time: 8 dot products in registers, reduced together into one vector (one
//!   horizontal reduction per 8 scores instead of one per score);
//! - softmax with a vectorised `exp`; the division by the sum is applied once to the output;
//! - values summed in register tiles of up to 8 vectors: one value row load feeds every query head of the
//!   tile, and the rows ahead are prefetched (they are scattered over the cache like the keys).

use std::arch::x86_64::*;

use super::{prefetch, KvElem, Task};

/// How many slots ahead key and value rows are prefetched: far enough that a row coming from L3 or DRAM
/// arrives before the ~8–30 cycles per slot of work reach it.
const AHEAD: usize = 32;

/// Largest key size this path takes (the zero row standing in for a missing cache row has this length).
const MAX_DIM: usize = 1024;
static ZEROS: [f32; MAX_DIM] = [0.0; MAX_DIM];

/// A row of `len` zeros of a cache element (`len ≤ MAX_DIM`).
fn zero_row<E: KvElem>(len: usize) -> &'static [E] {
    debug_assert!(len <= MAX_DIM && std::mem::size_of::<E>() <= 4);
    // SAFETY: every KV element (f32, bf16, f16) is at most 4 bytes with alignment at most f32's, and its
    // all-zero bit pattern is +0; `len` of them fit in the MAX_DIM f32 zeros.
    unsafe { std::slice::from_raw_parts(ZEROS.as_ptr().cast::<E>(), len.min(MAX_DIM)) }
}

/// Whether [`attend`] handles these key and value sizes.
pub(super) fn supports(key_dim: usize, value_dim: usize) -> bool {
    key_dim > 0
        && value_dim > 0
        && key_dim.is_multiple_of(8)
        && value_dim.is_multiple_of(8)
        && key_dim <= MAX_DIM
}

/// Same contract as the portable `attend`: `dst` is `[heads in the group, value_dim]`.
///
/// # Safety
/// The CPU must support AVX2 and FMA, and `supports(key_dim, value_dim)` must hold.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn attend<E: KvElem>(task: &Task<'_, E>, dst: &mut [f32]) {
    let c = task.cache;
    let (kd, vd) = (c.key_dim, c.value_dim);
    let heads = dst.len() / vd;
    let n = task.visible.len();
    if n == 0 || heads == 0 {
        dst.fill(0.0);
        return;
    }
    // Scores, `[heads, n]`, 8 slots at a time (the last chunk padded with zero rows, its extra scores
    // dropped). Closures are avoided in these loops: they would not inherit this function's target
    // features, and so would not inline.
    let key_offset = task.kv_head * c.key_head_stride;
    // One buffer: the scores `[heads, n]`, then each head's 1 / (sum of its softmax numerators).
    let mut buf = vec![0f32; heads * (n + 1)];
    let (scores, inv) = buf.split_at_mut(heads * n);
    for j0 in (0..n).step_by(8) {
        let count = (n - j0).min(8);
        // A cache row, or zeros where a slot lies outside the buffer (never so for allocated slots).
        let mut rows: [&[E]; 8] = [zero_row(kd); 8];
        for (row, &slot) in rows.iter_mut().zip(&task.visible[j0..j0 + count]) {
            let base = slot as usize * c.key_stride + key_offset;
            if let Some(r) = c.keys.get(base..base + kd) {
                *row = r;
            }
        }
        for &ahead in task.visible.iter().skip(j0 + AHEAD).take(8) {
            prefetch(c.keys, ahead as usize * c.key_stride + key_offset, kd);
        }
        for (h, qh) in task.q.chunks_exact(kd).enumerate() {
            let s = dot8(qh, &rows);
            let s = _mm256_mul_ps(s, _mm256_set1_ps(task.scale));
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), s);
            scores[h * n + j0..h * n + j0 + count].copy_from_slice(&lanes[..count]);
        }
    }

    // Softmax numerators in place; each head's sum of them.
    for (row, inv) in scores.chunks_exact_mut(n).zip(inv.iter_mut()) {
        *inv = 1.0 / exp_in_place(row);
    }

    // Values: tiles of `heads_per_tile` heads × `M` vectors of 8 dimensions, each slot's row chunk loaded
    // once for the tile's heads.
    let mut d0 = 0;
    while d0 < vd {
        let width = vd - d0;
        if width >= 64 {
            value_tiles::<E, 8, 1>(task, scores, inv, d0, dst);
            d0 += 64;
        } else if width >= 32 {
            value_tiles::<E, 4, 2>(task, scores, inv, d0, dst);
            d0 += 32;
        } else if width >= 16 {
            value_tiles::<E, 2, 4>(task, scores, inv, d0, dst);
            d0 += 16;
        } else {
            value_tiles::<E, 1, 8>(task, scores, inv, d0, dst);
            d0 += 8;
        }
    }
}

/// `[q · rows[0], …, q · rows[7]]`; every row is at least `q.len()` long (a multiple of 8).
#[inline(always)]
unsafe fn dot8<E: KvElem>(q: &[f32], rows: &[&[E]; 8]) -> __m256 {
    let mut acc = [_mm256_setzero_ps(); 8];
    let kd = q.len();
    let mut d = 0;
    while d + 8 <= kd {
        let qv = _mm256_loadu_ps(q.as_ptr().add(d));
        for u in 0..8 {
            // SAFETY: each row holds `kd` floats (a cache row of the key size, or the zero row).
            let kv = E::load8(rows[u].as_ptr().add(d));
            acc[u] = _mm256_fmadd_ps(qv, kv, acc[u]);
        }
        d += 8;
    }
    hsum8(&acc)
}

/// The 8 horizontal sums of 8 vectors, as one vector: lane `u` = sum of `v[u]`'s lanes.
#[inline(always)]
unsafe fn hsum8(v: &[__m256; 8]) -> __m256 {
    let t0 = _mm256_hadd_ps(v[0], v[1]);
    let t1 = _mm256_hadd_ps(v[2], v[3]);
    let t2 = _mm256_hadd_ps(v[4], v[5]);
    let t3 = _mm256_hadd_ps(v[6], v[7]);
    // Lanes: [v0 v1 v2 v3 (low halves) | v0 v1 v2 v3 (high halves)], the same for v4..v7.
    let u0 = _mm256_hadd_ps(t0, t1);
    let u1 = _mm256_hadd_ps(t2, t3);
    let lo = _mm256_permute2f128_ps::<0x20>(u0, u1);
    let hi = _mm256_permute2f128_ps::<0x31>(u0, u1);
    _mm256_add_ps(lo, hi)
}

/// `row[j] = exp(row[j] − max(row))`; returns their sum.
#[inline(always)]
unsafe fn exp_in_place(row: &mut [f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let m = _mm256_set1_ps(max);
    let mut sum = _mm256_setzero_ps();
    let mut chunks = row.chunks_exact_mut(8);
    for c in &mut chunks {
        let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), m));
        _mm256_storeu_ps(c.as_mut_ptr(), e);
        sum = _mm256_add_ps(sum, e);
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
    let mut total: f32 = lanes.iter().sum();
    for x in chunks.into_remainder() {
        *x = (*x - max).exp();
        total += *x;
    }
    total
}

/// `e^x` for 8 lanes (relative error ~2e-7; inputs below −87 give ~1e-38 instead of underflowing): Cody–Waite
/// reduction `x = k·ln2 + r`, a degree-6 polynomial for `e^r` (Cephes' `expf` coefficients), scaled by `2^k`
/// through the exponent bits.
#[inline(always)]
pub(super) unsafe fn exp256(x: __m256) -> __m256 {
    let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
    let x = _mm256_min_ps(x, _mm256_set1_ps(88.0));
    let k = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let r2 = _mm256_mul_ps(r, r);
    let e = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(k),
        _mm256_set1_epi32(127),
    ));
    _mm256_mul_ps(e, _mm256_castsi256_ps(bits))
}

/// `dst[h, d0 .. d0 + 8M] = inv[h] · Σ_j p[h, j] · V[slot_j, d0 .. d0 + 8M]` for every head, `H` heads at
/// a time (each loaded value vector feeds `H` FMAs).
#[inline(always)]
unsafe fn value_tiles<E: KvElem, const M: usize, const H: usize>(
    task: &Task<'_, E>,
    scores: &[f32],
    inv: &[f32],
    d0: usize,
    dst: &mut [f32],
) {
    let c = task.cache;
    let vd = c.value_dim;
    let n = task.visible.len();
    let heads = inv.len();
    let value_offset = task.kv_head * c.value_head_stride;
    for h0 in (0..heads).step_by(H) {
        let tile = (heads - h0).min(H);
        let mut acc = [[_mm256_setzero_ps(); M]; H];
        for (j, &slot) in task.visible.iter().enumerate() {
            if h0 == 0 && d0 == 0 {
                if let Some(&ahead) = task.visible.get(j + AHEAD) {
                    prefetch(c.values, ahead as usize * c.value_stride + value_offset, vd);
                }
            }
            let base = slot as usize * c.value_stride + value_offset + d0;
            let Some(v) = c.values.get(base..base + 8 * M) else {
                continue;
            };
            let mut vv = [_mm256_setzero_ps(); M];
            for (m, x) in vv.iter_mut().enumerate() {
                // SAFETY: `v` holds 8·M elements.
                *x = E::load8(v.as_ptr().add(8 * m));
            }
            for (t, acc) in acc.iter_mut().enumerate().take(tile) {
                let w = _mm256_set1_ps(scores[(h0 + t) * n + j]);
                for m in 0..M {
                    acc[m] = _mm256_fmadd_ps(w, vv[m], acc[m]);
                }
            }
        }
        for (t, acc) in acc.iter().enumerate().take(tile) {
            let h = h0 + t;
            let scale = _mm256_set1_ps(inv[h]);
            let out = &mut dst[h * vd + d0..h * vd + d0 + 8 * M];
            for (m, a) in acc.iter().enumerate() {
                // SAFETY: `out` holds 8·M floats.
                _mm256_storeu_ps(out.as_mut_ptr().add(8 * m), _mm256_mul_ps(*a, scale));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_exp_matches_the_library_exp() {
        if !crate::model::cpu::simd::has_fma() {
            return;
        }
        let xs: Vec<f32> = (0..4000).map(|i| -95.0 + i as f32 * 0.0249).collect();
        for c in xs.chunks_exact(8) {
            let mut got = [0f32; 8];
            // SAFETY: AVX2 and FMA checked above.
            unsafe { _mm256_storeu_ps(got.as_mut_ptr(), exp256(_mm256_loadu_ps(c.as_ptr()))) };
            for (&x, &g) in c.iter().zip(&got) {
                let want = x.max(-87.0).exp();
                assert!(
                    (g - want).abs() <= 1e-6 * want,
                    "exp({x}) = {g}, want {want}"
                );
            }
        }
    }

    #[test]
    fn eight_horizontal_sums_land_in_their_lanes() {
        if !crate::model::cpu::simd::has_fma() {
            return;
        }
        let data: Vec<f32> = (0..64).map(|i| (i * i % 17) as f32).collect();
        let mut got = [0f32; 8];
        // SAFETY: AVX2 and FMA checked above; `data` holds 8 vectors.
        unsafe {
            let v: [__m256; 8] = std::array::from_fn(|u| _mm256_loadu_ps(data.as_ptr().add(8 * u)));
            _mm256_storeu_ps(got.as_mut_ptr(), hsum8(&v));
        }
        for (u, g) in got.iter().enumerate() {
            assert_eq!(*g, data[8 * u..8 * u + 8].iter().sum::<f32>());
        }
    }
}
