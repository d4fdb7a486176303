//! Q8_0 weights (blocks of 32 int8 with an f16 scale) against Q8_0-quantized activations, our own
//! kernel. At load, matrices whose row count is a multiple of 4 are interleaved four rows at a time
//! (per block: the four f16 scales, then the four rows' 32 quants — llama.cpp's `q8_0x4` repack idea):
//! one 8-byte load gives four scales, one activation block serves four rows, and the four rows' int32
//! partial sums are folded into one vector before the float conversion and the scale multiply. With
//! AVX512-VNNI the int8 products are one `vpdpbusd` per row-block on the weights shifted to unsigned
//! (xor 0x80 = +128), corrected by 128 · Σ activation quants per block; with AVX2 the sign trick and
//! `pmaddubsw` + `pmaddwd`. Other layouts go through a per-row path.

use half::f16;

/// Elements per block.
/// ggml's `nearest_int`: round half to even through the float adder (|v| < 2²²), no libm call, so the
/// quantizer loops vectorize.
#[inline(always)]
pub fn nearest_int(v: f32) -> i32 {
    let bits = (v + 12_582_912.0).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

pub const QK: usize = 32;
/// Bytes per weight block: f16 scale + 32 int8.
pub const BLOCK_BYTES: usize = 34;
/// Bytes per interleaved block of four rows: four f16 scales + 4 × 32 int8.
pub const GROUP_BLOCK_BYTES: usize = 4 * BLOCK_BYTES;

/// Activation rows quantized as llama.cpp's `quantize_row_q8_0`: per block of 32, `d = max|x| / 127`
/// (kept as its f16 rounding, what the dot products use), `q = round(x / d)`; plus Σq per block.
pub struct Q8Rows {
    pub quants: Vec<i8>,
    pub scales: Vec<f32>,
    pub sums: Vec<i32>,
    pub blocks_per_row: usize,
}

impl Q8Rows {
    pub fn quantize(x: &[f32], m: usize, k: usize) -> Self {
        let nb = k / QK;
        let mut quants = vec![0i8; m * nb * QK];
        let mut scales = vec![0f32; m * nb];
        let mut sums = vec![0i32; m * nb];
        for (((src, q), d), sum) in x
            .chunks_exact(QK)
            .zip(quants.chunks_exact_mut(QK))
            .zip(scales.iter_mut())
            .zip(sums.iter_mut())
        {
            // As ggml's AVX2 `quantize_row_q8_0` (what llama.cpp runs on x86): `id = 127 / max|x|`,
            // round half to even.
            let amax = src.iter().fold(0f32, |a, v| a.max(v.abs()));
            let dv = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            for (o, v) in q.iter_mut().zip(src) {
                *o = nearest_int(v * id) as i8;
            }
            *sum = q.iter().map(|&v| i32::from(v)).sum();
            *d = f16::from_f32(dv).to_f32();
        }
        Self {
            quants,
            scales,
            sums,
            blocks_per_row: nb,
        }
    }

    pub fn row(&self, i: usize) -> (&[i8], &[f32], &[i32]) {
        let nb = self.blocks_per_row;
        (
            &self.quants[i * nb * QK..(i + 1) * nb * QK],
            &self.scales[i * nb..(i + 1) * nb],
            &self.sums[i * nb..(i + 1) * nb],
        )
    }
}

/// Rows `4g..4g+4` of row-major Q8_0 bytes (`rows` rows of `nb` blocks) interleaved per block.
pub fn interleave4(rows_bytes: &[u8], rows: usize, nb: usize) -> Vec<u8> {
    let mut out = vec![0u8; rows * nb * BLOCK_BYTES];
    interleave4_into(rows_bytes, rows, nb, &mut out);
    out
}

/// [`interleave4`] into `out` (as long as the input).
pub fn interleave4_into(rows_bytes: &[u8], rows: usize, nb: usize, out: &mut [u8]) {
    let rb = nb * BLOCK_BYTES;
    for g in 0..rows / 4 {
        for b in 0..nb {
            let dst = &mut out[(g * nb + b) * GROUP_BLOCK_BYTES..][..GROUP_BLOCK_BYTES];
            for r in 0..4 {
                let src = &rows_bytes[(4 * g + r) * rb + b * BLOCK_BYTES..][..BLOCK_BYTES];
                dst[2 * r..2 * r + 2].copy_from_slice(&src[..2]);
                dst[8 + 32 * r..8 + 32 * (r + 1)].copy_from_slice(&src[2..]);
            }
        }
    }
}

/// Row `r` of interleaved bytes back in the plain block layout.
pub fn deinterleave_row(data: &[u8], r: usize, nb: usize) -> Vec<u8> {
    let (g, j) = (r / 4, r % 4);
    let mut out = Vec::with_capacity(nb * BLOCK_BYTES);
    for b in 0..nb {
        let src = &data[(g * nb + b) * GROUP_BLOCK_BYTES..][..GROUP_BLOCK_BYTES];
        out.extend_from_slice(&src[2 * j..2 * j + 2]);
        out.extend_from_slice(&src[8 + 32 * j..8 + 32 * (j + 1)]);
    }
    out
}

fn scale(bits: [u8; 2]) -> f32 {
    f16::from_le_bytes(bits).to_f32()
}

/// Portable: one plain weight row · one activation row.
pub fn dot_scalar(w: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    w.chunks_exact(BLOCK_BYTES)
        .zip(xq.chunks_exact(QK))
        .zip(xd)
        .map(|((b, q), d)| {
            let s: i32 = b[2..]
                .iter()
                .zip(q)
                .map(|(&wv, &xv)| i32::from(wv as i8) * i32::from(xv))
                .sum();
            scale([b[0], b[1]]) * d * s as f32
        })
        .sum()
}

/// Portable: one interleaved group (four rows) · one activation row.
pub fn group_scalar(w: &[u8], xq: &[i8], xd: &[f32]) -> [f32; 4] {
    let mut out = [0f32; 4];
    for ((blk, q), d) in w
        .chunks_exact(GROUP_BLOCK_BYTES)
        .zip(xq.chunks_exact(QK))
        .zip(xd)
    {
        for (r, o) in out.iter_mut().enumerate() {
            let s: i32 = blk[8 + 32 * r..8 + 32 * (r + 1)]
                .iter()
                .zip(q)
                .map(|(&wv, &xv)| i32::from(wv as i8) * i32::from(xv))
                .sum();
            *o += scale([blk[2 * r], blk[2 * r + 1]]) * d * s as f32;
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{GROUP_BLOCK_BYTES, QK};
    use std::arch::x86_64::*;

    /// Four rows' int32 partial sums (8 lanes each) folded to `[r0 r1 r2 r3 | r0 r1 r2 r3]` (low and high
    /// halves of each row's lanes).
    #[inline(always)]
    unsafe fn fold4(s: [__m256i; 4]) -> __m256i {
        let s01 = _mm256_hadd_epi32(s[0], s[1]);
        let s23 = _mm256_hadd_epi32(s[2], s[3]);
        _mm256_hadd_epi32(s01, s23)
    }

    macro_rules! group {
        ($name:ident, $features:literal, $vnni:expr) => {
            /// One interleaved group of four rows (`w`: `nb` group blocks) · one activation row.
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn $name(w: &[u8], xq: &[i8], xd: &[f32], xs: &[i32]) -> [f32; 4] {
                let nb = xd
                    .len()
                    .min(xs.len())
                    .min(w.len() / GROUP_BLOCK_BYTES)
                    .min(xq.len() / QK);
                let mut acc = _mm256_setzero_ps();
                let (wp, xp) = (w.as_ptr(), xq.as_ptr());
                let flip = _mm256_set1_epi8(-128);
                let ones = _mm256_set1_epi16(1);
                for b in 0..nb {
                    // SAFETY (whole function): b < nb keeps every load inside its slice.
                    let blk = wp.add(b * GROUP_BLOCK_BYTES);
                    let y = _mm256_loadu_si256(xp.add(b * QK) as *const __m256i);
                    let d4 = _mm_mul_ps(
                        _mm_cvtph_ps(_mm_loadl_epi64(blk as *const __m128i)),
                        _mm_set1_ps(*xd.get_unchecked(b)),
                    );
                    let mut s = [_mm256_setzero_si256(); 4];
                    for (r, sr) in s.iter_mut().enumerate() {
                        let x = _mm256_loadu_si256(blk.add(8 + 32 * r) as *const __m256i);
                        *sr = if $vnni {
                            _mm256_dpbusd_epi32(
                                _mm256_setzero_si256(),
                                _mm256_xor_si256(x, flip),
                                y,
                            )
                        } else {
                            let ax = _mm256_sign_epi8(x, x);
                            let sy = _mm256_sign_epi8(y, x);
                            _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), ones)
                        };
                    }
                    let mut sum = fold4(s);
                    if $vnni {
                        // Σ (w + 128)·x = Σ w·x + 128·Σx: take 128·Σx off the low halves.
                        let c = _mm_set1_epi32(128 * *xs.get_unchecked(b));
                        sum = _mm256_sub_epi32(sum, _mm256_zextsi128_si256(c));
                    }
                    let d8 = _mm256_set_m128(d4, d4);
                    acc = _mm256_fmadd_ps(d8, _mm256_cvtepi32_ps(sum), acc);
                }
                let lo = _mm256_castps256_ps128(acc);
                let hi = _mm256_extractf128_ps(acc, 1);
                let mut out = [0f32; 4];
                _mm_storeu_ps(out.as_mut_ptr(), _mm_add_ps(lo, hi));
                out
            }
        };
    }

    group!(group_avx2, "avx2,fma,f16c", false);
    group!(group_vnni, "avx2,fma,f16c,avx512vnni,avx512vl", true);

    macro_rules! group_x4 {
        ($name:ident, $features:literal, $vnni:expr) => {
            /// One interleaved group of four rows · four activation rows (prompt batches): the weights
            /// and their scales are loaded once per block for all four. `out[r][a]`.
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn $name(
                w: &[u8],
                xs: [(&[i8], &[f32], &[i32]); 4],
            ) -> [[f32; 4]; 4] {
                let mut nb = w.len() / GROUP_BLOCK_BYTES;
                for x in &xs {
                    nb = nb.min(x.1.len()).min(x.2.len()).min(x.0.len() / QK);
                }
                let mut acc = [_mm256_setzero_ps(); 4];
                let wp = w.as_ptr();
                let flip = _mm256_set1_epi8(-128);
                let ones = _mm256_set1_epi16(1);
                for b in 0..nb {
                    // SAFETY (whole function): b < nb keeps every load inside its slice.
                    let blk = wp.add(b * GROUP_BLOCK_BYTES);
                    let dw = _mm_cvtph_ps(_mm_loadl_epi64(blk as *const __m128i));
                    let mut wx = [_mm256_setzero_si256(); 4];
                    let mut wa = [_mm256_setzero_si256(); 4];
                    for r in 0..4 {
                        let x = _mm256_loadu_si256(blk.add(8 + 32 * r) as *const __m256i);
                        if $vnni {
                            wx[r] = _mm256_xor_si256(x, flip);
                        } else {
                            wx[r] = x;
                            wa[r] = _mm256_sign_epi8(x, x);
                        }
                    }
                    for (a, x) in xs.iter().enumerate() {
                        let y = _mm256_loadu_si256(x.0.as_ptr().add(b * QK) as *const __m256i);
                        let mut s = [_mm256_setzero_si256(); 4];
                        for r in 0..4 {
                            s[r] = if $vnni {
                                _mm256_dpbusd_epi32(_mm256_setzero_si256(), wx[r], y)
                            } else {
                                _mm256_madd_epi16(
                                    _mm256_maddubs_epi16(wa[r], _mm256_sign_epi8(y, wx[r])),
                                    ones,
                                )
                            };
                        }
                        let mut sum = fold4(s);
                        if $vnni {
                            let c = _mm_set1_epi32(128 * *x.2.get_unchecked(b));
                            sum = _mm256_sub_epi32(sum, _mm256_zextsi128_si256(c));
                        }
                        let d4 = _mm_mul_ps(dw, _mm_set1_ps(*x.1.get_unchecked(b)));
                        acc[a] = _mm256_fmadd_ps(
                            _mm256_set_m128(d4, d4),
                            _mm256_cvtepi32_ps(sum),
                            acc[a],
                        );
                    }
                }
                let mut out = [[0f32; 4]; 4];
                for a in 0..4 {
                    let mut v = [0f32; 4];
                    let lo = _mm256_castps256_ps128(acc[a]);
                    let hi = _mm256_extractf128_ps(acc[a], 1);
                    _mm_storeu_ps(v.as_mut_ptr(), _mm_add_ps(lo, hi));
                    for r in 0..4 {
                        out[r][a] = v[r];
                    }
                }
                out
            }
        };
    }

    group_x4!(group_x4_avx2, "avx2,fma,f16c", false);
    group_x4!(group_x4_vnni, "avx2,fma,f16c,avx512vnni,avx512vl", true);
}

/// Which kernel this CPU runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kernel {
    Scalar,
    Avx2,
    Vnni,
}

