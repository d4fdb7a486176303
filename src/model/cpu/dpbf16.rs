//! `x · Wᵀ` for bf16 weights and two or more input rows (prompts, decode batches, experts) on CPUs with
//! AVX512-BF16: `vdpbf16ps` multiplies pairs of bf16 into f32 accumulators, 32 products per instruction,
//! straight from the weights as stored — no widened copy of the weight is written or read (`super::widen`
//! and the f32 tiles are the fallback). The activations become bf16 once per product: split into two
//! terms (`hi + lo`, f32-level accuracy, two instructions per pair: the f32 FMA rate without any
//! widening) or, under `--matmul-precision medium` in prompt-sized products, rounded (one instruction
//! per pair, twice the f32 rate; what a bf16 checkpoint's own framework computes in).
//!
//! Register blocks of four input rows × four weight rows (16 accumulators, 8 loads per 16
//! instructions) over the whole of `k`, then one transposing reduction per block whose four sums are
//! four neighbouring outputs of a row-major result, written in place. The first pass over a group of
//! weight rows prefetches the next group into L2: with few input rows (decode batches, experts that see
//! two or three tokens) the weights stream from memory and the kernel would otherwise wait on them.
//!
//! From two input rows on (`matmul::DPBF16_MIN_ROWS`): decode batches too, where the activations are
//! always split (never rounded) — without the f32 tiles' widening, 2–8 rows of a 16,384 × 1,024 weight
//! take 1.5× less time. One row stays with the f32 dot product (it is bound by the weight read alone).

use half::bf16;

/// Whether the CPU runs the kernel: AVX512-F, BW and BF16.
#[cfg(target_arch = "x86_64")]
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512bf16")
}

#[cfg(not(target_arch = "x86_64"))]
pub fn available() -> bool {
    false
}

/// Activations for the kernel: `x` rounded to bf16 (nearest even) — and, to keep f32 accuracy, the
/// rounding's remainder rounded again (`x ≈ hi + lo`, 16 significant bits, relative error ≤ 2⁻¹⁷).
pub struct Bf16Rows {
    hi: Vec<bf16>,
    lo: Option<Vec<bf16>>,
}

impl Bf16Rows {
    /// `x` as `hi` alone (`split` false: what a bf16 model computes in, one instruction per pair) or
    /// as `hi + lo` (two instructions per pair: the f32 result within ~1e-5 relative).
    pub fn new(x: &[f32], split: bool) -> Self {
        #[cfg(target_arch = "x86_64")]
        if available() {
            // SAFETY: AVX512-F/BF16 checked just above.
            return unsafe { x86::round(x, split) };
        }
        let hi: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        let lo = split.then(|| {
            x.iter()
                .zip(&hi)
                .map(|(&v, h)| bf16::from_f32(v - h.to_f32()))
                .collect()
        });
        Self { hi, lo }
    }
}

