//! Decode steps replayed as CUDA graphs against the same steps launched kernel by kernel: captured,
//! replayed with new contents, at several batch buckets, for grouped-query attention and MLA. Needs a
//! GPU: `cargo test --release --features cuda --test gpu_graphs` on the device machine.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device};
use moeserve::kv::{BlockAllocator, BlockTable, KvCache};
use moeserve::model::{Batch, LogitsOutput, Model};
use moeserve::weights::ModelSource;

fn gpu() -> Device {
    moeserve::device::open(moeserve::device::DeviceChoice::Cuda(0))
        .expect("these tests need a CUDA GPU")
}

fn load(fixture: &str, dev: &Device, dtype: DType, graphs: bool) -> Model {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    let mut model = moeserve::loader::load(&ModelSource::Dir(dir), dev, dtype)
        .unwrap()
        .model;
    if graphs {
        assert!(model.enable_decode_graphs(16), "graphs apply on a GPU");
    }
    model
}

struct Side {
    model: Model,
    kv: KvCache,
}

impl Side {
    fn step(&self, batch: &Batch) -> Vec<Vec<f32>> {
        self.model
            .forward(batch, &self.kv, LogitsOutput::LastPerSequence)
            .unwrap()
            .to_vec2()
            .unwrap()
    }
}

/// The largest |element| of a tensor.
fn max_abs(t: &candle_core::Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn argmax(row: &[f32]) -> u32 {
    row.iter()
        .enumerate()
        .fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
        .0 as u32
}

fn check(fixture: &str, dtype: DType, tolerance: f32) {
    let dev = gpu();
    let bs = 16;
    let sides: Vec<Side> = [false, true]
        .into_iter()
        .map(|graphs| {
            let model = load(fixture, &dev, dtype, graphs);
            let kv = model.new_kv_cache(64, bs).unwrap();
            Side { model, kv }
        })
        .collect();
    let prompts: Vec<Vec<u32>> = (0..6u32)
        .map(|i| {
            (0..(3 + 7 * i))
                .map(|j| (j * 31 + i * 7 + 5) % 200 + 1)
                .collect()
        })
        .collect();
    let mut alloc = BlockAllocator::new(64);
    let mut tables = Vec::new();
    let mut lens = Vec::new();
    let mut next = Vec::new();
    for p in &prompts {
        let mut t = BlockTable::new();
        t.reserve(p.len() + 40, bs, &mut alloc).unwrap();
        let mut b = Batch::default();
        b.push(p, 0, &t, bs).unwrap();
        let rows: Vec<Vec<Vec<f32>>> = sides.iter().map(|s| s.step(&b)).collect();
        next.push(argmax(&rows[0][0]));
        tables.push(t);
        lens.push(p.len());
    }
    // Bucket 4 captured then replayed with new contents; bucket 8; back to 4; bucket 1; 16.
    let schedule: [&[usize]; 8] = [
        &[0, 1, 2],
        &[0, 1, 2],
        &[0, 1, 2],
        &[0, 1, 2, 3, 4, 5],
        &[0, 1, 2, 3, 4, 5],
        &[2, 0, 1],
        &[3],
        &[3],
    ];
    for (step, seqs) in schedule.iter().enumerate() {
        let mut b = Batch::default();
        for &s in *seqs {
            b.push(&[next[s]], lens[s], &tables[s], bs).unwrap();
        }
        if step == 4 {
            // What an idle engine does: the buffers are zeroed, the next replay refills them.
            sides[1].model.forget_step_inputs().unwrap();
        }
        let eager = sides[0].step(&b);
        let graphed = sides[1].step(&b);
        assert_eq!(eager.len(), seqs.len());
        assert_eq!(graphed.len(), seqs.len());
        for (i, &s) in seqs.iter().enumerate() {
            let scale = eager[i].iter().fold(1e-6f32, |m, x| m.max(x.abs()));
            let worst = eager[i]
                .iter()
                .zip(&graphed[i])
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                worst / scale < tolerance,
                "{fixture} {dtype:?} step {step} seq {s}: {worst} of {scale}"
            );
            assert_eq!(
                argmax(&eager[i]),
                argmax(&graphed[i]),
                "{fixture} step {step}"
            );
            next[s] = argmax(&eager[i]);
            lens[s] += 1;
        }
    }
    // Buckets 4, 8 and 1 were captured (a failed capture would fall back to eager and match anyway).
    assert_eq!(sides[0].model.decode_graphs_captured(), 0);
    assert_eq!(
        sides[1].model.decode_graphs_captured(),
        3,
        "{fixture} {dtype:?}"
    );
    // The graphed side's cache holds what the eager side's does (pad rows wrote nothing).
    let (a, b) = (sides[0].kv.layer(0).0, sides[1].kv.layer(0).0);
    let (a, b) = (
        a.to_dtype(DType::F32).unwrap(),
        b.to_dtype(DType::F32).unwrap(),
    );
    let (d, scale) = (max_abs(&(&a - &b).unwrap()), max_abs(&a));
    assert!(d <= tolerance * scale, "{fixture} caches differ by {d}");
}

#[test]
fn graph_replays_match_eager_decode_gqa() {
    check("qwen3_moe", DType::F32, 1e-4);
    check("mixtral", DType::BF16, 3e-2);
}

#[test]
fn graph_replays_match_eager_decode_mla() {
    check("moonlight", DType::F32, 1e-4);
}
