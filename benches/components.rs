//! The pieces of a MoE layer on their own, each at the default model's shape and at the bench-shaped
//! model's (`scripts/make_bench_model.py`: hidden 1024, 16 heads over 4 KV heads of 64, 32 experts top-4 of
//! width 512), f32, on a compute-pool worker as the engine runs them:
//! - `router`: router logits → top-k ids and weights (softmax top-k; DeepSeek-V3's sigmoid + bias + groups
//!   at 256 experts, 8 groups, top-8, as Kimi K2 / DeepSeek-V3 ship);
//! - `experts`: the CPU experts backend (`GroupedExperts`) for a decode batch and a prompt's worth of tokens;
//! - `attention`: paged attention over the KV cache (`cpu_attention::paged_attention`), decode tokens at
//!   64 and 1,024 tokens of context, cache slots scattered in blocks of 16 as the allocator hands them out;
//!   and a whole 256- and 1,024-token prompt in one step.
//!
//! Run: `RAYON_NUM_THREADS=2 cargo bench --bench components`

use std::sync::atomic::AtomicU64;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use moeserve::engine::compute::on_compute_pool;
use moeserve::model::cpu::attention::{paged_attention, CacheView, SeqRows};
use moeserve::model::moe::experts::{ExpertsBackend, GroupedExperts};
use moeserve::model::moe::router::{route, Routes};
use moeserve::model::spec::RouterSpec;

const BLOCK: usize = 16;

