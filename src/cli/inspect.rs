//! `moeserve inspect`: describes a checkpoint from its headers (config.json, safetensors headers,
//! tokenizer files) and prints the memory plan `serve` would make with its default flags. It never reads
//! or allocates a weight, so a model far larger than the machine can be inspected.

use std::io::Write;

use anyhow::Context;

use moeserve::inspect::{describe, Inspection};
use moeserve::loader::{self, LoadFormat};
use moeserve::plan::{kv_blocks, MemoryPlan, PlanInputs};
use moeserve::tokenizer::{find_chat_template, GenerationConfig, TextTokenizer};

use super::ModelArgs;

/// `serve`'s defaults, which the printed plan assumes.
const BLOCK_SIZE: usize = 16;
const KV_CACHE_MIB: usize = 1024;
const MAX_RUNNING: usize = 64;
const MAX_BATCH_TOKENS: usize = 2048;

pub fn run(args: ModelArgs) -> anyhow::Result<()> {
    let source = loader::source_for(args.model.as_deref());
    let device = moeserve::device::open(args.device)?;
    let precision = args.precision(&device);
    let headers = loader::read_headers(&source, &device, precision, args.load_format)
        .with_context(|| format!("reading {}", source.describe()))?;
    let spec = &headers.spec;
    let (tokenizer, generation, template) = match args.load_format {
        LoadFormat::Dummy if !TextTokenizer::present(&source) => (
            TextTokenizer::placeholder(spec.vocab_size)?,
            GenerationConfig::load(&source, &headers.cfg.value)?,
            find_chat_template(&source)?,
        ),
        _ => loader::text_side(&source, &headers.cfg.value)?,
    };
    let blocks = kv_blocks(
        spec,
        headers.kv_dtype,
        BLOCK_SIZE,
        None,
        KV_CACHE_MIB,
        MAX_RUNNING,
    );
    let plan = MemoryPlan::new(PlanInputs {
        spec,
        matrix_dtype: headers.matrix_dtype,
        weight_bytes: headers.weight_bytes,
        compute_dtype: headers.compute_dtype,
        kv_dtype: headers.kv_dtype,
        kv_blocks: blocks,
        block_size: BLOCK_SIZE,
        max_batch_tokens: MAX_BATCH_TOKENS,
        max_running: MAX_RUNNING,
        available: moeserve::plan::available_on(&device),
    });
    let text = describe(&Inspection {
        source: &source,
        spec,
        compute: headers.compute_dtype,
        kv: headers.kv_dtype,
        weights: headers.matrix_dtype,
        device: moeserve::device::describe(&device),
        summary: &headers.summary,
        tokenizer: &tokenizer,
        eos_ids: &generation.eos_token_ids,
        chat_template: template.as_ref().map(|(t, file)| (t.len(), *file)),
        plan: &plan,
    });
    let mut o = std::io::stdout().lock();
    write!(o, "{text}")?;
    if let Err(line) = plan.check() {
        writeln!(o, "does not fit:  {line}")?;
    }
    Ok(())
}
