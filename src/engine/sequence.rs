//! One choice of one request as the scheduler tracks it: its tokens, how many are in the KV cache, its block
//! table and the request's parameters. Plain data, model-free: sampling state lives in the model runner
//! ([`super::runner`]), detokenizing and the client's channel in the output processor ([`super::output`]).

use std::sync::Arc;

use super::request::RequestParams;
use crate::kv::prefix_cache::{chain_hash, BlockHash, PrefixKey};
use crate::kv::BlockTable;

pub(crate) type SeqId = u64;

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
    pub params: Arc<RequestParams>,
    /// Choices still to be forked from this one once its prompt is prefilled (n > 1).
    pub pending_forks: usize,
    /// Admission order; the newest running sequence is preempted first.
    pub admitted: u64,
    /// The next prompt position whose log-probability is still to be sent (prompt logprobs).
    pub prompt_logprobs_next: usize,
    /// Prefix caching for this sequence (`None`: not cached, not looked up).
    pub prefix: Option<Arc<PrefixKey>>,
    /// Prompt tokens found in the prefix cache when first admitted (usage `cached_tokens`).
    pub prefix_hit: usize,
}

impl Sequence {
    /// The first choice of a request.
    pub fn new(id: SeqId, request_id: u64, prompt: Vec<u32>, params: Arc<RequestParams>) -> Self {
        Self {
            id,
            request_id,
            choice: 0,
            prompt_len: prompt.len(),
            tokens: prompt,
            cached: 0,
            table: BlockTable::new(),
            pending_forks: params.n.max(1) - 1,
            params,
            admitted: 0,
            prompt_logprobs_next: 1,
            prefix: None,
            prefix_hit: 0,
        }
    }

    /// The same sequence, cached under `key`.
    pub fn with_prefix(mut self, key: Option<Arc<PrefixKey>>) -> Self {
        self.prefix = key;
        self
    }

    /// The hashes of its first `blocks` full blocks: the prompt's, then those of generated tokens.
    pub fn block_hashes(&self, blocks: usize, block_size: usize) -> Vec<BlockHash> {
        let Some(key) = &self.prefix else {
            return Vec::new();
        };
        let mut out: Vec<BlockHash> = key.prompt_hashes.iter().take(blocks).copied().collect();
        let mut h = out.last().copied().unwrap_or(key.seed);
        for i in out.len()..blocks {
            let Some(tokens) = self.tokens.get(i * block_size..(i + 1) * block_size) else {
                break;
            };
            h = chain_hash(&h, tokens);
            out.push(h);
        }
        out
    }

    /// Choice `k` of the same request (`k` ≥ 1): the same tokens and parameters, no blocks and nothing
    /// cached yet, its prompt's logprobs already sent by its parent.
    pub fn fork(&self, id: SeqId, k: usize) -> Sequence {
        Sequence {
            id,
            request_id: self.request_id,
            choice: self.choice + k,
            tokens: self.tokens.clone(),
            prompt_len: self.prompt_len,
            cached: 0,
            table: BlockTable::new(),
            params: self.params.clone(),
            pending_forks: 0,
            admitted: self.admitted,
            prompt_logprobs_next: self.prompt_len,
            prefix: self.prefix.clone(),
            prefix_hit: 0,
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
