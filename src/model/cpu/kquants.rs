//! Q4_K and Q6_K weights (super-blocks of 256) against Q8_K-quantized activations, our own x86 kernels
//! (the types of llama.cpp's Q4_K_M / Q5_K_M / Q6_K mixes; Q5_K and the rest go through candle's
//! `vec_dot`). Four weight rows share each activation load; f16 scales are widened in-line (F16C). Q4_K
//! follows ggml's AVX2 scheme (nibbles × int8 by `pmaddubsw`, 6-bit sub-block scales by `pmaddwd`,
//! the mins through the activation's per-32 sums); Q6_K takes its `-32` offset out through the
//! activation's per-16 sums once per block instead of once per 32 elements. With AVX512-VNNI the scale
//! multiply and the accumulation fuse into one `vpdpwssd`.

/// Elements per super-block.
pub(crate) const QK_K: usize = 256;
pub(crate) const Q4K_BYTES: usize = 144;
pub(crate) const Q6K_BYTES: usize = 210;

pub(crate) use super::q8_0::nearest_int;

/// Activation rows as ggml's `quantize_row_q8_K`: per 256, `d = max / -127` (max: the signed value of
/// largest magnitude), `q = round(x / d)`, and the sums of every 16 quants.
pub(crate) struct Q8KRows {
    pub quants: Vec<i8>,
    pub scales: Vec<f32>,
    pub bsums: Vec<i16>,
    pub blocks_per_row: usize,
}

impl Q8KRows {
    pub(crate) fn quantize(x: &[f32], m: usize, k: usize) -> Self {
        let nb = k / QK_K;
        let mut quants = vec![0i8; m * nb * QK_K];
        let mut scales = vec![0f32; m * nb];
        let mut bsums = vec![0i16; m * nb * 16];
        for (((src, q), d), sums) in x
            .chunks_exact(QK_K)
            .zip(quants.chunks_exact_mut(QK_K))
            .zip(scales.iter_mut())
            .zip(bsums.chunks_exact_mut(16))
        {
            let (mut max, mut amax) = (0f32, 0f32);
            for &v in src {
                if amax < v.abs() {
                    amax = v.abs();
                    max = v;
                }
            }
            if amax == 0.0 {
                continue;
            }
            let iscale = -127.0 / max;
            for (o, &v) in q.iter_mut().zip(src) {
                *o = nearest_int(iscale * v).min(127) as i8;
            }
            for (s, chunk) in sums.iter_mut().zip(q.chunks_exact(16)) {
                *s = chunk.iter().map(|&v| i16::from(v)).sum();
            }
            *d = 1.0 / iscale;
        }
        Self {
            quants,
            scales,
            bsums,
            blocks_per_row: nb,
        }
    }

