//! One decode step of the embedded default model at batch 1, 8, 16 and 32 (each sequence holding a
//! 64-token context), run on a compute-pool worker as the engine does, and the cost of zeroing freed KV
//! blocks. Run: `cargo bench --bench decode_step`.

use candle_core::{DType, Device};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use moeserve::engine::compute::on_compute_pool;
use moeserve::kv::{BlockAllocator, BlockTable};
use moeserve::loader;
use moeserve::model::{Batch, LogitsOutput};

const BLOCK: usize = 16;

fn decode_step(c: &mut Criterion) {
    let loaded = match loader::load(&loader::source_for(None), &Device::Cpu, DType::F32) {
        Ok(l) => l,
        Err(e) => panic!("default model: {e}"),
    };
    let model = &loaded.model;
    let mut group = c.benchmark_group("decode_step_default_model");
    for batch_size in [1usize, 8, 16, 32] {
        let blocks = batch_size * 5;
        let kv = model.new_kv_cache(blocks, BLOCK).unwrap();
        let mut alloc = BlockAllocator::new(blocks);
        let mut tables = vec![BlockTable::new(); batch_size];
        // Prefill 64 tokens per sequence.
        let mut prefill = Batch::default();
        for t in tables.iter_mut() {
            t.reserve(65, BLOCK, &mut alloc).unwrap();
            let prompt: Vec<u32> = (0..64).map(|i| (i * 7 % 300) as u32).collect();
            prefill.push(&prompt, 0, t, BLOCK).unwrap();
        }
        model
            .forward(&prefill, &kv, LogitsOutput::LastPerSequence)
            .unwrap();
        let mut step = Batch::default();
        for t in &tables {
            step.push(&[5], 64, t, BLOCK).unwrap();
        }
        group.bench_with_input(BenchmarkId::from_parameter(batch_size), &step, |b, step| {
            // On a compute-pool worker, as the engine runs its steps.
            on_compute_pool(|| {
                b.iter(|| {
                    model
                        .forward(step, &kv, LogitsOutput::LastPerSequence)
                        .unwrap()
                })
            })
            .unwrap()
        });
    }
    group.finish();
}

/// The step a server under steady load runs: 15 sequences decoding (64-token contexts) while one new
/// request's 64-token prompt is prefilled in the same batch.
fn mixed_step(c: &mut Criterion) {
    let loaded = match loader::load(&loader::source_for(None), &Device::Cpu, DType::F32) {
        Ok(l) => l,
        Err(e) => panic!("default model: {e}"),
    };
    let model = &loaded.model;
    let blocks = 16 * 5;
    let kv = model.new_kv_cache(blocks, BLOCK).unwrap();
    let mut alloc = BlockAllocator::new(blocks);
    let mut tables = vec![BlockTable::new(); 16];
    let prompt: Vec<u32> = (0..64).map(|i| (i * 7 % 300) as u32).collect();
    let mut prefill = Batch::default();
    for t in tables.iter_mut() {
        t.reserve(65, BLOCK, &mut alloc).unwrap();
    }
    for t in &tables[..15] {
        prefill.push(&prompt, 0, t, BLOCK).unwrap();
    }
    model
        .forward(&prefill, &kv, LogitsOutput::LastPerSequence)
        .unwrap();
    let mut step = Batch::default();
    for t in &tables[..15] {
        step.push(&[5], 64, t, BLOCK).unwrap();
    }
    step.push(&prompt, 0, &tables[15], BLOCK).unwrap();
    c.bench_function("mixed_step_default_model_15_decodes_64_prompt", |b| {
        on_compute_pool(|| {
            b.iter(|| {
                model
                    .forward(&step, &kv, LogitsOutput::LastPerSequence)
                    .unwrap()
            })
        })
        .unwrap()
    });
}

/// Cost of zeroing freed KV blocks (privacy: no content outlives its request), default model.
fn kv_zeroing(c: &mut Criterion) {
    let loaded = match loader::load(&loader::source_for(None), &Device::Cpu, DType::F32) {
        Ok(l) => l,
        Err(e) => panic!("default model: {e}"),
    };
    let kv = loaded.model.new_kv_cache(256, BLOCK).unwrap();
    let blocks: Vec<u32> = (0..64).collect();
    c.bench_function("kv_zero_64_blocks_default_model", |b| {
        b.iter(|| kv.zero_blocks(&blocks).unwrap())
    });
}

criterion_group!(benches, decode_step, mixed_step, kv_zeroing);
criterion_main!(benches);