pub fn kernel() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    {
        let base = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        if base && is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
            return Kernel::Vnni;
        }
        if base {
            return Kernel::Avx2;
        }
    }
    Kernel::Scalar
}

/// Interleaved groups `w` (whole groups of four rows, `nb` blocks each) times every activation row of
/// `x`: `out` is weight-row major (`[4 · groups, m]`).
pub fn groups_times(kernel: Kernel, w: &[u8], nb: usize, x: &Q8Rows, m: usize, out: &mut [f32]) {
    let gb = nb * GROUP_BLOCK_BYTES;
    #[cfg(target_arch = "x86_64")]
    if m >= 2 && kernel != Kernel::Scalar {
        for (g, wg) in w.chunks_exact(gb.max(1)).enumerate() {
            for i0 in (0..m).step_by(4) {
                let xs = [0, 1, 2, 3].map(|a| x.row((i0 + a).min(m - 1)));
                // SAFETY: the CPU has the features `kernel()` checked.
                let d = unsafe {
                    match kernel {
                        Kernel::Vnni => x86::group_x4_vnni(wg, xs),
                        _ => x86::group_x4_avx2(wg, xs),
                    }
                };
                for (j, row) in d.iter().enumerate() {
                    for (a, &v) in row.iter().enumerate().take(m - i0) {
                        out[(4 * g + j) * m + i0 + a] = v;
                    }
                }
            }
        }
        return;
    }
    for (g, wg) in w.chunks_exact(gb.max(1)).enumerate() {
        for i in 0..m {
            let (xq, xd, xs) = x.row(i);
            let d = match kernel {
                // SAFETY: the CPU has the features `kernel()` checked.
                #[cfg(target_arch = "x86_64")]
                Kernel::Vnni => unsafe { x86::group_vnni(wg, xq, xd, xs) },
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => unsafe { x86::group_avx2(wg, xq, xd, xs) },
                _ => group_scalar(wg, xq, xd),
            };
            for (j, v) in d.into_iter().enumerate() {
                out[(4 * g + j) * m + i] = v;
            }
        }
    }
}