    pub(crate) fn row(&self, i: usize) -> (&[i8], &[f32], &[i16]) {
        let nb = self.blocks_per_row;
        (
            &self.quants[i * nb * QK_K..(i + 1) * nb * QK_K],
            &self.scales[i * nb..(i + 1) * nb],
            &self.bsums[i * nb * 16..(i + 1) * nb * 16],
        )
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Q4K_BYTES, Q6K_BYTES, QK_K};
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn f16(p: *const u8) -> f32 {
        let bits = i32::from(u16::from_le_bytes([*p, *p.add(1)]));
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)))
    }

    #[inline(always)]
    unsafe fn hsum(x: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// 32 activation quants `c` (of 32) of a block.
    #[inline(always)]
    unsafe fn load(x: *const i8, c: usize) -> __m256i {
        _mm256_loadu_si256(x.add(32 * c) as *const __m256i)
    }

    /// Q6_K's two high bits at `shift`, moved above the four low ones.
    #[inline(always)]
    unsafe fn high2(bh: __m256i, m3: __m256i, shift: i32) -> __m256i {
        let v = match shift {
            0 => bh,
            2 => _mm256_srli_epi16(bh, 2),
            4 => _mm256_srli_epi16(bh, 4),
            _ => _mm256_srli_epi16(bh, 6),
        };
        _mm256_slli_epi16(_mm256_and_si256(v, m3), 4)
    }

    /// `pmaddwd` of 16-bit products by 16-bit scales, added to `acc`.
    macro_rules! scaled_add {
        (true, $acc:expr, $p16:expr, $scale:expr) => {
            _mm256_dpwssd_epi32($acc, $p16, $scale)
        };
        (false, $acc:expr, $p16:expr, $scale:expr) => {
            _mm256_add_epi32($acc, _mm256_madd_epi16($p16, $scale))
        };
    }

    /// Shuffles broadcasting Q4_K's i16 scale `s` (of the 8 in each lane) to all 16 lanes.
    #[inline(always)]
    unsafe fn q4k_shuffles() -> [__m256i; 8] {
        let mut shufs = [_mm256_setzero_si256(); 8];
        for (s, v) in shufs.iter_mut().enumerate() {
            let pair = _mm_set1_epi16((2 * s as i16) | ((2 * s as i16 + 1) << 8));
            *v = _mm256_set_m128i(pair, pair);
        }
        shufs
    }

    /// Shuffles picking Q6_K's i8 scales 2i (low 8 bytes) and 2i+1 (high 8), to widen to i16.
    #[inline(always)]
    unsafe fn q6k_shuffles() -> [__m128i; 8] {
        let mut shufs = [_mm_setzero_si128(); 8];
        for (i, v) in shufs.iter_mut().enumerate() {
            let (a, b) = (_mm_set1_epi8(2 * i as i8), _mm_set1_epi8(2 * i as i8 + 1));
            *v = _mm_unpacklo_epi64(a, b);
        }
        shufs
    }

    /// Q4_K's 12 scale bytes → `[8 scales, 8 mins]` as u8 (ggml's `utmp` unpacking).
    #[inline(always)]
    unsafe fn q4k_scales_mins(p: *const u8) -> __m256i {
        let (k1, k2, k3) = (0x3f3f_3f3fu32, 0x0f0f_0f0fu32, 0x0303_0303u32);
        let (u0, u1, u2) = (
            (p as *const u32).read_unaligned(),
            (p.add(4) as *const u32).read_unaligned(),
            (p.add(8) as *const u32).read_unaligned(),
        );
        let m3 = ((u2 >> 4) & k2) | (((u1 >> 6) & k3) << 4);
        let s1 = (u2 & k2) | (((u0 >> 6) & k3) << 4);
        let m2 = u1 & k1;
        let s0 = u0 & k1;
        _mm256_cvtepu8_epi16(_mm_set_epi32(m3 as i32, m2 as i32, s1 as i32, s0 as i32))
    }

    /// Blocks every slice of a four-row kernel call holds: the bound its loads stay within (none when the
    /// farthest row's first block does not fit in `w`).
    #[inline(always)]
    pub(super) fn blocks_in_reach(
        w: &[u8],
        rows: [usize; 4],
        stride: usize,
        block_bytes: usize,
        xq: &[i8],
        xd: &[f32],
        bsums: &[i16],
    ) -> usize {
        let last = rows.iter().copied().max().unwrap_or(0);
        xd.len().min(xq.len() / QK_K).min(bsums.len() / 16).min(
            w.len()
                .checked_sub(last + block_bytes)
                .map_or(0, |room| room / stride.max(1) + 1),
        )
    }

    macro_rules! q4k_rows4 {
        ($name:ident, $features:literal, $vnni:tt) => {
            /// Four Q4_K rows · one Q8_K activation row: block `b` of row `r` at
            /// `w[rows[r] + b · stride]` (plain rows: stride = block bytes; interleaved: 4 ×).
            #[inline(always)]
            unsafe fn $name(
                w: &[u8],
                rows: [usize; 4],
                stride: usize,
                xq: &[i8],
                xd: &[f32],
                bsums: &[i16],
            ) -> [f32; 4] {
                let nb = blocks_in_reach(w, rows, stride, Q4K_BYTES, xq, xd, bsums);
                let m4 = _mm256_set1_epi8(0xF);
                let mut acc = [_mm256_setzero_ps(); 4];
                let mut acc_m = [_mm_setzero_ps(); 4];
                let shufs = q4k_shuffles();
                for blk in 0..nb {
                    // SAFETY (whole function): blk < nb keeps every load inside its slice.
                    let dx = *xd.get_unchecked(blk);
                    let x = xq.as_ptr().add(blk * QK_K);
                    // Σx per 32 for the mins: pairs of per-16 sums.
                    let bs = _mm256_loadu_si256(bsums.as_ptr().add(blk * 16) as *const __m256i);
                    let q8s =
                        _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
                    for r in 0..4 {
                        let p = w.as_ptr().add(rows[r] + blk * stride);
                        let d = f16(p) * dx;
                        let dmin = f16(p.add(2)) * dx;
                        let sm = q4k_scales_mins(p.add(4));
                        let mins = _mm256_extracti128_si256(sm, 1);
                        let prod = _mm_madd_epi16(mins, q8s);
                        acc_m[r] = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m[r]);
                        let sc128 = _mm256_castsi256_si128(sm);
                        let scales = _mm256_set_m128i(sc128, sc128);
                        let q = p.add(16);
                        let mut sumi = _mm256_setzero_si256();
                        for j in 0..4 {
                            let bits = _mm256_loadu_si256(q.add(32 * j) as *const __m256i);
                            let lo = _mm256_and_si256(bits, m4);
                            let hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
                            let sl = _mm256_shuffle_epi8(scales, shufs[2 * j]);
                            let sh = _mm256_shuffle_epi8(scales, shufs[2 * j + 1]);
                            sumi = scaled_add!(
                                $vnni,
                                sumi,
                                _mm256_maddubs_epi16(lo, load(x, 2 * j)),
                                sl
                            );
                            sumi = scaled_add!(
                                $vnni,
                                sumi,
                                _mm256_maddubs_epi16(hi, load(x, 2 * j + 1)),
                                sh
                            );
                        }
                        acc[r] =
                            _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc[r]);
                    }
                }
                let mut out = [0f32; 4];
                for r in 0..4 {
                    let m = acc_m[r];
                    let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
                    let m = _mm_add_ss(m, _mm_movehdup_ps(m));
                    out[r] = hsum(acc[r]) - _mm_cvtss_f32(m);
                }
                out
            }
        };
    }

    macro_rules! q6k_rows4 {
        ($name:ident, $features:literal, $vnni:tt) => {
            /// Four Q6_K rows · one Q8_K activation row (block addressing as in the Q4_K kernel).
            #[inline(always)]
            unsafe fn $name(
                w: &[u8],
                rows: [usize; 4],
                stride: usize,
                xq: &[i8],
                xd: &[f32],
                bsums: &[i16],
            ) -> [f32; 4] {
                let nb = blocks_in_reach(w, rows, stride, Q6K_BYTES, xq, xd, bsums);
                let m4 = _mm256_set1_epi8(0xF);
                let m3 = _mm256_set1_epi8(3);
                let mut acc = [_mm256_setzero_ps(); 4];
                let shufs = q6k_shuffles();
                for blk in 0..nb {
                    // SAFETY (whole function): blk < nb keeps every load inside its slice.
                    let dx = *xd.get_unchecked(blk);
                    let x = xq.as_ptr().add(blk * QK_K);
                    let bs = _mm256_loadu_si256(bsums.as_ptr().add(blk * 16) as *const __m256i);
                    for r in 0..4 {
                        let p = w.as_ptr().add(rows[r] + blk * stride);
                        let (ql, qh, sc) = (p, p.add(128), p.add(192));
                        let d = f16(p.add(208)) * dx;
                        let scales = _mm_loadu_si128(sc as *const __m128i);
                        // The -32 offset: 32 · Σ_s sc_s · Σx_s over the 16 sub-blocks.
                        let sc16 = _mm256_cvtepi8_epi16(scales);
                        let offset = _mm256_madd_epi16(sc16, bs);
                        let mut sumi = _mm256_setzero_si256();
                        for half in 0..2 {
                            let b1 = _mm256_loadu_si256(ql.add(64 * half) as *const __m256i);
                            let b2 = _mm256_loadu_si256(ql.add(64 * half + 32) as *const __m256i);
                            let bh = _mm256_loadu_si256(qh.add(32 * half) as *const __m256i);
                            let q = [
                                _mm256_or_si256(_mm256_and_si256(b1, m4), high2(bh, m3, 0)),
                                _mm256_or_si256(_mm256_and_si256(b2, m4), high2(bh, m3, 2)),
                                _mm256_or_si256(
                                    _mm256_and_si256(_mm256_srli_epi16(b1, 4), m4),
                                    high2(bh, m3, 4),
                                ),
                                _mm256_or_si256(
                                    _mm256_and_si256(_mm256_srli_epi16(b2, 4), m4),
                                    high2(bh, m3, 6),
                                ),
                            ];
                            for c in 0..4 {
                                let s = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(
                                    scales,
                                    shufs[4 * half + c],
                                ));
                                let p16 = _mm256_maddubs_epi16(q[c], load(x, 4 * half + c));
                                sumi = scaled_add!($vnni, sumi, p16, s);
                            }
                        }
                        let total = _mm256_sub_epi32(sumi, _mm256_slli_epi32(offset, 5));
                        acc[r] =
                            _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(total), acc[r]);
                    }
                }
                [hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])]
            }
        };
    }

    macro_rules! q4k_row_x4 {
        ($name:ident, $features:literal, $vnni:tt) => {
            /// One Q4_K row (block `b` at `w[row + b · stride]`) · four Q8_K activation rows: the
            /// nibbles and scales are unpacked once per block for all four (prompt batches).
            #[inline(always)]
            unsafe fn $name(w: &[u8], row: usize, stride: usize, xs: [Act<'_>; 4]) -> [f32; 4] {
                let mut nb = w.len().saturating_sub(row + Q4K_BYTES) / stride.max(1) + 1;
                for a in &xs {
                    nb = nb.min(a.1.len()).min(a.0.len() / QK_K).min(a.2.len() / 16);
                }
                let m4 = _mm256_set1_epi8(0xF);
                let mut acc = [_mm256_setzero_ps(); 4];
                let mut acc_m = [_mm_setzero_ps(); 4];
                let shufs = q4k_shuffles();
                for blk in 0..nb {
                    // SAFETY (whole function): blk < nb keeps every load inside its slice.
                    let p = w.as_ptr().add(row + blk * stride);
                    let (dw, dminw) = (f16(p), f16(p.add(2)));
                    let sm = q4k_scales_mins(p.add(4));
                    let mins = _mm256_extracti128_si256(sm, 1);
                    let sc128 = _mm256_castsi256_si128(sm);
                    let scales = _mm256_set_m128i(sc128, sc128);
                    let q = p.add(16);
                    let mut lo = [_mm256_setzero_si256(); 4];
                    let mut hi = [_mm256_setzero_si256(); 4];
                    let mut sl = [_mm256_setzero_si256(); 4];
                    let mut sh = [_mm256_setzero_si256(); 4];
                    for j in 0..4 {
                        let bits = _mm256_loadu_si256(q.add(32 * j) as *const __m256i);
                        lo[j] = _mm256_and_si256(bits, m4);
                        hi[j] = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
                        sl[j] = _mm256_shuffle_epi8(scales, shufs[2 * j]);
                        sh[j] = _mm256_shuffle_epi8(scales, shufs[2 * j + 1]);
                    }
                    for a in 0..4 {
                        let (xq, xd, bsums) = xs[a];
                        let dx = *xd.get_unchecked(blk);
                        let x = xq.as_ptr().add(blk * QK_K);
                        let bs = _mm256_loadu_si256(bsums.as_ptr().add(blk * 16) as *const __m256i);
                        let q8s = _mm_hadd_epi16(
                            _mm256_castsi256_si128(bs),
                            _mm256_extracti128_si256(bs, 1),
                        );
                        let prod = _mm_madd_epi16(mins, q8s);
                        acc_m[a] =
                            _mm_fmadd_ps(_mm_set1_ps(dminw * dx), _mm_cvtepi32_ps(prod), acc_m[a]);
                        let mut sumi = _mm256_setzero_si256();
                        for j in 0..4 {
                            sumi = scaled_add!(
                                $vnni,
                                sumi,
                                _mm256_maddubs_epi16(lo[j], load(x, 2 * j)),
                                sl[j]
                            );
                            sumi = scaled_add!(
                                $vnni,
                                sumi,
                                _mm256_maddubs_epi16(hi[j], load(x, 2 * j + 1)),
                                sh[j]
                            );
                        }
                        acc[a] = _mm256_fmadd_ps(
                            _mm256_set1_ps(dw * dx),
                            _mm256_cvtepi32_ps(sumi),
                            acc[a],
                        );
                    }
                }
                let mut out = [0f32; 4];
                for a in 0..4 {
                    let m = acc_m[a];
                    let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
                    let m = _mm_add_ss(m, _mm_movehdup_ps(m));
                    out[a] = hsum(acc[a]) - _mm_cvtss_f32(m);
                }
                out
            }
        };
    }

    macro_rules! q6k_row_x4 {
        ($name:ident, $features:literal, $vnni:tt) => {
            /// One Q6_K row · four Q8_K activation rows (see the Q4_K one).
            #[inline(always)]
            unsafe fn $name(w: &[u8], row: usize, stride: usize, xs: [Act<'_>; 4]) -> [f32; 4] {
                let mut nb = w.len().saturating_sub(row + Q6K_BYTES) / stride.max(1) + 1;
                for a in &xs {
                    nb = nb.min(a.1.len()).min(a.0.len() / QK_K).min(a.2.len() / 16);
                }
                let m4 = _mm256_set1_epi8(0xF);
                let m3 = _mm256_set1_epi8(3);
                let mut acc = [_mm256_setzero_ps(); 4];
                let shufs = q6k_shuffles();
                for blk in 0..nb {
                    // SAFETY (whole function): blk < nb keeps every load inside its slice.
                    let p = w.as_ptr().add(row + blk * stride);
                    let (ql, qh, sc) = (p, p.add(128), p.add(192));
                    let dw = f16(p.add(208));
                    let scales = _mm_loadu_si128(sc as *const __m128i);
                    let sc16 = _mm256_cvtepi8_epi16(scales);
                    let mut q = [_mm256_setzero_si256(); 8];
                    let mut s = [_mm256_setzero_si256(); 8];
                    for half in 0..2 {
                        let b1 = _mm256_loadu_si256(ql.add(64 * half) as *const __m256i);
                        let b2 = _mm256_loadu_si256(ql.add(64 * half + 32) as *const __m256i);
                        let bh = _mm256_loadu_si256(qh.add(32 * half) as *const __m256i);
                        q[4 * half] = _mm256_or_si256(_mm256_and_si256(b1, m4), high2(bh, m3, 0));
                        q[4 * half + 1] =
                            _mm256_or_si256(_mm256_and_si256(b2, m4), high2(bh, m3, 2));
                        q[4 * half + 2] = _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(b1, 4), m4),
                            high2(bh, m3, 4),
                        );
                        q[4 * half + 3] = _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(b2, 4), m4),
                            high2(bh, m3, 6),
                        );
                        for c in 0..4 {
                            s[4 * half + c] =
                                _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, shufs[4 * half + c]));
                        }
                    }
                    for a in 0..4 {
                        let (xq, xd, bsums) = xs[a];
                        let dx = *xd.get_unchecked(blk);
                        let x = xq.as_ptr().add(blk * QK_K);
                        let bs = _mm256_loadu_si256(bsums.as_ptr().add(blk * 16) as *const __m256i);
                        let offset = _mm256_madd_epi16(sc16, bs);
                        let mut sumi = _mm256_setzero_si256();
                        for c in 0..8 {
                            sumi = scaled_add!(
                                $vnni,
                                sumi,
                                _mm256_maddubs_epi16(q[c], load(x, c)),
                                s[c]
                            );
                        }
                        let total = _mm256_sub_epi32(sumi, _mm256_slli_epi32(offset, 5));
                        acc[a] = _mm256_fmadd_ps(
                            _mm256_set1_ps(dw * dx),
                            _mm256_cvtepi32_ps(total),
                            acc[a],
                        );
                    }
                }
                [hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])]
            }
        };
    }

    /// One activation row: quants, per-block scales, per-16 sums.
    pub(super) type Act<'a> = (&'a [i8], &'a [f32], &'a [i16]);

    q4k_row_x4!(q4k_x4_avx2, "avx2,fma,f16c", false);
    q4k_row_x4!(q4k_x4_vnni, "avx2,fma,f16c,avx512vnni,avx512vl", true);
    q6k_row_x4!(q6k_x4_avx2, "avx2,fma,f16c", false);
    q6k_row_x4!(q6k_x4_vnni, "avx2,fma,f16c,avx512vnni,avx512vl", true);

    q4k_rows4!(q4k_avx2, "avx2,fma,f16c", false);
    q4k_rows4!(q4k_vnni, "avx2,fma,f16c,avx512vnni,avx512vl", true);
    q6k_rows4!(q6k_avx2, "avx2,fma,f16c", false);
    q6k_rows4!(q6k_vnni, "avx2,fma,f16c,avx512vnni,avx512vl", true);

    /// Which rows of an activation batch a range call writes: `out[r · m + i]` for weight rows `rows`.
    pub(super) struct Out<'a> {
        pub out: &'a mut [f32],
        pub m: usize,
    }

    /// Block `b` of row `r`: `offset(r) + b · stride`.
    #[inline(always)]
    fn offset(r: usize, row_bytes: usize, block: usize, interleaved: bool) -> usize {
        if interleaved {
            (r / 4) * 4 * row_bytes + (r % 4) * block
        } else {
            r * row_bytes
        }
    }

    macro_rules! ranges {
        ($decode:ident, $prompt:ident, $features:literal, $rows4:ident, $x4:ident, $block:expr) => {
            /// Every row `0..rows` · activation row `x` (decode): four weight rows per step.
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn $decode(
                w: &[u8],
                row_bytes: usize,
                interleaved: bool,
                x: Act<'_>,
                out: &mut [f32],
            ) {
                let rows = w.len() / row_bytes.max(1);
                let stride = if interleaved { 4 * $block } else { $block };
                let mut r = 0;
                while r < rows {
                    // A last group of fewer than four repeats its last row and keeps the real ones.
                    let offsets = [0, 1, 2, 3]
                        .map(|j| offset((r + j).min(rows - 1), row_bytes, $block, interleaved));
                    let d = $rows4(w, offsets, stride, x.0, x.1, x.2);
                    for (j, v) in d.into_iter().enumerate().take(rows - r) {
                        *out.get_unchecked_mut(r + j) = v;
                    }
                    r += 4;
                }
            }

            /// Every row `0..rows` · activation rows `xs` (prompt batches): each weight row unpacked once
            /// per block for four activation rows; `out` is `[rows, m]`.
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn $prompt(
                w: &[u8],
                row_bytes: usize,
                interleaved: bool,
                xs: &[Act<'_>],
                out: Out<'_>,
            ) {
                let rows = w.len() / row_bytes.max(1);
                let stride = if interleaved { 4 * $block } else { $block };
                let m = out.m;
                for r in 0..rows {
                    let row = offset(r, row_bytes, $block, interleaved);
                    let mut i0 = 0;
                    while i0 < m {
                        let pick = |a: usize| xs[(i0 + a).min(m - 1)];
                        let d = $x4(w, row, stride, [pick(0), pick(1), pick(2), pick(3)]);
                        for (a, v) in d.into_iter().enumerate().take(m - i0) {
                            *out.out.get_unchecked_mut(r * m + i0 + a) = v;
                        }
                        i0 += 4;
                    }
                }
            }
        };
    }

    ranges!(
        q4k_decode_avx2,
        q4k_prompt_avx2,
        "avx2,fma,f16c",
        q4k_avx2,
        q4k_x4_avx2,
        Q4K_BYTES
    );
    ranges!(
        q4k_decode_vnni,
        q4k_prompt_vnni,
        "avx2,fma,f16c,avx512vnni,avx512vl",
        q4k_vnni,
        q4k_x4_vnni,
        Q4K_BYTES
    );
    ranges!(
        q6k_decode_avx2,
        q6k_prompt_avx2,
        "avx2,fma,f16c",
        q6k_avx2,
        q6k_x4_avx2,
        Q6K_BYTES
    );
    ranges!(
        q6k_decode_vnni,
        q6k_prompt_vnni,
        "avx2,fma,f16c,avx512vnni,avx512vl",
        q6k_vnni,
        q6k_x4_vnni,
        Q6K_BYTES
    );
}

