//! Paged attention computed in place on CPU f32 buffers: for every query token and head, dot products with
//! the keys of its sequence's cache slots (causal, optional sliding window), softmax, weighted sum of the
//! values. No per-sequence gathers, transposes or small tensor ops; rows run in parallel (rayon).
//! Used for GQA and for MLA's latent cache (where the "key" and the "value" are the same latent vector).

use half::{bf16, f16};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod avx2;

/// An element the KV cache holds: f32, or bf16 / f16 (`--kv-cache-dtype`), widened to f32 as it is read;
/// scores, softmax and sums stay f32.
#[cfg(target_arch = "x86_64")]
pub trait KvElem: super::simd::Load8 + 'static {}
/// An element the KV cache holds: f32, or bf16 / f16 (`--kv-cache-dtype`), widened to f32 as it is read.
#[cfg(not(target_arch = "x86_64"))]
pub trait KvElem: super::elem::Widen + 'static {}

impl KvElem for f32 {}
impl KvElem for bf16 {}
impl KvElem for f16 {}

/// One sequence's part of the batch.
pub struct SeqRows<'a> {
    pub query_start: usize,
    pub query_len: usize,
    /// Cache slots of positions `0..context_len`.
    pub context_slots: &'a [u32],
}

/// Where a row's keys and values live in the caches.
pub struct CacheView<'a, E = f32> {
    pub keys: &'a [E],
    /// Values buffer (may be the keys buffer, for MLA).
    pub values: &'a [E],
    /// Elements per slot in each buffer.
    pub key_stride: usize,
    pub value_stride: usize,
    /// Offset of head `g`'s key inside a slot is `g * key_head_stride` (0 for a latent shared by heads).
    pub key_head_stride: usize,
    pub value_head_stride: usize,
    /// Dimensions compared (queries have this length) and produced.
    pub key_dim: usize,
    pub value_dim: usize,
}

impl<'a, E: KvElem> CacheView<'a, E> {
    /// A GQA cache: each slot holds `kv_heads` rows of `head_dim` in `keys` and in `values`.
    pub fn per_head(keys: &'a [E], values: &'a [E], kv_heads: usize, head_dim: usize) -> Self {
        Self {
            keys,
            values,
            key_stride: kv_heads * head_dim,
            value_stride: kv_heads * head_dim,
            key_head_stride: head_dim,
            value_head_stride: head_dim,
            key_dim: head_dim,
            value_dim: head_dim,
        }
    }

    /// MLA's latent cache: each slot is one `key_dim` row shared by every head (the key: latent and rope
    /// part); the value is its first `value_dim` floats (the latent).
    pub fn latent(rows: &'a [E], key_dim: usize, value_dim: usize) -> Self {
        Self {
            keys: rows,
            values: rows,
            key_stride: key_dim,
            value_stride: key_dim,
            key_head_stride: 0,
            value_head_stride: 0,
            key_dim,
            value_dim,
        }
    }
}

