//! Paged attention computed in place on CPU f32 buffers: for every query token and head, dot products with
//! the keys of its sequence's cache slots (causal, optional sliding window), softmax, weighted sum of the
//! values. No per-sequence gathers, transposes or small tensor ops; rows run in parallel (rayon).
//! Used for GQA and for MLA's latent cache (where the "key" and the "value" are the same latent vector).

use candle_core::{CpuStorage, Layout, Storage, Tensor};
use rayon::prelude::*;

use super::cpu_matmul::dot_f32;

use crate::error::{Error, Result};

/// One sequence's part of the batch.
pub struct SeqRows<'a> {
    pub query_start: usize,
    pub query_len: usize,
    /// Cache slots of positions `0..context_len`.
    pub context_slots: &'a [u32],
}

/// Where a row's keys and values live in the caches.
pub struct CacheView<'a> {
    pub keys: &'a [f32],
    /// Values buffer (may be the keys buffer, for MLA).
    pub values: &'a [f32],
    /// Floats per slot in each buffer.
    pub key_stride: usize,
    pub value_stride: usize,
    /// Offset of head `g`'s key inside a slot is `g * key_head_stride` (0 for a latent shared by heads).
    pub key_head_stride: usize,
    pub value_head_stride: usize,
    /// Dimensions compared (queries have this length) and produced.
    pub key_dim: usize,
    pub value_dim: usize,
}

/// Borrow a contiguous f32 CPU tensor's data (attention, the streaming matmul's activations).
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout): (_, &Layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => f(&v[a..b]),
        _ => Err(Error::Batch(
            "host kernels need contiguous f32 CPU tensors".into(),
        )),
    }
}

/// `out[t, h, :] = softmax(q[t, h] · K[ctx] * scale + mask) · V[ctx]` for every row of every sequence.
/// `q` is `[T, heads, key_dim]` (flattened); `kv_head(h)` maps a query head to its cache head.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention(
    q: &[f32],
    heads: usize,
    kv_head: impl Fn(usize) -> usize + Sync,
    cache: &CacheView<'_>,
    seqs: &[SeqRows<'_>],
    scale: f32,
    window: Option<usize>,
    total_tokens: usize,
) -> Vec<f32> {
    let (kd, vd) = (cache.key_dim, cache.value_dim);
    let mut out = vec![0f32; total_tokens * heads * vd];
    // (token index, its sequence) for every query row.
    let mut rows = Vec::with_capacity(total_tokens);
    for s in seqs {
        for i in 0..s.query_len {
            rows.push((
                s.query_start + i,
                s,
                s.context_slots.len() - s.query_len + i,
            ));
        }
    }
    let chunks: Vec<(usize, &mut [f32])> = {
        let mut v = Vec::with_capacity(total_tokens);
        let mut rest = out.as_mut_slice();
        for t in 0..total_tokens {
            let (head, tail) = rest.split_at_mut(heads * vd);
            v.push((t, head));
            rest = tail;
        }
        v
    };
    let by_token: Vec<Option<(&SeqRows<'_>, usize)>> = {
        let mut m = vec![None; total_tokens];
        for (t, s, pos) in &rows {
            m[*t] = Some((*s, *pos));
        }
        m
    };
    chunks.into_par_iter().for_each(|(t, dst)| {
        let Some((seq, pos)) = by_token[t] else {
            return;
        };
        let first = window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let visible = &seq.context_slots[first..=pos];
        let mut scores = vec![0f32; visible.len()];
        for h in 0..heads {
            let qh = &q[(t * heads + h) * kd..(t * heads + h + 1) * kd];
            let g = kv_head(h);
            let mut max = f32::NEG_INFINITY;
            for (s, &slot) in scores.iter_mut().zip(visible) {
                let base = slot as usize * cache.key_stride + g * cache.key_head_stride;
                let k = &cache.keys[base..base + kd];
                *s = dot_f32(qh, k) * scale;
                max = max.max(*s);
            }
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let o = &mut dst[h * vd..(h + 1) * vd];
            o.iter_mut().for_each(|x| *x = 0.0);
            for (p, &slot) in scores.iter().zip(visible) {
                let w = p / sum;
                let base = slot as usize * cache.value_stride + g * cache.value_head_stride;
                for (x, v) in o.iter_mut().zip(&cache.values[base..base + vd]) {
                    *x += w * v;
                }
            }
        }
    });
    out
}
