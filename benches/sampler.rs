//! Sampling one token from a 151,936-entry vocabulary (Qwen's) per call, per sampling mode: greedy, plain
//! temperature, top-p 0.9 (on a flat and on a peaked distribution), top-k 50. `cargo bench --bench sampler`.

use criterion::{criterion_group, criterion_main, Criterion};
use moeserve::engine::{Sampler, SamplingParams};
use rand::{Rng, SeedableRng};

fn logits() -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    (0..151_936)
        .map(|_| rng.random_range(-8.0f32..8.0))
        .collect()
}

fn bench(c: &mut Criterion) {
    let l = logits();
    let modes = [
        (
            "greedy",
            SamplingParams {
                temperature: 0.0,
                ..Default::default()
            },
        ),
        (
            "temperature",
            SamplingParams {
                temperature: 0.8,
                ..Default::default()
            },
        ),
        (
            "top_p_0.9",
            SamplingParams {
                temperature: 0.8,
                top_p: 0.9,
                ..Default::default()
            },
        ),
        (
            "top_k_50",
            SamplingParams {
                temperature: 0.8,
                top_k: Some(50),
                ..Default::default()
            },
        ),
    ];
    for (name, params) in modes {
        let mut s = Sampler::new(SamplingParams {
            seed: Some(1),
            ..params
        });
        c.bench_function(&format!("sample/{name}"), |b| b.iter(|| s.sample(&l)));
    }
    // A peaked distribution (as trained models mostly produce): ~100 tokens hold nearly all the mass.
    let peaked: Vec<f32> = l
        .iter()
        .enumerate()
        .map(|(i, x)| if i % 1500 == 0 { x + 20.0 } else { *x })
        .collect();
    let mut s = Sampler::new(SamplingParams {
        temperature: 0.8,
        top_p: 0.9,
        seed: Some(1),
        ..Default::default()
    });
    c.bench_function("sample/top_p_0.9_peaked", |b| b.iter(|| s.sample(&peaked)));
}

criterion_group!(benches, bench);
criterion_main!(benches);
