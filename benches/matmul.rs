//! Projections `x · Wᵀ` of decode-sized batches on the CPU: candle's GEMM against the streaming kernel
//! (`moeserve::model::cpu::matmul`), f32 weights, for the bench-shaped model's expert, attention and
//! lm-head shapes. Also the machine's read bandwidth (a parallel sum over 1 GiB), the yardstick for a
//! memory-bound projection. Run: `cargo bench --bench matmul`.

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use moeserve::model::cpu::matmul as cpu_matmul;
use rayon::prelude::*;

fn tensor(rows: usize, cols: usize) -> Tensor {
    Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu).unwrap()
}

fn projections(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul_wt");
    // (name, n, k): expert up/gate, expert down, attention q/o, lm head of a 49k vocabulary.
    for (name, n, k) in [
        ("expert_up_512x1024", 512, 1024),
        ("expert_down_1024x512", 1024, 512),
        ("attn_q_1024x1024", 1024, 1024),
        ("lm_head_49152x1024", 49152, 1024),
    ] {
        let w = tensor(n, k);
        group.throughput(Throughput::Bytes((n * k * 4) as u64));
        for m in [1usize, 4, 16, 64] {
            let x = tensor(m, k);
            group.bench_with_input(BenchmarkId::new(format!("{name}/candle"), m), &m, |b, _| {
                b.iter(|| x.matmul(&w.t().unwrap()).unwrap())
            });
            group.bench_with_input(
                BenchmarkId::new(format!("{name}/streaming"), m),
                &m,
                |b, _| b.iter(|| cpu_matmul::matmul_wt(&x, &w).unwrap()),
            );
        }
    }
    group.finish();
}

fn read_bandwidth(c: &mut Criterion) {
    let data = vec![1f32; 256 << 20];
    let mut group = c.benchmark_group("memory");
    group.throughput(Throughput::Bytes((data.len() * 4) as u64));
    group.sample_size(10);
    let ones = vec![1f32; 1 << 16];
    // A dot product with an L1-resident vector: the streaming kernel's own inner loop, so the figure is
    // the read bandwidth that kernel can reach.
    group.bench_function("parallel_read_1GiB", |b| {
        b.iter(|| {
            data.par_chunks(1 << 16)
                .map(|c| cpu_matmul::run(&ones, c, 1, 1, c.len())[0])
                .sum::<f32>()
        })
    });
    group.bench_function("single_thread_read_1GiB", |b| {
        b.iter(|| {
            data.chunks(1 << 16)
                .map(|c| cpu_matmul::run(&ones, c, 1, 1, c.len())[0])
                .sum::<f32>()
        })
    });
    group.finish();
}

criterion_group!(benches, projections, read_bandwidth);
criterion_main!(benches);
