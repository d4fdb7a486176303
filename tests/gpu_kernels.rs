//! The CUDA kernels against plain references on random inputs (never zeros), with sizes that are not
//! multiples of the kernels' tiles and long prompts (more than 8,192 routed tokens). Needs a GPU:
//! `cargo test --release --features cuda --test gpu_kernels` on the device machine.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor};
use moeserve::cuda::{self, CacheHeads, ContextSeq, PagedContext};
use moeserve::model::moe::cuda_experts::CudaExperts;
use moeserve::model::moe::experts::{ExpertsBackend, GroupedExperts};
use moeserve::model::moe::router::route_row;
use moeserve::model::moe::{gpu_route_params, Routes};
use moeserve::model::spec::RouterSpec;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

fn gpu() -> Device {
    moeserve::device::open(moeserve::device::DeviceChoice::Cuda(0))
        .expect("these tests need a CUDA GPU")
}

fn uniform(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Largest |a − b| relative to the largest |b|.
fn rel_max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn kv_write_places_rows_at_their_slots() {
    let dev = gpu();
    let mut rng = StdRng::seed_from_u64(1);
    let (slots, heads, dim, tokens) = (101, 3, 20, 37);
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let before = uniform(&mut rng, slots * heads * dim);
        let cache = Tensor::from_vec(before.clone(), (slots, heads, dim), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let src = uniform(&mut rng, tokens * heads * dim);
        let mut order: Vec<u32> = (0..slots as u32).collect();
        order.shuffle(&mut rng);
        // Every fifth row pads the step: it writes nothing.
        let targets: Vec<u32> = order[..tokens]
            .iter()
            .enumerate()
            .map(|(t, &s)| if t % 5 == 2 { cuda::PAD_SLOT } else { s })
            .collect();
        let targets = &targets[..];
        let src_t = Tensor::from_vec(src.clone(), (tokens, heads, dim), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let slot_t = Tensor::from_slice(targets, tokens, &dev).unwrap();
        cuda::kv_write(&cache, &slot_t, &src_t).unwrap();
        // Expected: the old cache (rounded to dtype) with the written rows replaced.
        let mut want = host(
            &Tensor::new(before.as_slice(), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap(),
        );
        let src_r = host(
            &Tensor::new(src.as_slice(), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap(),
        );
        let row = heads * dim;
        for (t, &s) in targets.iter().enumerate() {
            if s != cuda::PAD_SLOT {
                want[s as usize * row..][..row].copy_from_slice(&src_r[t * row..][..row]);
            }
        }
        assert_eq!(host(&cache), want, "{dtype:?}");
    }
}

/// One launch zeroes the freed blocks of every layer (keys and values, 16-byte and 2-byte stores) and
/// leaves every other block as it was.
#[test]
fn freed_blocks_are_zeroed_in_one_launch() {
    use moeserve::kv::{KvCache, KvLayout};
    let dev = gpu();
    let mut rng = StdRng::seed_from_u64(9);
    let layouts = [
        (
            KvLayout {
                k: (4, 64),
                v: Some((4, 64)),
            },
            16,
            DType::BF16,
        ),
        (
            KvLayout {
                k: (1, 72),
                v: None,
            },
            16,
            DType::F32,
        ),
        // 3 slots of 5 bf16 values: 30-byte blocks take the 2-byte kernel.
        (
            KvLayout {
                k: (1, 5),
                v: Some((1, 5)),
            },
            3,
            DType::BF16,
        ),
    ];
    for (layout, bs, dtype) in layouts {
        let blocks = 9;
        let cache = KvCache::new(3, blocks, bs, layout, dtype, &dev).unwrap();
        let slots = blocks * bs;
        let all: Vec<u32> = (0..slots as u32).collect();
        let slot_t = Tensor::from_slice(&all, slots, &dev).unwrap();
        let fill = |rng: &mut StdRng, (h, d): (usize, usize)| {
            Tensor::from_vec(uniform(rng, slots * h * d), (slots, h, d), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
        };
        for layer in 0..3 {
            let k = fill(&mut rng, layout.k);
            let v = layout.v.map(|v| fill(&mut rng, v));
            cache.write(layer, &slot_t, &k, v.as_ref()).unwrap();
        }
        let before: Vec<Vec<f32>> = (0..3)
            .map(|l| host(cache.layer(l).0))
            .chain((0..3).filter_map(|l| cache.layer(l).1.map(host)))
            .collect();
        let freed = [1u32, 4, 8];
        cache.zero_blocks(&freed).unwrap();
        let after: Vec<Vec<f32>> = (0..3)
            .map(|l| host(cache.layer(l).0))
            .chain((0..3).filter_map(|l| cache.layer(l).1.map(host)))
            .collect();
        for (b, a) in before.iter().zip(&after) {
            let per_block = a.len() / blocks;
            for block in 0..blocks {
                let range = block * per_block..(block + 1) * per_block;
                if freed.contains(&(block as u32)) {
                    assert!(
                        a[range].iter().all(|&x| x == 0.0),
                        "{layout:?} block {block}"
                    );
                } else {
                    assert_eq!(a[range.clone()], b[range], "{layout:?} block {block} kept");
                }
            }
        }
        assert!(
            cache.zero_blocks(&[blocks as u32]).is_err(),
            "beyond the cache"
        );
    }
}

/// A random cache and sequences; returns (cache rows, per-sequence context slots).
struct Scene {
    seqs: Vec<(usize, Vec<u32>)>,
    rows: Vec<f32>,
    values: Vec<f32>,
}

fn scene(rng: &mut StdRng, shape: &[(usize, usize)], row: usize) -> Scene {
    let total: usize = shape.iter().map(|s| s.0).sum::<usize>() + 13;
    let mut free: Vec<u32> = (0..total as u32).collect();
    free.shuffle(rng);
    let mut seqs = Vec::new();
    for &(ctx, ql) in shape {
        let slots: Vec<u32> = free.drain(..ctx).collect();
        seqs.push((ql, slots));
    }
    Scene {
        seqs,
        rows: uniform(rng, total * row),
        values: uniform(rng, total * row),
    }
}

/// Plain attention: for each query token of each sequence over its visible positions.
#[allow(clippy::too_many_arguments)]
fn reference_attention(
    q: &[f32],
    s: &Scene,
    nh: usize,
    kd: usize,
    vd: usize,
    key_of: impl Fn(usize, usize) -> usize,
    value_of: impl Fn(usize, usize) -> usize,
    values: &[f32],
    scale: f32,
    window: Option<usize>,
) -> Vec<f32> {
    let mut out = Vec::new();
    let mut tok = 0;
    for (ql, slots) in &s.seqs {
        let ctx = slots.len();
        for i in 0..*ql {
            let end = ctx - ql + i + 1;
            let first = window.map_or(0, |w| end.saturating_sub(w));
            for h in 0..nh {
                let qh = &q[(tok * nh + h) * kd..][..kd];
                let scores: Vec<f32> = (first..end)
                    .map(|p| {
                        let k = &s.rows[key_of(slots[p] as usize, h)..][..kd];
                        qh.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale
                    })
                    .collect();
                let mx = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = scores.iter().map(|x| (x - mx).exp()).collect();
                let sum: f32 = e.iter().sum();
                for d in 0..vd {
                    let mut acc = 0f32;
                    for (j, p) in (first..end).enumerate() {
                        acc += e[j] * values[value_of(slots[p] as usize, h) + d];
                    }
                    out.push(acc / sum);
                }
            }
            tok += 1;
        }
    }
    out
}

fn context(s: &Scene, window: Option<usize>, dev: &Device) -> PagedContext {
    let seqs: Vec<ContextSeq<'_>> = s
        .seqs
        .iter()
        .map(|(ql, slots)| ContextSeq {
            query_len: *ql,
            context_slots: slots,
        })
        .collect();
    PagedContext::new(&seqs, window, dev).unwrap()
}

fn check_gqa(shape: &[(usize, usize)], nh: usize, nkv: usize, hd: usize, window: Option<usize>) {
    let dev = gpu();
    let mut rng = StdRng::seed_from_u64((nh * 1000 + hd + shape.len()) as u64);
    let s = scene(&mut rng, shape, nkv * hd);
    let tokens: usize = shape.iter().map(|x| x.1).sum();
    let q = uniform(&mut rng, tokens * nh * hd);
    let scale = 1.0 / (hd as f32).sqrt();
    let groups = nh / nkv;
    let want = reference_attention(
        &q,
        &s,
        nh,
        hd,
        hd,
        |slot, h| slot * nkv * hd + (h / groups) * hd,
        |slot, h| slot * nkv * hd + (h / groups) * hd,
        &s.values,
        scale,
        window,
    );
    let ctx = context(&s, window, &dev);
    let slots_total = s.rows.len() / (nkv * hd);
    for (dtype, tol) in [(DType::F32, 1e-4), (DType::BF16, 3e-2), (DType::F16, 5e-3)] {
        let t = |v: &[f32], shape: (usize, usize, usize)| {
            Tensor::from_slice(v, shape, &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
        };
        let keys = t(&s.rows, (slots_total, nkv, hd));
        let values = t(&s.values, (slots_total, nkv, hd));
        let heads = CacheHeads {
            keys: &keys,
            values: &values,
            key_dim: hd,
            value_dim: hd,
            key_slot_stride: nkv * hd,
            key_head_stride: hd,
            value_slot_stride: nkv * hd,
            value_head_stride: hd,
            heads_per_kv: groups,
        };
        let got = cuda::paged_attention(&t(&q, (tokens, nh, hd)), &heads, &ctx, scale).unwrap();
        assert_eq!(got.dims(), &[tokens, nh, hd]);
        let d = rel_max_diff(&host(&got), &want);
        assert!(
            d < tol,
            "GQA nh={nh} nkv={nkv} hd={hd} {shape:?} window={window:?} {dtype:?}: {d}"
        );
    }
}

#[test]
fn paged_attention_gqa_matches_reference() {
    // Decode only (long contexts split across blocks), then mixed prefill + decode.
    let decode = [(1, 1), (300, 1), (1000, 1), (4097, 1)];
    let mixed = [(1, 1), (77, 77), (530, 30), (1000, 1), (2049, 3)];
    check_gqa(&decode, 32, 4, 128, None);
    check_gqa(&mixed, 32, 4, 128, None);
    check_gqa(&decode, 4, 2, 16, None);
    check_gqa(&mixed, 4, 2, 16, None);
    check_gqa(&mixed, 12, 12, 64, Some(100));
    check_gqa(&decode, 64, 4, 128, Some(1000));
}

fn check_mla(shape: &[(usize, usize)], nh: usize, latent: usize, rope: usize) {
    let dev = gpu();
    let mut rng = StdRng::seed_from_u64((nh + latent + shape.len()) as u64);
    let kd = latent + rope;
    let s = scene(&mut rng, shape, kd);
    let tokens: usize = shape.iter().map(|x| x.1).sum();
    let q = uniform(&mut rng, tokens * nh * kd);
    let scale = 0.07;
    let want = reference_attention(
        &q,
        &s,
        nh,
        kd,
        latent,
        |slot, _| slot * kd,
        |slot, _| slot * kd,
        &s.rows,
        scale,
        None,
    );
    let ctx = context(&s, None, &dev);
    let slots_total = s.rows.len() / kd;
    for (dtype, tol) in [(DType::F32, 1e-4), (DType::BF16, 3e-2)] {
        let lat = Tensor::from_slice(&s.rows, (slots_total, 1, kd), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let heads = CacheHeads {
            keys: &lat,
            values: &lat,
            key_dim: kd,
            value_dim: latent,
            key_slot_stride: kd,
            key_head_stride: 0,
            value_slot_stride: kd,
            value_head_stride: 0,
            heads_per_kv: nh,
        };
        let qt = Tensor::from_slice(&q, (tokens, nh, kd), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let got = cuda::paged_attention(&qt, &heads, &ctx, scale).unwrap();
        let d = rel_max_diff(&host(&got), &want);
        assert!(
            d < tol,
            "MLA nh={nh} L={latent} R={rope} {shape:?} {dtype:?}: {d}"
        );
    }
}

#[test]
fn paged_attention_mla_matches_reference() {
    check_mla(&[(1, 1), (700, 1), (3000, 1)], 16, 512, 64);
    check_mla(&[(45, 45), (300, 2), (1, 1)], 16, 512, 64);
    check_mla(&[(45, 45), (300, 2), (1, 1)], 4, 32, 8);
}

fn check_routing(spec: RouterSpec, e: usize, k: usize, with_bias: bool) {
    let dev = gpu();
    let mut rng = StdRng::seed_from_u64((e * 31 + k) as u64);
    let t = 1003;
    let logits: Vec<f32> = uniform(&mut rng, t * e).iter().map(|x| x * 4.0).collect();
    let bias: Option<Vec<f32>> = with_bias.then(|| uniform(&mut rng, e));
    let params = gpu_route_params(&spec, e, k).unwrap();
    let bias_t = bias
        .as_ref()
        .map(|b| Tensor::from_slice(b, e, &dev).unwrap());
    let load = Tensor::zeros(e, DType::U32, &dev).unwrap();
    let (ids, weights) = cuda::route(
        &Tensor::from_slice(&logits, (t, e), &dev).unwrap(),
        &params,
        k,
        bias_t.as_ref(),
        Some(&load),
    )
    .unwrap();
    let ids: Vec<Vec<u32>> = ids.to_vec2().unwrap();
    let weights: Vec<Vec<f32>> = weights.to_vec2().unwrap();
    let mut counts = vec![0u32; e];
    for row in 0..t {
        let (want_ids, want_w) = route_row(&spec, &logits[row * e..][..e], k, bias.as_deref());
        assert_eq!(ids[row], want_ids, "{spec:?} row {row}");
        for (a, b) in weights[row].iter().zip(&want_w) {
            assert!(
                (a - b).abs() < 1e-5 * b.abs().max(1.0),
                "{spec:?} row {row}: {a} vs {b}"
            );
        }
        for &i in &want_ids {
            counts[i as usize] += 1;
        }
    }
    assert_eq!(load.to_vec1::<u32>().unwrap(), counts, "{spec:?} load");
}

#[test]
fn routing_matches_host_semantics() {
    check_routing(RouterSpec::SoftmaxTopK { renormalize: true }, 128, 8, false);
    check_routing(RouterSpec::SoftmaxTopK { renormalize: false }, 60, 4, false);
    check_routing(
        RouterSpec::DeepseekV2 {
            groups: Some((8, 3)),
            renormalize: false,
            scaling: 16.0,
        },
        64,
        6,
        false,
    );
    check_routing(
        RouterSpec::DeepseekV2 {
            groups: None,
            renormalize: true,
            scaling: 1.0,
        },
        64,
        6,
        false,
    );
    check_routing(
        RouterSpec::DeepseekV3 {
            n_group: 8,
            topk_group: 4,
            renormalize: true,
            scaling: 2.5,
        },
        256,
        8,
        true,
    );
    check_routing(
        RouterSpec::DeepseekV3 {
            n_group: 1,
            topk_group: 1,
            renormalize: true,
            scaling: 2.827,
        },
        384,
        8,
        true,
    );
}

#[test]
fn sort_groups_long_prompts_by_expert() {
    let dev = gpu();
    let mut rng = StdRng::seed_from_u64(5);
    let (t, k, e) = (9001, 8, 128);
    let ids: Vec<u32> = (0..t * k).map(|_| rng.random_range(0..e as u32)).collect();
    let sorted = cuda::sort_by_expert(&Tensor::from_slice(&ids, (t, k), &dev).unwrap(), e).unwrap();
    let places: Vec<u32> = sorted.assignments.to_vec1().unwrap();
    let experts: Vec<u32> = sorted.experts.to_vec1().unwrap();
    let offsets: Vec<u32> = sorted.offsets.to_vec1().unwrap();
    let mut seen = vec![false; t * k];
    for (j, (&a, &x)) in places.iter().zip(&experts).enumerate() {
        assert_eq!(ids[a as usize], x, "place {j}");
        assert!(!seen[a as usize], "assignment {a} twice");
        seen[a as usize] = true;
        assert!(offsets[x as usize] as usize <= j && j < offsets[x as usize + 1] as usize);
    }
    assert!(seen.iter().all(|s| *s));
    assert_eq!(offsets[e] as usize, t * k);
}

/// Relative difference of a GPU experts backend from the f32 reference on random tokens (rounded to
/// `dtype`, the GPU's activations) routed to `k` distinct experts of `e` each; `shape` is (tokens,
/// hidden, e, k).
fn experts_diff(
    rng: &mut StdRng,
    gpu_experts: &dyn ExpertsBackend,
    reference: &GroupedExperts,
    (tokens, hidden, e, k): (usize, usize, usize, usize),
    dtype: DType,
) -> f32 {
    let dev = gpu();
    let x = Tensor::from_vec(
        uniform(rng, tokens * hidden),
        (tokens, hidden),
        &Device::Cpu,
    )
    .unwrap()
    .to_dtype(dtype)
    .unwrap()
    .to_dtype(DType::F32)
    .unwrap();
    let mut ids = Vec::new();
    let mut wts = Vec::new();
    for _ in 0..tokens {
        let mut all: Vec<u32> = (0..e as u32).collect();
        all.shuffle(rng);
        ids.extend_from_slice(&all[..k]);
        wts.extend((0..k).map(|_| rng.random_range(0.1f32..0.6)));
    }
    let routes = |d: &Device| Routes {
        ids: Tensor::from_slice(&ids, (tokens, k), d).unwrap(),
        weights: Tensor::from_slice(&wts, (tokens, k), d).unwrap(),
    };
    let want = host(&reference.forward(&x, &routes(&Device::Cpu)).unwrap());
    let got = gpu_experts
        .forward(
            &x.to_device(&dev).unwrap().to_dtype(dtype).unwrap(),
            &routes(&dev),
        )
        .unwrap();
    assert_eq!(got.dims(), &[tokens, hidden]);
    rel_max_diff(&host(&got), &want)
}

fn check_experts(tokens: usize, dtype: DType) {
    check_experts_shaped(tokens, dtype, 256, 96);
}

fn check_experts_shaped(tokens: usize, dtype: DType, hidden: usize, inter: usize) {
    let dev = gpu();
    let mut rng = StdRng::seed_from_u64(tokens as u64);
    let (e, k) = (16, 4);
    let w = |rng: &mut StdRng, a: usize, b: usize| -> Tensor {
        let v: Vec<f32> = uniform(rng, a * b).iter().map(|x| x * 0.2).collect();
        // Rounded to the GPU dtype so both sides hold the same weights.
        Tensor::from_vec(v, (a, b), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    };
    let weights: Vec<(Tensor, Tensor, Tensor)> = (0..e)
        .map(|_| {
            (
                w(&mut rng, inter, hidden),
                w(&mut rng, inter, hidden),
                w(&mut rng, hidden, inter),
            )
        })
        .collect();
    let on_gpu: Vec<(Tensor, Tensor, Tensor)> = weights
        .iter()
        .map(|(g, u, d)| {
            let m = |x: &Tensor| x.to_device(&dev).unwrap().to_dtype(dtype).unwrap();
            (m(g), m(u), m(d))
        })
        .collect();
    let reference = GroupedExperts::from_weights(weights).unwrap();
    let gpu_experts = CudaExperts::from_weights(on_gpu).unwrap();
    let d = experts_diff(
        &mut rng,
        &gpu_experts,
        &reference,
        (tokens, hidden, e, k),
        dtype,
    );
    assert!(d < 2e-2, "experts {tokens} tokens {dtype:?}: {d}");
}

#[test]
fn grouped_experts_match_reference() {
    // Decode sizes take the streaming kernel; bf16 from 16 assignments per expert (64 tokens here)
    // candle's tensor-core GEMM.
    for tokens in [1, 5, 33, 700] {
        check_experts(tokens, DType::BF16);
    }
    check_experts(21, DType::F16);
    check_experts(300, DType::F16);
    check_experts(7, DType::F32);
    // A hidden size off the 16-byte vector width: the one-element gate/up (SwiGLU) kernels.
    check_experts_shaped(9, DType::BF16, 250, 96);
    check_experts_shaped(9, DType::F32, 250, 98);
    // More than 8,192 routed tokens (2,100 × top-4).
    check_experts(2100, DType::BF16);
    check_experts(2100, DType::F32);
}

/// The fused residual add + RMSNorm against candle's add and rms_norm on the same GPU inputs.
#[test]
fn add_rms_norm_matches_candle_ops() {
    let dev = gpu();
    let mut rng = StdRng::seed_from_u64(11);
    for (t, h) in [(1, 2048), (5, 7168), (64, 2048), (3, 100)] {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let mk = |rng: &mut StdRng, shape: &[usize]| {
                let n = shape.iter().product();
                Tensor::from_vec(uniform(rng, n), shape, &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            };
            let (x, d, w) = (
                mk(&mut rng, &[t, h]),
                mk(&mut rng, &[t, h]),
                mk(&mut rng, &[h]),
            );
            let (sum, normed) = cuda::add_rms_norm(&x, &d, &w, 1e-6).unwrap();
            let want_sum = (&x + &d).unwrap();
            let want = candle_nn::ops::rms_norm(&want_sum, &w, 1e-6).unwrap();
            let tol = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
            let sum_diff = rel_max_diff(&host(&sum), &host(&want_sum));
            assert!(sum_diff < tol, "sum {t}x{h} {dtype:?}: {sum_diff}");
            let diff = rel_max_diff(&host(&normed), &host(&want));
            assert!(diff < tol, "norm {t}x{h} {dtype:?}: {diff}");
        }
    }
}

/// The top-k sum against candle's f32 sum of the same rows.
#[test]
fn moe_combine_sums_each_tokens_rows() {
    let dev = gpu();
    let mut rng = StdRng::seed_from_u64(12);
    for (t, k, h) in [(1, 8, 2048), (37, 6, 130), (700, 4, 256)] {
        for dtype in [DType::F32, DType::BF16] {
            let y = Tensor::from_vec(uniform(&mut rng, t * k * h), (t * k, h), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let got = cuda::moe_combine(&y, k).unwrap();
            let want = y
                .to_dtype(DType::F32)
                .unwrap()
                .reshape((t, k, h))
                .unwrap()
                .sum(1)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            assert_eq!(got.dims(), &[t, h]);
            let diff = rel_max_diff(&host(&got), &host(&want));
            let tol = if dtype == DType::F32 { 1e-6 } else { 1e-2 };
            assert!(diff < tol, "combine {t}x{k}x{h} {dtype:?}: {diff}");
        }
    }
    assert!(cuda::moe_combine(&Tensor::zeros((5, 3), DType::F32, &dev).unwrap(), 2).is_err());
}

/// Block-FP8 experts kept as stored on the GPU against the same blocks dequantized on the CPU (the
/// grouped f32 reference): several tokens per expert, two block shapes, a hidden size of three blocks.
#[test]
fn fp8_experts_match_dequantized_reference() {
    use moeserve::model::moe::cuda_fp8_experts::CudaFp8Experts;
    use moeserve::weights::Fp8Blocks;
    let dev = gpu();
    for (tokens, hidden, inter, block) in [
        (1, 256, 128, (128, 128)),
        (5, 384, 256, (128, 128)),
        (40, 256, 128, (64, 32)),
    ] {
        let mut rng = StdRng::seed_from_u64(tokens as u64 + 100);
        let (e, k) = (8, 2);
        let mut blocks = |rows: usize, cols: usize| -> Fp8Blocks {
            // Bit 6 cleared: finite e4m3 values up to 1.875.
            let bytes: Vec<u8> = (0..rows * cols)
                .map(|_| rng.random::<u8>() & 0xbf)
                .collect();
            let n_scales = rows.div_ceil(block.0) * cols.div_ceil(block.1);
            let scales = (0..n_scales)
                .map(|_| rng.random_range(0.01f32..0.05))
                .collect();
            Fp8Blocks {
                bytes,
                scales,
                rows,
                cols,
                block,
            }
        };
        let experts: Vec<[Fp8Blocks; 3]> = (0..e)
            .map(|_| {
                [
                    blocks(inter, hidden),
                    blocks(inter, hidden),
                    blocks(hidden, inter),
                ]
            })
            .collect();
        let dense: Vec<(Tensor, Tensor, Tensor)> = experts
            .iter()
            .map(|[g, u, d]| {
                let f = |b: &Fp8Blocks| b.to_f32(&Device::Cpu).unwrap();
                (f(g), f(u), f(d))
            })
            .collect();
        let reference = GroupedExperts::from_weights(dense).unwrap();
        let gpu_experts = CudaFp8Experts::from_blocks(&experts, &dev).unwrap();
        let shape = (tokens, hidden, e, k);
        let d = experts_diff(&mut rng, &gpu_experts, &reference, shape, DType::BF16);
        assert!(d < 3e-2, "FP8 experts {tokens} tokens {block:?}: {d}");
    }
}

/// The fused q/k norm + rope + KV write against the ops it replaces (rms_norm, rope, kv_write), with and
/// without per-head norms, rotate-half and interleaved, full and partial rotary dims, a pad row.
#[test]
fn qk_norm_rope_write_matches_the_ops() {
    use moeserve::model::rope::apply;
    let dev = gpu();
    let mut rng = StdRng::seed_from_u64(13);
    let cases = [
        (3, 8, 2, 128, 128, false, true),
        (5, 4, 4, 64, 32, true, false),
        (1, 16, 2, 96, 96, false, false),
    ];
    for (t, nh, nkv, hd, rd, interleaved, norms) in cases {
        for dtype in [DType::F32, DType::BF16] {
            let mk = |rng: &mut StdRng, shape: &[usize]| {
                let n = shape.iter().product();
                Tensor::from_vec(uniform(rng, n), shape, &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            };
            let (q, k, v) = (
                mk(&mut rng, &[t, nh * hd]),
                mk(&mut rng, &[t, nkv * hd]),
                mk(&mut rng, &[t, nkv * hd]),
            );
            let (qn, kn) = (mk(&mut rng, &[hd]), mk(&mut rng, &[hd]));
            let angles: Vec<f32> = (0..t * rd / 2).map(|i| i as f32 * 0.37).collect();
            let table = |f: fn(f32) -> f32| {
                Tensor::from_vec(angles.iter().map(|&a| f(a)).collect(), (t, rd / 2), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            };
            let (cos, sin) = (table(f32::cos), table(f32::sin));
            let slots_n = 40;
            let mut order: Vec<u32> = (0..slots_n as u32).collect();
            order.shuffle(&mut rng);
            let mut slots: Vec<u32> = order[..t].to_vec();
            if t > 2 {
                slots[1] = cuda::PAD_SLOT;
            }
            let slots_t = Tensor::from_slice(&slots, t, &dev).unwrap();
            let cache = |rng: &mut StdRng| mk(rng, &[slots_n, nkv, hd]);
            let (kc, vc) = (cache(&mut rng), cache(&mut rng));
            let (kc_ref, vc_ref) = (kc.copy().unwrap(), vc.copy().unwrap());
            let step = cuda::QkvStep {
                q: &q,
                k: &k,
                v: &v,
                norms: norms.then_some((&qn, &kn, 1e-6)),
                cos: &cos,
                sin: &sin,
                rotary_dim: rd,
                interleaved,
                slots: &slots_t,
                k_cache: &kc,
                v_cache: &vc,
                num_heads: nh,
                num_kv_heads: nkv,
                head_dim: hd,
            };
            let got_q = cuda::qk_norm_rope_write(&step)
                .unwrap()
                .expect("the kernel takes these");
            // The ops, as the unfused path runs them.
            let heads = |x: &Tensor, n: usize, w: &Tensor| {
                let x = x.reshape((t, n, hd)).unwrap();
                if norms {
                    candle_nn::ops::rms_norm(&x.contiguous().unwrap(), w, 1e-6).unwrap()
                } else {
                    x
                }
            };
            let rot = |x: Tensor| {
                if rd == hd {
                    apply(&x, &cos, &sin, interleaved).unwrap()
                } else {
                    let r = apply(&x.narrow(2, 0, rd).unwrap(), &cos, &sin, interleaved).unwrap();
                    Tensor::cat(&[&r, &x.narrow(2, rd, hd - rd).unwrap()], 2).unwrap()
                }
            };
            let want_q = rot(heads(&q, nh, &qn));
            let want_k = rot(heads(&k, nkv, &kn));
            cuda::kv_write(&kc_ref, &slots_t, &want_k).unwrap();
            cuda::kv_write(&vc_ref, &slots_t, &v.reshape((t, nkv, hd)).unwrap()).unwrap();
            let tol = if dtype == DType::F32 { 1e-5 } else { 2e-2 };
            let case = format!(
                "{t}x{nh}/{nkv}x{hd} rd {rd} interleaved {interleaved} norms {norms} {dtype:?}"
            );
            let dq = rel_max_diff(&host(&got_q), &host(&want_q));
            assert!(dq < tol, "q {case}: {dq}");
            let dk = rel_max_diff(&host(&kc), &host(&kc_ref));
            assert!(dk < tol, "k cache {case}: {dk}");
            assert_eq!(host(&vc), host(&vc_ref), "v cache {case}");
        }
    }
}

/// Each row's argmax on the device is the host sampler's: the lowest index among equal maxima, NaN
/// never chosen, rows longer and shorter than the block.
#[test]
fn row_argmax_takes_the_lowest_index_among_ties() {
    let dev = gpu();
    let mut rng = StdRng::seed_from_u64(14);
    for n in [7, 256, 151_936] {
        let rows = 5;
        let mut values: Vec<f32> = uniform(&mut rng, rows * n);
        // Row 1: the maximum twice (both after the first element); row 2: a NaN ahead of the maximum;
        // row 3: all equal.
        let (a, b) = (n / 3, n - 1);
        values[n + a] = 2.0;
        values[n + b] = 2.0;
        values[2 * n] = f32::NAN;
        values[2 * n + n / 2] = 3.0;
        values[3 * n..4 * n].iter_mut().for_each(|v| *v = 0.5);
        let t = Tensor::from_vec(values.clone(), (rows, n), &dev).unwrap();
        let got = cuda::row_argmax(&t).unwrap().to_vec1::<u32>().unwrap();
        let want: Vec<u32> = values
            .chunks(n)
            .map(|r| {
                let mut best = 0;
                for (i, &v) in r.iter().enumerate() {
                    if v > r[best] || r[best].is_nan() {
                        best = i;
                    }
                }
                best as u32
            })
            .collect();
        assert_eq!(got, want, "n {n}");
        assert_eq!(got[1], a as u32);
        assert_eq!(got[3], 0);
    }
}

/// MLA's fused latent write and query rows against the ops they replace (rms_norm + rope + cat +
/// kv_write; transpose + rope + cat), rotate-half and interleaved, with a pad row.
#[test]
fn mla_latent_write_and_query_match_the_ops() {
    use moeserve::model::rope::apply;
    let dev = gpu();
    let mut rng = StdRng::seed_from_u64(15);
    for (t, nh, nope, l, r, interleaved) in [(3, 4, 16, 32, 8, true), (4, 16, 128, 512, 64, false)]
    {
        for dtype in [DType::F32, DType::BF16] {
            let mk = |rng: &mut StdRng, shape: &[usize]| {
                let n = shape.iter().product();
                Tensor::from_vec(uniform(rng, n), shape, &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            };
            let ckv = mk(&mut rng, &[t, l + r]);
            let w = mk(&mut rng, &[l]);
            let angles: Vec<f32> = (0..t * r / 2).map(|i| i as f32 * 0.29).collect();
            let table = |f: fn(f32) -> f32| {
                Tensor::from_vec(angles.iter().map(|&a| f(a)).collect(), (t, r / 2), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            };
            let (cos, sin) = (table(f32::cos), table(f32::sin));
            let rope = cuda::MlaRope {
                cos: &cos,
                sin: &sin,
                interleaved,
            };
            let slots_n = 20;
            let mut slots: Vec<u32> = (0..t as u32).map(|i| 3 + 5 * i).collect();
            if t > 2 {
                slots[1] = cuda::PAD_SLOT;
            }
            let slots_t = Tensor::from_slice(&slots, t, &dev).unwrap();
            let cache = mk(&mut rng, &[slots_n, 1, l + r]);
            let cache_ref = cache.copy().unwrap();
            assert!(cuda::mla_latent_write(&ckv, &w, 1e-6, &rope, &slots_t, &cache, l, r).unwrap());
            let c = candle_nn::ops::rms_norm(
                &ckv.narrow(1, 0, l).unwrap().contiguous().unwrap(),
                &w,
                1e-6,
            )
            .unwrap();
            let k_pe = apply(
                &ckv.narrow(1, l, r).unwrap().reshape((t, 1, r)).unwrap(),
                &cos,
                &sin,
                interleaved,
            )
            .unwrap();
            let latent = Tensor::cat(&[&c, &k_pe.reshape((t, r)).unwrap()], 1).unwrap();
            cuda::kv_write(
                &cache_ref,
                &slots_t,
                &latent.reshape((t, 1, l + r)).unwrap(),
            )
            .unwrap();
            let tol = if dtype == DType::F32 { 1e-5 } else { 2e-2 };
            let case =
                format!("{t}x{nh} nope {nope} L {l} R {r} interleaved {interleaved} {dtype:?}");
            let d = rel_max_diff(&host(&cache), &host(&cache_ref));
            assert!(d < tol, "latent {case}: {d}");

            let q = mk(&mut rng, &[t, nh, nope + r]);
            let q_lat = mk(&mut rng, &[nh, t, l]);
            let got = cuda::mla_query(&q, &q_lat, &rope, nope, r)
                .unwrap()
                .expect("takes these");
            let q_pe = apply(&q.narrow(2, nope, r).unwrap(), &cos, &sin, interleaved).unwrap();
            let want = Tensor::cat(
                &[&q_lat.transpose(0, 1).unwrap().contiguous().unwrap(), &q_pe],
                2,
            )
            .unwrap();
            let d = rel_max_diff(&host(&got), &host(&want));
            assert!(d < tol, "query {case}: {d}");
        }
    }
}