/// Deterministic values in [-1, 1) (no RNG dependency, same data every run).
fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(97))
                >> 8;
            (x % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// Runs `f` repeatedly on a compute-pool worker.
fn on_pool<R>(b: &mut criterion::Bencher<'_>, mut f: impl FnMut() -> R + Send) {
    if on_compute_pool(|| b.iter(&mut f)).is_err() {
        panic!("compute pool unavailable");
    }
}

fn router(c: &mut Criterion) {
    let mut group = c.benchmark_group("router");
    let softmax = RouterSpec::SoftmaxTopK { renormalize: true };
    let v3 = RouterSpec::DeepseekV3 {
        n_group: 8,
        topk_group: 4,
        renormalize: true,
        scaling: 2.5,
    };
    let cases: [(&str, &RouterSpec, usize, usize); 3] = [
        ("softmax_8e_top2", &softmax, 8, 2),
        ("softmax_32e_top4", &softmax, 32, 4),
        ("deepseek_v3_256e_top8", &v3, 256, 8),
    ];
    for (name, spec, experts, top_k) in cases {
        let bias = values(experts, 7);
        let bias = matches!(spec, RouterSpec::DeepseekV3 { .. }).then_some(bias.as_slice());
        let load: Vec<AtomicU64> = (0..experts).map(|_| AtomicU64::new(0)).collect();
        for tokens in [1usize, 16, 256] {
            let logits =
                Tensor::from_vec(values(tokens * experts, 3), (tokens, experts), &Device::Cpu)
                    .unwrap_or_else(|e| panic!("{e}"));
            group.bench_with_input(BenchmarkId::new(name, tokens), &logits, |b, logits| {
                on_pool(b, || {
                    route(spec, logits, top_k, bias, &load, &Device::Cpu)
                        .unwrap_or_else(|e| panic!("{e}"))
                })
            });
        }
    }
    group.finish();
}

/// Routes where token `t`'s `j`-th choice is expert `(t + j·E/k) mod E`, equal weights: distinct experts
/// per token, and a batch spread over all of them as uniform routing spreads it.
fn spread_routes(tokens: usize, experts: usize, top_k: usize) -> Routes {
    let stride = (experts / top_k).max(1);
    let ids: Vec<u32> = (0..tokens)
        .flat_map(|t| (0..top_k).map(move |j| ((t + j * stride) % experts) as u32))
        .collect();
    let weights = vec![1.0 / top_k as f32; tokens * top_k];
    let tensor =
        |r: std::result::Result<Tensor, candle_core::Error>| r.unwrap_or_else(|e| panic!("{e}"));
    Routes {
        ids: tensor(Tensor::from_vec(ids, (tokens, top_k), &Device::Cpu)),
        weights: tensor(Tensor::from_vec(weights, (tokens, top_k), &Device::Cpu)),
    }
}

fn experts(c: &mut Criterion) {
    let mut group = c.benchmark_group("experts");
    // (name, experts, top-k, hidden, expert width)
    for (name, n, top_k, hidden, width) in [("default", 8, 2, 128, 64), ("bench", 32, 4, 1024, 512)]
    {
        let tensor = |seed: u32, shape: (usize, usize)| {
            Tensor::from_vec(values(shape.0 * shape.1, seed), shape, &Device::Cpu)
                .and_then(|t| t.affine(0.05, 0.0))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let weights = (0..n as u32)
            .map(|e| {
                (
                    tensor(3 * e, (width, hidden)),
                    tensor(3 * e + 1, (width, hidden)),
                    tensor(3 * e + 2, (hidden, width)),
                )
            })
            .collect();
        let backend = GroupedExperts::from_weights(weights).unwrap_or_else(|e| panic!("{e}"));
        for tokens in [1usize, 16, 64] {
            let x = tensor(1000 + tokens as u32, (tokens, hidden));
            let routes = spread_routes(tokens, n, top_k);
            group.bench_with_input(BenchmarkId::new(name, tokens), &x, |b, x| {
                on_pool(b, || {
                    backend
                        .forward(x, &routes)
                        .unwrap_or_else(|e| panic!("{e}"))
                })
            });
        }
    }
    group.finish();
}

/// A KV cache of `seqs` sequences of `context` tokens each, their blocks interleaved (sequence `s` owns
/// blocks `s, s + seqs, …`), as blocks come back from a busy allocator.
struct Cache {
    keys: Vec<f32>,
    values: Vec<f32>,
    slots: Vec<Vec<u32>>,
}

fn cache(seqs: usize, context: usize, row: usize) -> Cache {
    let blocks_per_seq = context.div_ceil(BLOCK);
    let total = seqs * blocks_per_seq * BLOCK;
    let slots = (0..seqs)
        .map(|s| {
            (0..context)
                .map(|p| (((p / BLOCK) * seqs + s) * BLOCK + p % BLOCK) as u32)
                .collect()
        })
        .collect();
    Cache {
        keys: values(total * row, 11),
        values: values(total * row, 13),
        slots,
    }
}

fn attention(c: &mut Criterion) {
    let mut group = c.benchmark_group("attention");
    // (name, query heads, KV heads, head dim)
    for (name, heads, kv_heads, hd) in [("default", 8, 4, 16), ("bench", 16, 4, 64)] {
        for context in [64usize, 1024] {
            for tokens in [1usize, 16] {
                let kv = cache(tokens, context, kv_heads * hd);
                let view = CacheView::per_head(&kv.keys, &kv.values, kv_heads, hd);
                // One decode token per sequence: the last position of its context.
                let seqs: Vec<SeqRows<'_>> = kv
                    .slots
                    .iter()
                    .enumerate()
                    .map(|(s, slots)| SeqRows {
                        query_start: s,
                        query_len: 1,
                        context_slots: slots,
                    })
                    .collect();
                let q = values(tokens * heads * hd, 17);
                let scale = 1.0 / (hd as f32).sqrt();
                let id = BenchmarkId::new(format!("{name}_ctx{context}"), tokens);
                group.bench_function(id, |b| {
                    on_pool(b, || {
                        paged_attention(
                            &q,
                            heads,
                            heads / kv_heads,
                            &view,
                            &seqs,
                            scale,
                            None,
                            tokens,
                        )
                    })
                });
            }
        }
        // A whole prompt of `len` tokens in one step (causal: token i sees slots 0..=i).
        for len in [256usize, 1024] {
            let kv = cache(1, len, kv_heads * hd);
            let view = CacheView::per_head(&kv.keys, &kv.values, kv_heads, hd);
            let seqs = [SeqRows {
                query_start: 0,
                query_len: len,
                context_slots: &kv.slots[0],
            }];
            let q = values(len * heads * hd, 19);
            let scale = 1.0 / (hd as f32).sqrt();
            group.bench_function(BenchmarkId::new(format!("{name}_prompt"), len), |b| {
                on_pool(b, || {
                    paged_attention(&q, heads, heads / kv_heads, &view, &seqs, scale, None, len)
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, router, experts, attention);
criterion_main!(benches);
