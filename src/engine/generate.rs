//! One request run to completion in the calling thread through the same engine core the server uses
//! (`moeserve generate`, tests): same scheduler, cache, sampler and stop handling.

use std::sync::Arc;

use serde::Serialize;

use super::compute::on_compute_pool;
use super::constraint::TokenConstraint;
use super::core::EngineCore;
use super::request::{EngineEvent, EngineRequest, FinishReason, RequestParams};
use super::scheduler::SchedulerConfig;
use super::stats::EngineStats;
use crate::error::{Error, Result};
use crate::loader::LoadedModel;

/// Result of one generation. Its text is request content: never log it.
#[derive(Serialize)]
pub struct GenerateOutput {
    pub prompt_ids: Vec<u32>,
    pub token_ids: Vec<u32>,
    /// Natural-log probability of each generated token under the raw next-token distribution.
    pub logprobs: Vec<f32>,
    /// Natural-log probability of prompt tokens 1.. (when `prompt_logprobs` was asked for).
    pub prompt_logprobs: Vec<f32>,
    pub text: String,
    pub finish_reason: FinishReason,
    /// Timings of this run (no content).
    pub timing: GenerateTiming,
}

/// Prefill and decode speed of one generation, measured around the engine steps.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct GenerateTiming {
    /// Prompt processing until the first token was sampled.
    pub prefill_ms: f64,
    /// Prompt tokens per second of prefill.
    pub prefill_tokens_per_s: f64,
    /// Decode steps after the first token.
    pub decode_ms: f64,
    /// Generated tokens after the first, per second of decode.
    pub decode_tokens_per_s: f64,
}

impl std::fmt::Debug for GenerateOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerateOutput")
            .field("prompt_tokens", &self.prompt_ids.len())
            .field("completion_tokens", &self.token_ids.len())
            .field("text_len", &self.text.len())
            .field("finish_reason", &self.finish_reason)
            .finish()
    }
}

/// Generates one choice for `prompt_ids`. `params.logprobs` is forced on (the output carries them).
pub fn generate(
    loaded: &Arc<LoadedModel>,
    prompt_ids: Vec<u32>,
    params: RequestParams,
) -> Result<GenerateOutput> {
    generate_constrained(loaded, prompt_ids, params, None)
}

/// [`generate`] with the sampled tokens restricted by `constraint` (structured outputs).
pub fn generate_constrained(
    loaded: &Arc<LoadedModel>,
    prompt_ids: Vec<u32>,
    params: RequestParams,
    constraint: Option<Box<dyn TokenConstraint>>,
) -> Result<GenerateOutput> {
    if prompt_ids.is_empty() {
        return Err(Error::Batch("the prompt is empty".into()));
    }
    let max_ctx = loaded.model.spec().max_position_embeddings;
    if prompt_ids.len() >= max_ctx {
        return Err(Error::Batch(format!(
            "prompt of {} tokens does not fit the model's context of {max_ctx}",
            prompt_ids.len()
        )));
    }
    let mut params = params;
    params.max_tokens = params.max_tokens.min(max_ctx - prompt_ids.len());
    params.logprobs = true;
    params.n = 1;
    let block_size = 16;
    let config = SchedulerConfig {
        max_running: 1,
        max_batch_tokens: prompt_ids.len().max(512),
        max_waiting: 1,
        block_size,
        num_blocks: (prompt_ids.len() + params.max_tokens + 1).div_ceil(block_size),
        prefix_cache_ttl: None,
    };
    let stats = Arc::new(EngineStats::default());
    stats
        .queued_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut core = EngineCore::new(loaded.clone(), config, stats)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    core.add(EngineRequest {
        id: 0,
        prompt: prompt_ids.clone(),
        params: Arc::new(params),
        events: tx,
        constraint,
        prefix: None,
    });
    let out = GenerateOutput {
        prompt_ids,
        token_ids: Vec::new(),
        logprobs: Vec::new(),
        prompt_logprobs: Vec::new(),
        text: String::new(),
        finish_reason: FinishReason::Length,
        timing: GenerateTiming::default(),
    };
    on_compute_pool(move || run(core, rx, out))?
}

/// Steps `core` until its one request is done, collecting its events into `out`.
fn run(
    mut core: EngineCore,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<EngineEvent>,
    mut out: GenerateOutput,
) -> Result<GenerateOutput> {
    let started = std::time::Instant::now();
    let mut first_token_at = None;
    while core.has_work() {
        core.step()?;
        while let Ok(event) = rx.try_recv() {
            match event {
                EngineEvent::Delta { text, tokens, .. } => {
                    out.text.push_str(&text);
                    for t in tokens {
                        out.token_ids.push(t.token);
                        out.logprobs.push(t.logprob);
                    }
                }
                EngineEvent::Finished { reason, text, .. } => {
                    out.text.push_str(&text);
                    out.finish_reason = reason;
                }
                EngineEvent::PromptLogprobs { tokens, .. } => {
                    out.prompt_logprobs.extend(tokens.iter().map(|t| t.logprob));
                }
                EngineEvent::Failed { message } => return Err(Error::Batch(message)),
            }
        }
        if first_token_at.is_none() && !out.token_ids.is_empty() {
            first_token_at = Some(started.elapsed());
        }
    }
    let total = started.elapsed();
    let prefill = first_token_at.unwrap_or(total);
    let decode = total.saturating_sub(prefill);
    let decoded = out.token_ids.len().saturating_sub(1);
    out.timing = GenerateTiming {
        prefill_ms: prefill.as_secs_f64() * 1e3,
        prefill_tokens_per_s: out.prompt_ids.len() as f64 / prefill.as_secs_f64().max(1e-9),
        decode_ms: decode.as_secs_f64() * 1e3,
        decode_tokens_per_s: if decoded > 0 {
            decoded as f64 / decode.as_secs_f64().max(1e-9)
        } else {
            0.0
        },
    };
    Ok(out)
}
