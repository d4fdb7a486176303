//! One decode step at batch 1, 8, 16 and 32 (each sequence holding a 64-token context), one mixed step
//! (15 decodes + one 64-token prompt, what a loaded server runs), both on a compute-pool worker as the
//! engine runs them, and the cost of zeroing freed KV blocks. The embedded default model always; the
//! bench-shaped model (`scripts/make_bench_model.py`) too when `MOESERVE_BENCH_MODEL` names its directory.
//! `MOESERVE_BENCH_CONTEXT` sets the cached context per sequence (default 64); `MOESERVE_BENCH_DTYPE=auto`
//! holds the weights as stored (a bf16 checkpoint in bf16) instead of f32.
//!
//! Run: `cargo bench --bench decode_step`
//! or:  `MOESERVE_BENCH_MODEL=weights/bench-f32 cargo bench --bench decode_step`

use candle_core::{DType, Device};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use moeserve::engine::compute::on_compute_pool;
use moeserve::kv::{BlockAllocator, BlockTable, KvCache};
use moeserve::loader::{self, LoadedModel};
use moeserve::model::{Batch, LogitsOutput};

const BLOCK: usize = 16;

/// (name, model) for every model this run measures.
fn models() -> Vec<(&'static str, LoadedModel)> {
    // `MOESERVE_BENCH_DTYPE=auto`: weights held as stored (bf16 stays bf16); default f32 throughout.
    let precision = match std::env::var("MOESERVE_BENCH_DTYPE").as_deref() {
        Ok("auto") => {
            moeserve::device::precision_for(moeserve::device::DtypeChoice::Auto, &Device::Cpu)
        }
        _ => DType::F32.into(),
    };
    let load = |path: Option<&std::path::Path>| match loader::load(
        &loader::source_for(path),
        &Device::Cpu,
        precision,
    ) {
        Ok(l) => l,
        Err(e) => panic!("{path:?}: {e}"),
    };
    let mut out = vec![("default_model", load(None))];
    if let Some(dir) = std::env::var_os("MOESERVE_BENCH_MODEL") {
        out.push(("bench_model", load(Some(std::path::Path::new(&dir)))));
    }
    out
}

/// A cache with `seqs` sequences whose `context`-token prompts are already prefilled; the last `fresh`
/// sequences are left empty (their blocks reserved) for a prompt in the measured step.
fn prefilled(
    loaded: &LoadedModel,
    context: usize,
    seqs: usize,
    fresh: usize,
) -> (KvCache, Vec<BlockTable>, Vec<u32>) {
    let model = &loaded.model;
    let blocks = seqs * (context / BLOCK + 1);
    let kv = model.new_kv_cache(blocks, BLOCK).unwrap();
    let mut alloc = BlockAllocator::new(blocks);
    let mut tables = vec![BlockTable::new(); seqs];
    let vocab = model.spec().vocab_size;
    let prompts: Vec<Vec<u32>> = (0..seqs).map(|s| prompt_of(s, context, vocab)).collect();
    let mut prefill = Batch::default();
    for t in tables.iter_mut() {
        t.reserve(context + 1, BLOCK, &mut alloc).unwrap();
    }
    for (t, prompt) in tables[..seqs - fresh].iter().zip(&prompts) {
        prefill.push(prompt, 0, t, BLOCK).unwrap();
    }
    model
        .forward(&prefill, &kv, LogitsOutput::LastPerSequence)
        .unwrap();
    let last = prompts.last().cloned().unwrap_or_default();
    (kv, tables, last)
}

/// Sequence `s`'s prompt: its own tokens, so that a batch routes its rows to different experts as real
/// traffic does (identical rows would all pick the same experts and understate a batch's weight reads).
fn prompt_of(s: usize, len: usize, vocab: usize) -> Vec<u32> {
    (0..len)
        .map(|i| ((i * 7 + 3 + s * 7919) % vocab) as u32)
        .collect()
}

/// The token sequence `s` decodes in the measured step (distinct per sequence, see [`prompt_of`]).
fn next_token(s: usize, vocab: usize) -> u32 {
    ((5 + s * 104_729) % vocab) as u32
}

/// Measures `step` on a compute-pool worker, as the engine runs it.
fn bench_forward(b: &mut criterion::Bencher<'_>, loaded: &LoadedModel, kv: &KvCache, step: &Batch) {
    on_compute_pool(|| {
        b.iter(|| {
            loaded
                .model
                .forward(step, kv, LogitsOutput::LastPerSequence)
                .unwrap()
        })
    })
    .unwrap()
}

/// Per model (each loaded once): decode steps at batch 1/8/16/32, then the step a server under steady
/// load runs: 15 sequences decoding while one new request's prompt is prefilled in the same batch.
fn steps(c: &mut Criterion) {
    // Tokens already in each sequence's cache (and the new prompt's length): default 64.
    let context: usize = std::env::var("MOESERVE_BENCH_CONTEXT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    for (name, loaded) in models() {
        let mut group = c.benchmark_group(format!("decode_step_{name}"));
        for batch_size in [1usize, 8, 16, 32] {
            let (kv, tables, _) = prefilled(&loaded, context, batch_size, 0);
            let vocab = loaded.model.spec().vocab_size;
            let mut step = Batch::default();
            for (s, t) in tables.iter().enumerate() {
                step.push(&[next_token(s, vocab)], context, t, BLOCK)
                    .unwrap();
            }
            group.bench_with_input(BenchmarkId::from_parameter(batch_size), &step, |b, step| {
                bench_forward(b, &loaded, &kv, step)
            });
        }
        group.finish();

        let (kv, tables, prompt) = prefilled(&loaded, context, 16, 1);
        let vocab = loaded.model.spec().vocab_size;
        let mut step = Batch::default();
        for (s, t) in tables[..15].iter().enumerate() {
            step.push(&[next_token(s, vocab)], context, t, BLOCK)
                .unwrap();
        }
        step.push(&prompt, 0, &tables[15], BLOCK).unwrap();
        c.bench_function(&format!("mixed_step_{name}_15_decodes_64_prompt"), |b| {
            bench_forward(b, &loaded, &kv, &step)
        });
    }
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

criterion_group!(benches, steps, kv_zeroing);
criterion_main!(benches);