use super::q8_0::Kernel;
use crate::weights::QuantType;

/// Whether this module has a kernel for `ty` on a CPU with `kernel`.
pub(crate) fn serves(ty: QuantType, kernel: Kernel) -> bool {
    cfg!(target_arch = "x86_64")
        && kernel != Kernel::Scalar
        && matches!(ty, QuantType::Q4_K | QuantType::Q6_K)
}

/// Rows `w` of `ty` (`row_bytes` each; four rows interleaved block by block when `interleaved`) times
/// every activation row: `out` is `[rows, m]`. Only where [`serves`] said so.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rows_times(
    ty: QuantType,
    kernel: Kernel,
    w: &[u8],
    row_bytes: usize,
    interleaved: bool,
    x: &Q8KRows,
    m: usize,
    out: &mut [f32],
) {
    let rows = w.len() / row_bytes.max(1);
    if rows == 0 || m == 0 || out.len() < rows * m {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `serves` checked the CPU's features (`kernel` came from `q8_0::kernel()`); `out` holds
    // `rows · m` values (checked above).
    unsafe {
        use QuantType::Q4_K;
        if m == 1 {
            let a = x.row(0);
            match (ty, kernel) {
                (Q4_K, Kernel::Vnni) => x86::q4k_decode_vnni(w, row_bytes, interleaved, a, out),
                (Q4_K, _) => x86::q4k_decode_avx2(w, row_bytes, interleaved, a, out),
                (_, Kernel::Vnni) => x86::q6k_decode_vnni(w, row_bytes, interleaved, a, out),
                _ => x86::q6k_decode_avx2(w, row_bytes, interleaved, a, out),
            }
            return;
        }
        let xs: Vec<x86::Act<'_>> = (0..m).map(|i| x.row(i)).collect();
        let o = x86::Out { out, m };
        match (ty, kernel) {
            (Q4_K, Kernel::Vnni) => x86::q4k_prompt_vnni(w, row_bytes, interleaved, &xs, o),
            (Q4_K, _) => x86::q4k_prompt_avx2(w, row_bytes, interleaved, &xs, o),
            (_, Kernel::Vnni) => x86::q6k_prompt_vnni(w, row_bytes, interleaved, &xs, o),
            _ => x86::q6k_prompt_avx2(w, row_bytes, interleaved, &xs, o),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (ty, kernel, interleaved, x);
}

/// Test helper: `got` (`[n, m]`) equals the dequantized weights `wd` (`[n, k]`) times the dequantized
/// activations of `x`, up to f32 summation order.
#[cfg(test)]
pub(crate) fn assert_matches_dequantized(
    got: &[f32],
    wd: &[f32],
    x: &Q8KRows,
    n: usize,
    label: &str,
) {
    let k = x.blocks_per_row * QK_K;
    let m = got.len() / n.max(1);
    for r in 0..n {
        for i in 0..m {
            let (xq, xd, _) = x.row(i);
            let want: f32 = (0..k)
                .map(|c| wd[r * k + c] * f32::from(xq[c]) * xd[c / QK_K])
                .sum();
            let got = got[r * m + i];
            assert!(
                (got - want).abs() <= 2e-3 * want.abs().max(1.0),
                "{label} [{r},{i}]: {got} vs {want}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::QuantMatrix;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn kernel_bounds_never_reach_past_the_weights() {
        use super::x86::blocks_in_reach;
        let (xq, xd, bsums) = (vec![0i8; 4 * QK_K], vec![0f32; 4], vec![0i16; 64]);
        let w = vec![0u8; 2 * 144];
        // Rows 0 and 144, one block each: one block in reach.
        assert_eq!(
            blocks_in_reach(&w, [0, 0, 0, 144], 288, 144, &xq, &xd, &bsums),
            1
        );
        // A row starting past the end: nothing may be read (the subtraction used to floor at 1).
        assert_eq!(
            blocks_in_reach(&w, [0, 0, 0, 200], 288, 144, &xq, &xd, &bsums),
            0
        );
        // Plain rows of four blocks: limited by the activations' four blocks.
        let long = vec![0u8; 8 * 144];
        assert_eq!(
            blocks_in_reach(&long, [0, 0, 0, 0], 144, 144, &xq, &xd, &bsums),
            4
        );
    }

    /// Against the dequantized weights times the dequantized activations, exactly what the integer
    /// arithmetic computes (up to f32 summation order).
    #[test]
    fn q4_k_and_q6_k_rows_match_dequantized_products() {
        let kernel = super::super::q8_0::kernel();
        for ty in [QuantType::Q4_K, QuantType::Q6_K] {
            if !serves(ty, kernel) {
                continue;
            }
            for (n, m) in [(4, 1), (9, 3), (2, 2), (13, 1), (8, 2), (12, 5), (16, 1)] {
                let k = 512;
                let wv: Vec<f32> = (0..n * k)
                    .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 50.0)
                    .collect();
                let plain = QuantMatrix::quantize(ty, n, k, &wv).expect("quantize");
                let wd = plain.dequantize();
                let xv: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 104729 % 97) as f32 - 48.0) / 17.0)
                    .collect();
                let x = Q8KRows::quantize(&xv, m, k);
                let w = plain.into_kernel_layout();
                assert_eq!(w.interleaved() || w.x8(), n % 4 == 0);
                assert_eq!(w.x8(), ty == QuantType::Q4_K && n % 8 == 0);
                assert_eq!(w.dequantize(), wd, "{ty:?} layout round trip");
                let mut got = vec![0f32; n * m];
                if w.x8() {
                    let s32 = super::super::q4k_x8::sums32(&x);
                    super::super::q4k_x8::rows_times(
                        kernel,
                        w.data(),
                        k / QK_K,
                        &x,
                        &s32,
                        m,
                        &mut got,
                    );
                } else {
                    rows_times(
                        ty,
                        kernel,
                        w.data(),
                        w.row_bytes(),
                        w.interleaved(),
                        &x,
                        m,
                        &mut got,
                    );
                }
                assert_matches_dequantized(&got, &wd, &x, n, &format!("{ty:?} n={n} m={m}"));
            }
        }
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        for (v, want) in [
            (0.5, 0),
            (1.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (2.49, 2),
            (-126.7, -127),
            (127.0, 127),
        ] {
            assert_eq!(nearest_int(v), want, "{v}");
        }
    }

    #[test]
    fn q8_k_activations_equal_candles_reference_quantizer() {
        use candle_core::quantized::k_quants::BlockQ8K;
        use candle_core::quantized::GgmlType;
        let xv: Vec<f32> = (0..512)
            .map(|i| ((i * 104729 % 97) as f32 - 48.0) / 17.0)
            .collect();
        let ours = Q8KRows::quantize(&xv, 1, 512);
        let mut blocks = vec![BlockQ8K::zeros(); 2];
        BlockQ8K::from_float(&xv, &mut blocks);
        let mut back = vec![0f32; 512];
        BlockQ8K::to_float(&blocks, &mut back);
        for (c, v) in back.iter().enumerate() {
            assert_eq!(*v, f32::from(ours.quants[c]) * ours.scales[c / QK_K]);
        }
    }
}
