//! Generation of one sequence over the paged cache: prefill the prompt, then decode token by token until
//! eos or the token limit. Used by `moeserve generate`; the batched engine runs the same model step.

use serde::Serialize;

use super::sampler::{logprob_of, Sampler, SamplingParams};
use crate::error::{Error, Result};
use crate::kv::{BlockAllocator, BlockTable};
use crate::loader::LoadedModel;
use crate::model::{Batch, LogitsOutput};

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
}

#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub ignore_eos: bool,
}

/// Result of one generation. Its text is request content: never log it.
#[derive(Serialize)]
pub struct GenerateOutput {
    pub prompt_ids: Vec<u32>,
    pub token_ids: Vec<u32>,
    /// Natural-log probability of each generated token under the raw next-token distribution.
    pub logprobs: Vec<f32>,
    pub text: String,
    pub finish_reason: FinishReason,
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

const BLOCK_SIZE: usize = 16;

pub fn generate(
    loaded: &LoadedModel,
    prompt_ids: Vec<u32>,
    params: &GenerateParams,
) -> Result<GenerateOutput> {
    let model = &loaded.model;
    if prompt_ids.is_empty() {
        return Err(Error::Batch("the prompt is empty".into()));
    }
    let max_ctx = model.spec().max_position_embeddings;
    let total = prompt_ids.len() + params.max_tokens;
    if prompt_ids.len() >= max_ctx {
        return Err(Error::Batch(format!(
            "prompt of {} tokens does not fit the model's context of {max_ctx}",
            prompt_ids.len()
        )));
    }
    let max_tokens = params.max_tokens.min(max_ctx - prompt_ids.len());
    let blocks = total.min(max_ctx).div_ceil(BLOCK_SIZE);
    let kv = model.new_kv_cache(blocks, BLOCK_SIZE)?;
    let mut alloc = BlockAllocator::new(blocks);
    let mut table = BlockTable::new();
    let mut sampler = Sampler::new(params.sampling.clone());

    let mut token_ids = Vec::new();
    let mut logprobs = Vec::new();
    let mut finish = FinishReason::Length;
    let mut cached = 0;
    let mut step_tokens = prompt_ids.clone();
    while token_ids.len() < max_tokens {
        table.reserve(cached + step_tokens.len(), BLOCK_SIZE, &mut alloc)?;
        let mut batch = Batch::default();
        batch.push(&step_tokens, cached, &table, BLOCK_SIZE)?;
        let logits = model
            .forward(&batch, &kv, LogitsOutput::LastPerSequence)?
            .squeeze(0)?
            .to_vec1::<f32>()?;
        cached += step_tokens.len();
        let next = sampler.sample(&logits);
        token_ids.push(next);
        logprobs.push(logprob_of(&logits, next as usize));
        if !params.ignore_eos && loaded.generation.eos_token_ids.contains(&next) {
            finish = FinishReason::Stop;
            break;
        }
        step_tokens = vec![next];
    }
    let freed = table.release(&mut alloc)?;
    kv.zero_blocks(&freed)?;
    let text = loaded.tokenizer.decode(&token_ids, true)?;
    Ok(GenerateOutput {
        prompt_ids,
        token_ids,
        logprobs,
        text,
        finish_reason: finish,
    })
}
