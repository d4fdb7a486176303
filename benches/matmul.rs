//! Projections `x · Wᵀ` of decode-sized batches on the CPU: candle's GEMM against the streaming kernel
//! (`moeserve::model::cpu::matmul`), f32 weights, for the bench-shaped model's expert, attention and
//! lm-head shapes. Also the machine's read bandwidth (a parallel sum over 1 GiB), the yardstick for a
//! memory-bound projection. `stored_precision`: one 16,384 × 1,024 weight (beyond the caches) held in f32,
//! bf16, f16 and block-FP8, 1–4, 8 and 16 input rows — the kernels that read weights as stored.
//! Run: `cargo bench --bench matmul`.

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

fn stored_precision(c: &mut Criterion) {
    use candle_core::DType;
    use moeserve::model::cpu::fp8::{e4m3, matmul_fp8, Fp8Weight};
    let (n, k) = (16384, 1024);
    let w = tensor(n, k);
    let mut group = c.benchmark_group("stored_precision_16384x1024");
    group.sample_size(20);
    // Random e4m3 bytes (finite values) and unit block scales.
    let bytes: Vec<u8> = (0..n * k)
        .map(|i| ((i * 2_654_435_761usize) >> 7) as u8 & 0xF7)
        .collect();
    let scales = vec![1f32; n.div_ceil(128) * k.div_ceil(128)];
    // 1–4 rows: what each expert sees in a decode batch (16 tokens × top-4 over 32 experts ≈ 2.3 rows).
    for m in [1usize, 2, 3, 4, 8, 16] {
        let x = tensor(m, k);
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let wd = w.to_dtype(dtype).unwrap();
            group.throughput(Throughput::Elements((n * k) as u64));
            group.bench_with_input(BenchmarkId::new(format!("{dtype:?}"), m), &m, |b, _| {
                b.iter(|| cpu_matmul::matmul_wt(&x, &wd).unwrap())
            });
        }
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let fw = Fp8Weight {
            w: e4m3(&bytes),
            scales: &scales,
            n,
            k,
            block: (128, 128),
        };
        group.bench_with_input(BenchmarkId::new("FP8", m), &m, |b, _| {
            b.iter(|| matmul_fp8(&xs, m, &[fw]))
        });
    }
    group.finish();
}

/// Prompt-sized products (64–512 rows) of bf16 weights: the AVX512-BF16 kernel (`matmul_wt`, where the
/// CPU has it), the weight widened panel by panel for candle's f32 GEMM, and candle's GEMM on f32
/// weights (what `--dtype f32` runs). Throughput in multiply-adds.
fn prompt_bf16(c: &mut Criterion) {
    use candle_core::DType;
    use moeserve::model::cpu::widen::matmul_wt_widened;
    let mut group = c.benchmark_group("prompt_bf16");
    group.sample_size(10);
    for (name, n, k) in [
        ("attn_q_1024x1024", 1024, 1024),
        ("expert_down_1024x512", 1024, 512),
    ] {
        let w = tensor(n, k);
        let wb = w.to_dtype(DType::BF16).unwrap();
        for m in [64usize, 512] {
            let x = tensor(m, k);
            group.throughput(Throughput::Elements((m * n * k) as u64));
            group.bench_with_input(BenchmarkId::new(format!("{name}/kernel"), m), &m, |b, _| {
                b.iter(|| cpu_matmul::matmul_wt(&x, &wb).unwrap())
            });
            group.bench_with_input(
                BenchmarkId::new(format!("{name}/widened"), m),
                &m,
                |b, _| b.iter(|| matmul_wt_widened(&x, &wb).unwrap()),
            );
            group.bench_with_input(BenchmarkId::new(format!("{name}/f32"), m), &m, |b, _| {
                b.iter(|| x.matmul(&w.t().unwrap()).unwrap())
            });
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

/// Block-quantized weights read in place (`moeserve::model::cpu::quant`): one 65,536 × 1,024 matrix
/// (beyond the 32 MiB L3 in every type) in Q8_0, Q4_K and Q6_K, 1 and 4 input rows, throughput in
/// weight bytes (compare with `read_bandwidth`).
fn quantized(c: &mut Criterion) {
    use moeserve::model::cpu::quant::{quant_products, QuantProduct};
    use moeserve::weights::{QuantMatrix, QuantType};
    let n: usize = std::env::var("QUANT_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(65536);
    let k = 1024;
    let values: Vec<f32> = (0..n * k)
        .map(|i| (((i * 2_654_435_761usize) >> 11) % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let mut group = c.benchmark_group("quantized_65536x1024");
    group.sample_size(10);
    for ty in [QuantType::Q8_0, QuantType::Q4_K, QuantType::Q6_K] {
        let w = QuantMatrix::quantize(ty, n, k, &values)
            .unwrap()
            .into_kernel_layout();
        group.throughput(Throughput::Bytes(w.byte_len() as u64));
        for m in [1usize, 4] {
            let x: Vec<f32> = values[..m * k].to_vec();
            group.bench_with_input(BenchmarkId::new(ty.name(), m), &m, |b, _| {
                b.iter(|| quant_products(&[QuantProduct { x: &x, m, w: &w }]))
            });
        }
    }
    group.finish();
}

criterion_group!(
    benches,
    projections,
    stored_precision,
    prompt_bf16,
    quantized,
    read_bandwidth
);
criterion_main!(benches);