/// `out[t, h, :] = softmax(q[t, h] · K[ctx] * scale + mask) · V[ctx]` for every row of every sequence.
/// `q` is `[T, heads, key_dim]` (flattened). Query heads `g * heads_per_kv .. (g + 1) * heads_per_kv`
/// share cache head `g` (HF's `repeat_kv` order; MLA: every head shares the one latent, so
/// `heads_per_kv == heads`). Work is split over (token, cache head); each task reads a key or value row
/// once for all the query heads that share it.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention<E: KvElem>(
    q: &[f32],
    heads: usize,
    heads_per_kv: usize,
    cache: &CacheView<'_, E>,
    seqs: &[SeqRows<'_>],
    scale: f32,
    window: Option<usize>,
    total_tokens: usize,
) -> Vec<f32> {
    let (kd, vd) = (cache.key_dim, cache.value_dim);
    let heads_per_kv = heads_per_kv.max(1);
    // Heads that do not split evenly into groups (never so for GQA or MLA) fall back to one per task.
    let group = if heads.is_multiple_of(heads_per_kv) {
        heads_per_kv
    } else {
        1
    };
    let mut out = vec![0f32; total_tokens * heads * vd];
    if out.is_empty() {
        return out;
    }
    // For every token: its sequence and its position in that sequence's context.
    let mut by_token: Vec<Option<(&SeqRows<'_>, usize)>> = vec![None; total_tokens];
    for s in seqs {
        for i in 0..s.query_len {
            if let Some(slot) = by_token.get_mut(s.query_start + i) {
                *slot = Some((s, s.context_slots.len() - s.query_len + i));
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    let (avx2, avx2_tiles) = {
        let fma = super::simd::has_fma();
        (fma, fma && avx2::supports(kd, vd))
    };
    // One task per (token, cache head): its heads' outputs are one contiguous `[group, vd]` slice.
    out.par_chunks_mut(group * vd)
        .enumerate()
        .for_each(|(task, dst)| {
            let per_token = heads / group;
            let (t, g) = (task / per_token, task % per_token);
            let Some((seq, pos)) = by_token[t] else {
                return;
            };
            let first = window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let task = Task {
                q: &q[t * heads * kd + g * group * kd..][..group * kd],
                cache,
                kv_head: g * group / heads_per_kv,
                visible: &seq.context_slots[first..=pos],
                scale,
            };
            #[cfg(target_arch = "x86_64")]
            if avx2_tiles {
                // SAFETY: the CPU has AVX2 and FMA, and the sizes suit the tiles (both checked above).
                unsafe { avx2::attend(&task, dst) };
                return;
            } else if avx2 {
                // SAFETY: the CPU has AVX2 and FMA (checked above at run time).
                unsafe { attend_avx2(&task, dst) };
                return;
            }
            attend(&task, dst);
        });
    out
}

/// How a layer's cache tensors hold keys and values (see [`CacheView`]).
#[derive(Clone, Copy, Debug)]
pub enum CacheShape {
    /// GQA: keys and values, `kv_heads` rows of `head_dim` per slot.
    PerHead { kv_heads: usize, head_dim: usize },
    /// MLA: one latent row of `key_dim` per slot, its first `value_dim` the value.
    Latent { key_dim: usize, value_dim: usize },
}

/// [`paged_attention`] over a layer's cache tensors read in place, in the dtype they hold (f32, or
/// bf16 / f16 with `--kv-cache-dtype`): `caches` is `[keys, values]` for GQA, `[latent]` for MLA.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention_in_cache(
    q: &[f32],
    heads: usize,
    heads_per_kv: usize,
    caches: &[&candle_core::Tensor],
    shape: CacheShape,
    seqs: &[SeqRows<'_>],
    scale: f32,
    window: Option<usize>,
    total_tokens: usize,
) -> crate::error::Result<Vec<f32>> {
    fn run<E: KvElem>(
        bufs: &[&[E]],
        shape: CacheShape,
        attend: impl FnOnce(&CacheView<'_, E>) -> Vec<f32>,
    ) -> crate::error::Result<Vec<f32>> {
        let view = match (shape, bufs) {
            (CacheShape::PerHead { kv_heads, head_dim }, [k, v]) => {
                CacheView::per_head(k, v, kv_heads, head_dim)
            }
            (CacheShape::Latent { key_dim, value_dim }, [rows]) => {
                CacheView::latent(rows, key_dim, value_dim)
            }
            _ => {
                return Err(crate::error::Error::Kv(
                    "cache tensors do not match the attention layout".into(),
                ))
            }
        };
        Ok(attend(&view))
    }
    use super::host::HostSlices;
    super::host::with_hosts(caches, |views| match views {
        HostSlices::F32(v) => run(&v, shape, |c| {
            paged_attention(q, heads, heads_per_kv, c, seqs, scale, window, total_tokens)
        }),
        HostSlices::Bf16(v) => run(&v, shape, |c| {
            paged_attention(q, heads, heads_per_kv, c, seqs, scale, window, total_tokens)
        }),
        HostSlices::F16(v) => run(&v, shape, |c| {
            paged_attention(q, heads, heads_per_kv, c, seqs, scale, window, total_tokens)
        }),
    })
}

/// One (token, cache head) of [`paged_attention`]: the query rows of the heads sharing the cache head.
struct Task<'a, E> {
    /// `[heads in the group, key_dim]`.
    q: &'a [f32],
    cache: &'a CacheView<'a, E>,
    kv_head: usize,
    /// Cache slots this token sees, oldest first.
    visible: &'a [u32],
    scale: f32,
}

/// [`attend`] compiled for AVX2 + FMA, so its loops vectorise 8 wide and the dot products inline.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2<E: KvElem>(task: &Task<'_, E>, dst: &mut [f32]) {
    attend(task, dst)
}

/// Scores of every head of the group against each visible key (each key row read once for the group),
/// softmax per head, then the probability-weighted sum of the value rows into `dst` (`[group, vd]`).
#[inline(always)]
fn attend<E: KvElem>(task: &Task<'_, E>, dst: &mut [f32]) {
    let c = task.cache;
    let (kd, vd) = (c.key_dim, c.value_dim);
    let hs = dst.len() / vd.max(1);
    let n = task.visible.len();
    let mut scores = vec![0f32; hs * n];
    let key_base = |slot: u32| slot as usize * c.key_stride + task.kv_head * c.key_head_stride;
    for (j, &slot) in task.visible.iter().enumerate() {
        // Key rows are scattered over the cache (a slot's row, then the next slot's a block away): ask for
        // a row a few slots ahead so its lines arrive while this one is scored.
        if let Some(&ahead) = task.visible.get(j + PREFETCH_AHEAD) {
            prefetch(c.keys, key_base(ahead), kd);
        }
        let base = key_base(slot);
        let k = &c.keys[base..base + kd];
        for (i, qh) in task.q.chunks_exact(kd).enumerate() {
            scores[i * n + j] = super::elem::dot_lanes(qh, k) * task.scale;
        }
    }
    for row in scores.chunks_exact_mut(n.max(1)) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for s in row.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|s| *s *= inv);
    }
    // Values: each head's output in chunks held in registers across all the slots (a running sum in
    // memory would make every slot wait for the previous slot's store); 64-wide chunks where the value
    // size allows (one pass over the slots per head for 64-dimensional heads), else 16-wide.
    let value_base =
        |slot: u32| slot as usize * c.value_stride + task.kv_head * c.value_head_stride;
    for (o, p) in dst.chunks_exact_mut(vd).zip(scores.chunks_exact(n.max(1))) {
        let mut d0 = 0;
        if vd.is_multiple_of(64) {
            while d0 < vd {
                weighted_sum::<E, 64>(
                    c.values,
                    task.visible,
                    p,
                    |s| value_base(s) + d0,
                    &mut o[d0..],
                );
                d0 += 64;
            }
        }
        while d0 + 16 <= vd {
            weighted_sum::<E, 16>(
                c.values,
                task.visible,
                p,
                |s| value_base(s) + d0,
                &mut o[d0..],
            );
            d0 += 16;
        }
        if d0 < vd {
            let tail = &mut o[d0..];
            tail.iter_mut().for_each(|x| *x = 0.0);
            for (&slot, &w) in task.visible.iter().zip(p) {
                let base = value_base(slot) + d0;
                for (x, &y) in tail.iter_mut().zip(&c.values[base..base + (vd - d0)]) {
                    *x += w * y.widen();
                }
            }
        }
    }
}

/// How many slots ahead [`attend`] prefetches key rows.
const PREFETCH_AHEAD: usize = 8;

/// Hints the CPU to bring `data[start..start + len]` into L1 (a no-op where out of range or not x86-64).
#[inline(always)]
fn prefetch<E>(data: &[E], start: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let Some(row) = data.get(start..start + len) else {
            return;
        };
        for line in row.chunks(64 / std::mem::size_of::<E>().max(1)) {
            // SAFETY: a prefetch is only a hint; the address lies inside `data`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (data, start, len);
}

/// `out[..C] = Σ_j w[j] · values[at(slot_j) ..][..C]`, the `C` sums kept in registers.
#[inline(always)]
fn weighted_sum<E: KvElem, const C: usize>(
    values: &[E],
    slots: &[u32],
    weights: &[f32],
    at: impl Fn(u32) -> usize,
    out: &mut [f32],
) {
    let mut acc = [0f32; C];
    for (&slot, &w) in slots.iter().zip(weights) {
        let base = at(slot);
        let Some(Ok(v)) = values.get(base..base + C).map(<&[E; C]>::try_from) else {
            continue;
        };
        for l in 0..C {
            acc[l] += w * v[l].widen();
        }
    }
    out[..C].copy_from_slice(&acc);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
                (x % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Softmax attention one (token, head) at a time, straight from the definition.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        q: &[f32],
        heads: usize,
        heads_per_kv: usize,
        cache: &CacheView<'_>,
        seqs: &[SeqRows<'_>],
        scale: f32,
        window: Option<usize>,
        total: usize,
    ) -> Vec<f32> {
        let (kd, vd) = (cache.key_dim, cache.value_dim);
        let mut out = vec![0f32; total * heads * vd];
        for s in seqs {
            for i in 0..s.query_len {
                let t = s.query_start + i;
                let pos = s.context_slots.len() - s.query_len + i;
                for h in 0..heads {
                    let g = h / heads_per_kv;
                    let qh = &q[(t * heads + h) * kd..][..kd];
                    let visible: Vec<u32> = (0..=pos)
                        .filter(|&j| window.is_none_or(|w| pos - j < w))
                        .map(|j| s.context_slots[j])
                        .collect();
                    let scores: Vec<f32> = visible
                        .iter()
                        .map(|&slot| {
                            let k = &cache.keys
                                [slot as usize * cache.key_stride + g * cache.key_head_stride..]
                                [..kd];
                            qh.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f32 = e.iter().sum();
                    for (p, &slot) in e.iter().zip(&visible) {
                        let v = &cache.values
                            [slot as usize * cache.value_stride + g * cache.value_head_stride..]
                            [..vd];
                        for d in 0..vd {
                            out[(t * heads + h) * vd + d] += p / sum * v[d];
                        }
                    }
                }
            }
        }
        out
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// A 7-token prefill and a decode over 20 scattered slots in one batch.
    fn batch(slots_b: &[u32]) -> Vec<SeqRows<'_>> {
        vec![
            SeqRows {
                query_start: 0,
                query_len: 7,
                context_slots: &[40, 41, 42, 43, 44, 45, 46],
            },
            SeqRows {
                query_start: 7,
                query_len: 1,
                context_slots: slots_b,
            },
        ]
    }

    #[test]
    fn grouped_query_heads_match_the_definition_with_and_without_a_window() {
        // Head sizes taking the 16-wide value chunks plus a tail, and the 64-wide chunks.
        for hd in [20, 128] {
            check_gqa(hd);
        }
    }

    fn check_gqa(hd: usize) {
        let (heads, kv_heads, slots) = (8, 2, 64);
        let keys = values(slots * kv_heads * hd, 1);
        let vals = values(slots * kv_heads * hd, 2);
        let cache = CacheView::per_head(&keys, &vals, kv_heads, hd);
        let slots_b: Vec<u32> = (0..20).map(|i| (i * 3 + 1) % 40).collect();
        let seqs = batch(&slots_b);
        let q = values(8 * heads * hd, 3);
        for window in [None, Some(5)] {
            let got = paged_attention(&q, heads, heads / kv_heads, &cache, &seqs, 0.3, window, 8);
            let want = reference(&q, heads, heads / kv_heads, &cache, &seqs, 0.3, window, 8);
            assert!(
                max_diff(&got, &want) < 1e-5,
                "head size {hd}, window {window:?}"
            );
        }
    }

    #[test]
    fn vector_tiles_match_the_definition_for_every_head_size_and_group() {
        // Key/value sizes taking each value tile (8·M wide, M = 8, 4, 2, 1) and their mixes; groups of 1
        // to 8 query heads; contexts of 20 and 7 slots (partial 8-slot chunks).
        for hd in [8, 16, 24, 40, 72, 136] {
            for (heads, kv_heads) in [(4, 4), (8, 4), (8, 2), (8, 1)] {
                let keys = values(64 * kv_heads * hd, hd as u32);
                let vals = values(64 * kv_heads * hd, hd as u32 + 1);
                let cache = CacheView::per_head(&keys, &vals, kv_heads, hd);
                let slots_b: Vec<u32> = (0..20).map(|i| (i * 5 + 2) % 64).collect();
                let seqs = batch(&slots_b);
                let q = values(8 * heads * hd, 9);
                let per_kv = heads / kv_heads;
                for window in [None, Some(11)] {
                    let got = paged_attention(&q, heads, per_kv, &cache, &seqs, 0.2, window, 8);
                    let want = reference(&q, heads, per_kv, &cache, &seqs, 0.2, window, 8);
                    let diff = max_diff(&got, &want);
                    assert!(diff < 1e-5, "hd {hd}, {heads}/{kv_heads} heads: {diff}");
                }
            }
        }
    }

    /// A bf16 or f16 cache (`--kv-cache-dtype`) is the f32 cache of its widened values: the vector tiles,
    /// the portable path's head sizes and MLA's shared latent all read it exactly so.
    #[test]
    fn half_precision_caches_equal_the_definition_on_their_widened_values() {
        fn check<E: KvElem + Copy>(from: fn(f32) -> E, to: fn(E) -> f32) {
            for hd in [8, 20, 72] {
                let (heads, kv_heads) = (8, 2);
                let keys: Vec<E> = values(64 * kv_heads * hd, 4)
                    .into_iter()
                    .map(from)
                    .collect();
                let vals: Vec<E> = values(64 * kv_heads * hd, 5)
                    .into_iter()
                    .map(from)
                    .collect();
                let (kw, vw): (Vec<f32>, Vec<f32>) = (
                    keys.iter().map(|&v| to(v)).collect(),
                    vals.iter().map(|&v| to(v)).collect(),
                );
                let slots_b: Vec<u32> = (0..20).map(|i| (i * 5 + 2) % 64).collect();
                let seqs = batch(&slots_b);
                let q = values(8 * heads * hd, 6);
                let half = CacheView::per_head(&keys, &vals, kv_heads, hd);
                let wide = CacheView::per_head(&kw, &vw, kv_heads, hd);
                let got = paged_attention(&q, heads, 4, &half, &seqs, 0.2, Some(9), 8);
                let want = reference(&q, heads, 4, &wide, &seqs, 0.2, Some(9), 8);
                assert!(max_diff(&got, &want) < 1e-5, "head size {hd}");
                let latent = CacheView::latent(&keys, hd, hd / 2);
                let wide_latent = CacheView::latent(&kw, hd, hd / 2);
                let got = paged_attention(&q, heads, heads, &latent, &seqs, 0.2, None, 8);
                let want = reference(&q, heads, heads, &wide_latent, &seqs, 0.2, None, 8);
                assert!(max_diff(&got, &want) < 1e-5, "latent, key size {hd}");
            }
        }
        check(bf16::from_f32, bf16::to_f32);
        check(f16::from_f32, f16::to_f32);
    }

    #[test]
    fn many_heads_sharing_a_latent_match_the_definition() {
        // MLA-like: 72 heads (many value tiles) share one latent row; key =
        // [latent 32 | rope 8], value = the latent.
        let (heads, stride) = (72, 40);
        let latent = values(64 * stride, 12);
        let cache = CacheView::latent(&latent, stride, 32);
        let slots_b: Vec<u32> = (0..33).map(|i| 63 - i).collect();
        let seqs = batch(&slots_b);
        let q = values(8 * heads * stride, 13);
        let got = paged_attention(&q, heads, heads, &cache, &seqs, 0.1, None, 8);
        let want = reference(&q, heads, heads, &cache, &seqs, 0.1, None, 8);
        assert!(max_diff(&got, &want) < 1e-5);
    }

    #[test]
    fn heads_that_do_not_split_into_groups_still_find_their_cache_head() {
        // 6 query heads, 4 per cache head: heads 0..4 read cache head 0, heads 4..6 cache head 1.
        let (heads, per_kv, hd) = (6, 4, 16);
        let keys = values(64 * 2 * hd, 6);
        let vals = values(64 * 2 * hd, 7);
        let cache = CacheView::per_head(&keys, &vals, 2, hd);
        let slots_b: Vec<u32> = (0..20).collect();
        let seqs = batch(&slots_b);
        let q = values(8 * heads * hd, 8);
        let got = paged_attention(&q, heads, per_kv, &cache, &seqs, 0.3, None, 8);
        let want = reference(&q, heads, per_kv, &cache, &seqs, 0.3, None, 8);
        assert!(max_diff(&got, &want) < 1e-5);
    }

    #[test]
    fn a_latent_shared_by_every_head_matches_the_definition() {
        // MLA's absorbed form: key = [latent | rope] (12), value = the latent's first 8, one "head".
        let (heads, stride) = (4, 12);
        let latent = values(64 * stride, 4);
        let cache = CacheView::latent(&latent, stride, 8);
        let slots_b: Vec<u32> = (0..20).map(|i| 63 - i).collect();
        let seqs = batch(&slots_b);
        let q = values(8 * heads * stride, 5);
        let got = paged_attention(&q, heads, heads, &cache, &seqs, 0.25, None, 8);
        let want = reference(&q, heads, heads, &cache, &seqs, 0.25, None, 8);
        assert!(max_diff(&got, &want) < 1e-5);
    }
}
