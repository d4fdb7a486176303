//! One choice of one request as the engine tracks it: its tokens, how many are in the KV cache, its block
//! table, sampler, incremental detokenizer and stop matcher.

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use super::constraint::TokenConstraint;
use super::detokenize::IncrementalDecoder;
use super::request::{EngineEvent, RequestParams};
use super::sampler::Sampler;
use super::stop::StopMatcher;
use crate::kv::BlockTable;

pub type SeqId = u64;

pub struct Sequence {
    pub id: SeqId,
    pub request_id: u64,
    pub choice: usize,
    /// Prompt followed by the generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens whose keys/values are in the cache.
    pub cached: usize,
    pub table: BlockTable,
    pub sampler: Sampler,
    pub decoder: IncrementalDecoder,
    pub stop: StopMatcher,
    pub params: Arc<RequestParams>,
    pub events: UnboundedSender<EngineEvent>,
    /// Choices still to be forked from this one once its prompt is prefilled (n > 1).
    pub pending_forks: usize,
    /// Admission order; the newest running sequence is preempted first.
    pub admitted: u64,
    /// The next prompt position whose log-probability is still to be sent (prompt logprobs).
    pub prompt_logprobs_next: usize,
    /// Which tokens may be sampled next (structured outputs).
    pub constraint: Option<Box<dyn TokenConstraint>>,
}

impl Sequence {
    /// Choice `k` of the same request (`k` ≥ 1): the same tokens and parameters, its own sampler (seeded
    /// `seed + k`), detokenizer and stop matcher, no blocks and nothing cached yet.
    pub fn fork(&self, id: SeqId, k: usize) -> Sequence {
        let mut sampling = self.params.sampling.clone();
        sampling.seed = sampling.seed.map(|s| s.wrapping_add(k as u64));
        Sequence {
            id,
            request_id: self.request_id,
            choice: self.choice + k,
            tokens: self.tokens.clone(),
            prompt_len: self.prompt_len,
            cached: 0,
            table: BlockTable::new(),
            sampler: Sampler::new(sampling).with_prompt(&self.tokens),
            decoder: IncrementalDecoder::new(self.params.skip_special_tokens),
            stop: StopMatcher::new(self.params.stop.clone()),
            params: self.params.clone(),
            events: self.events.clone(),
            pending_forks: 0,
            admitted: self.admitted,
            prompt_logprobs_next: self.prompt_len,
            constraint: self.constraint.as_ref().map(|c| c.fork()),
        }
    }

    pub fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Tokens still to be run through the model.
    pub fn uncached(&self) -> usize {
        self.tokens.len() - self.cached
    }

    /// Prompt log-probabilities are asked for and not all sent yet.
    pub fn wants_prompt_logprobs(&self) -> bool {
        self.params.prompt_logprobs.is_some() && self.prompt_logprobs_next < self.prompt_len
    }

    pub fn is_prefilling(&self) -> bool {
        self.uncached() > 1
    }
}