/// Plain rows `w` (`row_bytes` each) times every activation row: the path for row counts that are not
/// a multiple of four.
pub fn rows_times(w: &[u8], row_bytes: usize, x: &Q8Rows, m: usize, out: &mut [f32]) {
    for (r, wr) in w.chunks_exact(row_bytes.max(1)).enumerate() {
        for i in 0..m {
            let (xq, xd, _) = x.row(i);
            out[r * m + i] = dot_scalar(wr, xq, xd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::{QuantMatrix, QuantType};

    #[test]
    fn every_kernel_equals_the_plain_rows_and_the_dequantized_reference() {
        for (n, k, m) in [(12, 96, 3), (8, 64, 5), (4, 32, 1)] {
            let wv: Vec<f32> = (0..n * k)
                .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 50.0)
                .collect();
            let w = QuantMatrix::quantize(QuantType::Q8_0, n, k, &wv).expect("quantize");
            let xv: Vec<f32> = (0..m * k)
                .map(|i| ((i * 104729 % 97) as f32 - 48.0) / 17.0)
                .collect();
            let x = Q8Rows::quantize(&xv, m, k);
            let nb = k / QK;
            let plain = deinterleave_all(&w, n, nb);
            let mut rows = vec![0f32; n * m];
            rows_times(&plain, nb * BLOCK_BYTES, &x, m, &mut rows);
            let wd = w.dequantize();
            for r in 0..n {
                for i in 0..m {
                    let (xq, xd, _) = x.row(i);
                    let want: f32 = (0..k)
                        .map(|c| wd[r * k + c] * f32::from(xq[c]) * xd[c / QK])
                        .sum();
                    assert!((rows[r * m + i] - want).abs() < 1e-3 * want.abs().max(1.0));
                }
            }
            let inter = interleave4(&plain, n, nb);
            for (r, want) in plain.chunks(nb * BLOCK_BYTES).enumerate() {
                assert_eq!(deinterleave_row(&inter, r, nb), want);
            }
            for kernel in [Kernel::Scalar, kernel()] {
                let mut got = vec![0f32; n * m];
                groups_times(kernel, &inter, nb, &x, m, &mut got);
                for (a, b) in got.iter().zip(&rows) {
                    assert!(
                        (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                        "{kernel:?}: {a} vs {b}"
                    );
                }
            }
        }
    }

    fn deinterleave_all(w: &QuantMatrix, n: usize, nb: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|r| w.plain_row(r))
            .collect::<Vec<u8>>()
            .chunks(nb * BLOCK_BYTES)
            .flatten()
            .copied()
            .collect()
    }
}