/// `out[i * ld + r] = x[i] · w[r]` for `x` `[m, k]` and `w` `[rows, k]` (row-major): a `[m, rows]`
/// block of a row-major result with row stride `ld`.
///
/// # Safety
/// [`available`] must hold; `x.len() == m * k`, `w.len() == rows * k`, `rows <= ld`, and `out` valid for
/// writes at `i * ld + r` for every `i < m`, `r < rows`, with no other thread touching those.
#[cfg(target_arch = "x86_64")]
pub unsafe fn tile(x: &Bf16Rows, m: usize, k: usize, w: &[bf16], out: *mut f32, ld: usize) {
    match &x.lo {
        None => x86::tile::<false>(&x.hi, &x.hi, m, k, w, out, ld),
        Some(lo) => x86::tile::<true>(&x.hi, lo, m, k, w, out, ld),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::bf16;

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn round(x: &[f32], split: bool) -> super::Bf16Rows {
        let mut hi = vec![bf16::ZERO; x.len()];
        let mut lo = vec![bf16::ZERO; if split { x.len() } else { 0 }];
        let mut i = 0;
        while i + 16 <= x.len() {
            let v = _mm512_loadu_ps(x.as_ptr().add(i));
            let h = _mm512_cvtneps_pbh(v);
            _mm256_storeu_si256(
                hi.as_mut_ptr().add(i).cast(),
                std::mem::transmute::<__m256bh, __m256i>(h),
            );
            if split {
                let back = _mm512_cvtpbh_ps(h);
                let l = _mm512_cvtneps_pbh(_mm512_sub_ps(v, back));
                _mm256_storeu_si256(
                    lo.as_mut_ptr().add(i).cast(),
                    std::mem::transmute::<__m256bh, __m256i>(l),
                );
            }
            i += 16;
        }
        for j in i..x.len() {
            hi[j] = bf16::from_f32(x[j]);
            if split {
                lo[j] = bf16::from_f32(x[j] - hi[j].to_f32());
            }
        }
        super::Bf16Rows {
            hi,
            lo: split.then_some(lo),
        }
    }

    /// Input rows per pass over the weight rows: 64 rows of bf16 (128 KiB at k = 1,024) stay in L2
    /// while four weight rows at a time stay in L1.
    const CHUNK_ROWS: usize = 64;

    /// `lo` is read only when `SPLIT`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn tile<const SPLIT: bool>(
        hi: &[bf16],
        lo: &[bf16],
        m: usize,
        k: usize,
        w: &[bf16],
        out: *mut f32,
        ld: usize,
    ) {
        let rows = w.len() / k.max(1);
        debug_assert_eq!(hi.len(), m * k);
        debug_assert!(!SPLIT || lo.len() == m * k);
        let (xp, lp, wp, op) = (
            hi.as_ptr().cast::<u16>(),
            lo.as_ptr().cast::<u16>(),
            w.as_ptr().cast::<u16>(),
            out,
        );
        for chunk in (0..m).step_by(CHUNK_ROWS) {
            let end = (chunk + CHUNK_ROWS).min(m);
            let mut r = 0;
            while r < rows {
                let nr = (rows - r).min(4);
                let mut i = chunk;
                while i < end {
                    let mr = (end - i).min(4);
                    let (xb, lb, wb) = (xp.add(i * k), lp.add(i * k), wp.add(r * k));
                    let ob = op.add(i * ld + r);
                    // The first pass over these weight rows brings them from memory: it prefetches
                    // the next rows; later passes find them in cache.
                    macro_rules! blk {
                        ($a:literal, $b:literal) => {
                            if i == chunk {
                                block::<$a, $b, SPLIT, true>(xb, lb, wb, k, ob, ld)
                            } else {
                                block::<$a, $b, SPLIT, false>(xb, lb, wb, k, ob, ld)
                            }
                        };
                    }
                    match (mr, nr) {
                        (4, 4) => blk!(4, 4),
                        (4, 3) => blk!(4, 3),
                        (4, 2) => blk!(4, 2),
                        (4, _) => blk!(4, 1),
                        (3, 4) => blk!(3, 4),
                        (3, 3) => blk!(3, 3),
                        (3, 2) => blk!(3, 2),
                        (3, _) => blk!(3, 1),
                        (2, 4) => blk!(2, 4),
                        (2, 3) => blk!(2, 3),
                        (2, 2) => blk!(2, 2),
                        (2, _) => blk!(2, 1),
                        (_, 4) => blk!(1, 4),
                        (_, 3) => blk!(1, 3),
                        (_, 2) => blk!(1, 2),
                        (_, _) => blk!(1, 1),
                    }
                    i += 4;
                }
                r += 4;
            }
        }
    }

    /// 32 bf16 from `p` (the first `mask` lanes; the rest zero).
    #[inline(always)]
    unsafe fn load(p: *const u16, mask: __mmask32) -> __m512bh {
        std::mem::transmute::<__m512i, __m512bh>(_mm512_maskz_loadu_epi16(mask, p.cast()))
    }

    /// One `MR` input rows × `NR` weight rows block over all of `k`; writes `out[i * ld + j]`.
    #[inline(always)]
    unsafe fn block<const MR: usize, const NR: usize, const SPLIT: bool, const PREFETCH: bool>(
        x: *const u16,
        lo: *const u16,
        w: *const u16,
        k: usize,
        out: *mut f32,
        ld: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); NR]; MR];
        let mut t = 0;
        while t < k {
            let mask: __mmask32 = if k - t >= 32 {
                !0
            } else {
                (1u32 << (k - t)) - 1
            };
            let mut ws = [load(w, 0); NR];
            for (j, wj) in ws.iter_mut().enumerate() {
                *wj = load(w.add(j * k + t), mask);
            }
            if PREFETCH {
                // The next four weight rows, a line each per step, into L2 (as the f32 tiles do):
                // with few input rows the weights stream from memory and the kernel waits on them.
                for j in 0..4 {
                    _mm_prefetch::<_MM_HINT_T1>(w.wrapping_add((NR + j) * k + t).cast());
                }
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let xi = load(x.add(i * k + t), mask);
                for (a, &wj) in row.iter_mut().zip(&ws) {
                    *a = _mm512_dpbf16_ps(*a, xi, wj);
                }
                if SPLIT {
                    let li = load(lo.add(i * k + t), mask);
                    for (a, &wj) in row.iter_mut().zip(&ws) {
                        *a = _mm512_dpbf16_ps(*a, li, wj);
                    }
                }
            }
            t += 32;
        }
        for (i, row) in acc.iter().enumerate() {
            if NR == 4 {
                _mm_storeu_ps(out.add(i * ld), reduce4(row[0], row[1], row[2], row[3]));
            } else {
                for (j, a) in row.iter().enumerate() {
                    *out.add(i * ld + j) = _mm512_reduce_add_ps(*a);
                }
            }
        }
    }

    /// The horizontal sums of four vectors, as `[Σa, Σb, Σc, Σd]`.
    #[inline(always)]
    unsafe fn reduce4(a: __m512, b: __m512, c: __m512, d: __m512) -> __m128 {
        // Per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] and the same for c, d.
        let ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
        let cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
        // Per lane: [a, b, c, d] partial sums.
        let lo = _mm512_castpd_ps(_mm512_unpacklo_pd(
            _mm512_castps_pd(ab),
            _mm512_castps_pd(cd),
        ));
        let hi = _mm512_castpd_ps(_mm512_unpackhi_pd(
            _mm512_castps_pd(ab),
            _mm512_castps_pd(cd),
        ));
        let s = _mm512_add_ps(lo, hi);
        // The four lanes summed.
        let upper = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(s)));
        let s8 = _mm256_add_ps(_mm512_castps512_ps256(s), upper);
        _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8))
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::model::cpu::test_values::random;

    #[test]
    fn rounding_is_nearest_even_like_half_and_the_split_keeps_16_bits() {
        let x = random(1000, 3);
        let r = Bf16Rows::new(&x, true);
        let lo = r.lo.as_ref().unwrap();
        for ((h, l), &v) in r.hi.iter().zip(lo).zip(&x) {
            assert_eq!(h.to_bits(), bf16::from_f32(v).to_bits());
            assert_eq!(l.to_bits(), bf16::from_f32(v - h.to_f32()).to_bits());
            let back = h.to_f32() + l.to_f32();
            assert!((back - v).abs() <= v.abs() * 2f32.powi(-16), "{v}: {back}");
        }
        assert!(Bf16Rows::new(&x, false).lo.is_none());
    }

    fn bits(v: &[f32]) -> Vec<bf16> {
        v.iter().map(|&v| bf16::from_f32(v)).collect()
    }

    /// Every block shape and `k` tail against an f64 reference: of the bf16-rounded operands (exact
    /// products; only the f32 accumulation order differs) without the split, of the f32 activations
    /// within the split's 2⁻¹⁶ with it.
    #[test]
    fn every_block_shape_matches_reference() {
        if !available() {
            eprintln!("no AVX512-BF16 here: kernel not exercised");
            return;
        }
        for split in [false, true] {
            for m in [1, 2, 3, 4, 5, 7, 9, 33, 70] {
                for rows in [1, 2, 3, 4, 5, 6, 7, 9] {
                    for k in [1, 31, 32, 33, 64, 100, 1024] {
                        let xf = random(m * k, (m * 1000 + rows * 10 + k) as u64);
                        let x = Bf16Rows::new(&xf, split);
                        let w = bits(&random(rows * k, 7));
                        // A wider result (stride rows + 3) whose other columns must stay untouched.
                        let ld = rows + 3;
                        let mut out = vec![f32::NAN; m * ld];
                        // SAFETY: `available` checked above; shapes as documented.
                        unsafe { tile(&x, m, k, &w, out.as_mut_ptr(), ld) };
                        for i in 0..m {
                            assert!(out[i * ld + rows..(i + 1) * ld].iter().all(|v| v.is_nan()));
                        }
                        for r in 0..rows {
                            for i in 0..m {
                                let xv = |t: usize| {
                                    if split {
                                        f64::from(xf[i * k + t])
                                    } else {
                                        f64::from(x.hi[i * k + t].to_f32())
                                    }
                                };
                                let want: f64 = (0..k)
                                    .map(|t| xv(t) * f64::from(w[r * k + t].to_f32()))
                                    .sum();
                                let scale: f64 = (0..k)
                                    .map(|t| (xv(t) * f64::from(w[r * k + t].to_f32())).abs())
                                    .sum();
                                let got = f64::from(out[i * ld + r]);
                                let tol = if split { 2f64.powi(-15) } else { 1e-6 } * scale + 1e-6;
                                assert!(
                                    (got - want).abs() <= tol,
                                    "split={split} m={m} rows={rows} k={k} ({i},{r}): {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
