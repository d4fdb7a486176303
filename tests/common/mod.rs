//! Helpers shared by the integration tests: fixture paths, references, and a small multi-sequence runner
//! over the paged cache.
#![allow(dead_code)]

pub mod server;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use moeserve::kv::{BlockAllocator, BlockTable, KvCache};
use moeserve::loader::{self, LoadedModel};
use moeserve::model::{Batch, LogitsOutput};
use moeserve::weights::ModelSource;

pub const FAMILIES: [&str; 8] = [
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
    "kimi_k2",
    "moonlight",
    "deepseek_v2_lite",
    "deepseek_v2",
];
pub const TOLERANCE: f32 = 2e-5;

pub fn fixture_dir(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(family)
}

/// The device tests run on: `MOESERVE_TEST_DEVICE` (e.g. `cuda:0` on a GPU machine), else the CPU.
pub fn test_device() -> Device {
    let choice: moeserve::device::DeviceChoice = std::env::var("MOESERVE_TEST_DEVICE")
        .unwrap_or_else(|_| "cpu".into())
        .parse()
        .unwrap();
    moeserve::device::open(choice).unwrap()
}

/// A fixture in f32 on the test device.
pub fn load_fixture(family: &str) -> LoadedModel {
    loader::load(
        &ModelSource::Dir(fixture_dir(family)),
        &test_device(),
        DType::F32,
    )
    .unwrap_or_else(|e| panic!("{family}: {e}"))
}

/// What transformers computed for a fixture.
pub struct Reference {
    pub prompts: Vec<Vec<u32>>,
    pub greedy: Vec<Vec<u32>>,
    pub greedy_logprobs: Vec<Vec<f32>>,
    pub tensors: HashMap<String, Tensor>,
}

pub fn reference(family: &str) -> Reference {
    let dir = fixture_dir(family);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let lists = |key: &str| -> Vec<Vec<serde_json::Value>> {
        json[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_array().unwrap().clone())
            .collect()
    };
    let ids = |key: &str| -> Vec<Vec<u32>> {
        lists(key)
            .into_iter()
            .map(|a| a.iter().map(|v| v.as_u64().unwrap() as u32).collect())
            .collect()
    };
    Reference {
        prompts: ids("prompts"),
        greedy: ids("greedy"),
        greedy_logprobs: lists("greedy_logprobs")
            .into_iter()
            .map(|a| a.iter().map(|v| v.as_f64().unwrap() as f32).collect())
            .collect(),
        tensors: candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
            .unwrap(),
    }
}

/// Largest absolute difference of two same-shaped tensors.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

pub fn argmax(row: &[f32]) -> u32 {
    moeserve::engine::sampler::argmax(row) as u32
}

/// Several sequences sharing one paged cache, stepped together in flat batches.
pub struct Runner<'a> {
    pub loaded: &'a LoadedModel,
    pub kv: KvCache,
    pub alloc: BlockAllocator,
    pub tables: Vec<BlockTable>,
    pub cached: Vec<usize>,
    pub block_size: usize,
}

impl<'a> Runner<'a> {
    pub fn new(loaded: &'a LoadedModel, seqs: usize, num_blocks: usize, block_size: usize) -> Self {
        Self {
            kv: loaded.model.new_kv_cache(num_blocks, block_size).unwrap(),
            loaded,
            alloc: BlockAllocator::new(num_blocks),
            tables: vec![BlockTable::new(); seqs],
            cached: vec![0; seqs],
            block_size,
        }
    }

    /// Runs one batch of (sequence, new tokens); returns the logits of every query token, per sequence.
    pub fn step(&mut self, work: &[(usize, Vec<u32>)]) -> Vec<Vec<Vec<f32>>> {
        let mut batch = Batch::default();
        for (seq, tokens) in work {
            let len = self.cached[*seq] + tokens.len();
            self.tables[*seq]
                .reserve(len, self.block_size, &mut self.alloc)
                .unwrap();
            batch
                .push(
                    tokens,
                    self.cached[*seq],
                    &self.tables[*seq],
                    self.block_size,
                )
                .unwrap();
        }
        let logits = self
            .loaded
            .model
            .forward(&batch, &self.kv, LogitsOutput::All)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let mut out = Vec::new();
        for (i, (seq, tokens)) in work.iter().enumerate() {
            self.cached[*seq] += tokens.len();
            let s = &batch.seqs[i];
            out.push(logits[s.query_start..s.query_start + s.query_len].to_vec());
        }
        out
    }

    pub fn release(&mut self, seq: usize) -> Vec<u32> {
        let freed = self.tables[seq].release(&mut self.alloc).unwrap();
        self.kv.zero_blocks(&freed).unwrap();
        self.cached[seq] = 0;
        freed
    }
}

/// Natural-log probability of `index` under softmax(`row`), in f64 as the reference computes it.
pub fn log_softmax_at(row: &[f32], index: usize) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + row
            .iter()
            .map(|&l| (l as f64 - max).exp())
            .sum::<f64>()
            .ln();
    (row[index] as f64 - lse) as f32
}

/// A small tool-arguments schema (`city` of at most 4 characters, `days` 1–9): the calls' markers are
/// spelled out in characters in the fixture vocabularies, and the smallest fixture context is 128 tokens.
pub fn small_call_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 4},
            "days": {"type": "integer", "minimum": 1, "maximum": 9}
        },
        "required": ["city", "days"],
        "additionalProperties": false
    })
}
