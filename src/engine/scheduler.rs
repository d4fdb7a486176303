//! The scheduling policy, model-free: the [`Scheduler`] owns the sequences (by value), the waiting queue,
//! the running set and the KV block allocator, and decides each step's work ([`StepPlan`]). Every running
//! sequence that is decoding gets its one token first, then prompts are prefilled in chunks while the token
//! budget lasts, then waiting sequences are admitted up to the running limit. When KV blocks run out, the
//! most recently admitted sequence is preempted (its blocks freed, recomputed later) instead of failing.
//! Blocks it frees are handed back to the caller to be zeroed in the cache (which the model runner owns).

use std::collections::{HashMap, VecDeque};

use super::sequence::{SeqId, Sequence};
use crate::error::Result;
use crate::kv::prefix_cache::{partial_hash, PrefixCacheCounters};
use crate::kv::{BlockAllocator, PrefixCache};

/// Limits of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Maximum sequences running at once.
    pub max_running: usize,
    /// Maximum tokens in one forward pass (decodes + prefill chunks).
    pub max_batch_tokens: usize,
    /// Requests allowed to wait for admission; more are refused.
    pub max_waiting: usize,
    pub block_size: usize,
    pub num_blocks: usize,
    /// Prefix caching: how long an unused cached block is kept (`None`: off).
    pub prefix_cache_ttl: Option<std::time::Duration>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_running: 64,
            max_batch_tokens: 2048,
            max_waiting: 256,
            block_size: 16,
            num_blocks: 4096,
            prefix_cache_ttl: None,
        }
    }
}

/// Tokens a sequence may run this step given what is left of the budget.
pub fn chunk_for(uncached: usize, budget_left: usize) -> usize {
    uncached.min(budget_left)
}

/// Prompt tokens per step of a sequence that asked for prompt logprobs: each needs a row of logits
/// (128 × a 150k vocabulary = 77 MB of f32), so its prefill goes in chunks of at most this many.
pub const PROMPT_LOGPROBS_ROWS: usize = 128;

/// This step's chunk of `seq` under the token `budget` (a sequence sending prompt logprobs goes in
/// chunks of at most [`PROMPT_LOGPROBS_ROWS`]).
fn chunk_of(seq: &Sequence, budget: usize) -> usize {
    let chunk = chunk_for(seq.uncached(), budget);
    if seq.wants_prompt_logprobs() {
        chunk.min(PROMPT_LOGPROBS_ROWS)
    } else {
        chunk
    }
}

/// One step's decisions.
#[derive(Debug, Default)]
pub struct StepPlan {
    /// (sequence, tokens to run), decodes first.
    pub work: Vec<(SeqId, usize)>,
    /// Blocks freed while planning (preemption): to be zeroed before reuse.
    pub freed: Vec<u32>,
    /// Sequences longer than the whole cache: they can never continue (finish with `length`).
    pub unfit: Vec<SeqId>,
    /// Sequences preempted for blocks while planning.
    pub preempted: usize,
    /// Cached partly filled blocks to copy into the block of the sequence adopting them (source,
    /// destination), before the forward pass and after `freed` is zeroed.
    pub copies: Vec<(u32, u32)>,
    /// The copies' sources, retained until the copies ran: hand them back with
    /// [`Scheduler::release_held`].
    pub held: Vec<u32>,
}

/// A multi-choice request's forks after its prompt: every choice made (with its number `k`), those that
/// run now (sampling from the parent's logits row; the others wait in the queue), and the blocks to copy
/// (the parent's partly filled last block, one per running child).
#[derive(Debug, Default)]
pub struct Forks {
    pub created: Vec<(SeqId, usize)>,
    pub children: Vec<SeqId>,
    pub copies: Vec<(u32, u32)>,
    /// Cached blocks evicted to make room for the copies (to be zeroed first).
    pub freed: Vec<u32>,
}

pub struct Scheduler {
    config: SchedulerConfig,
    alloc: BlockAllocator,
    /// Full blocks kept after their sequences, by tenant and token chain (`None`: caching off).
    prefix: Option<PrefixCache>,
    seqs: HashMap<SeqId, Sequence>,
    waiting: VecDeque<SeqId>,
    running: Vec<SeqId>,
    next_seq: SeqId,
    admissions: u64,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        Self {
            alloc: BlockAllocator::new(config.num_blocks),
            prefix: config.prefix_cache_ttl.map(PrefixCache::new),
            config,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_seq: 0,
            admissions: 0,
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Blocks the prefix cache holds, and its counters.
    pub fn prefix_stats(&self) -> Option<(usize, PrefixCacheCounters)> {
        self.prefix.as_ref().map(|c| (c.len(), c.counters))
    }

    /// When the next cached block expires (the engine wakes for it when idle).
    pub fn next_expiry(&self) -> Option<std::time::Instant> {
        self.prefix.as_ref().and_then(|c| c.next_expiry())
    }

    /// Drops expired cached blocks now; returns those freed (to be zeroed).
    pub fn expire(&mut self) -> Vec<u32> {
        match &mut self.prefix {
            Some(c) => c.expire(&mut self.alloc),
            None => Vec::new(),
        }
    }

    /// Empties the prefix cache (shutdown): the blocks freed, to be zeroed.
    pub fn clear_prefix_cache(&mut self) -> Vec<u32> {
        match &mut self.prefix {
            Some(c) => c.clear(&mut self.alloc),
            None => Vec::new(),
        }
    }

    /// Whether `need` blocks can be had now: free ones, then cached ones only the cache holds (counted
    /// only when the free ones fall short: that count walks the cache).
    fn can_have(&self, need: usize) -> bool {
        need <= self.alloc.num_free()
            || need
                <= self.alloc.num_free()
                    + self.prefix.as_ref().map_or(0, |c| c.evictable(&self.alloc))
    }

    /// Makes `need` blocks free, evicting cached ones if needed (freed ones go to `freed`, to be zeroed).
    fn make_room(&mut self, need: usize, freed: &mut Vec<u32>) {
        let short = need.saturating_sub(self.alloc.num_free());
        if short > 0 {
            if let Some(c) = &mut self.prefix {
                freed.extend(c.evict(short, &mut self.alloc));
            }
        }
    }

    /// Offers `seq`'s computed full blocks to the prefix cache (before its table is released).
    fn offer(&mut self, seq: &Sequence) {
        let Some(cache) = &mut self.prefix else {
            return;
        };
        if seq.prefix.is_none() {
            return;
        }
        let bs = self.config.block_size;
        let full = (seq.cached / bs).min(seq.table.blocks().len());
        let mut hashes = seq.block_hashes(full, bs);
        // The partly filled last block, known by its tokens so far.
        let filled = seq.cached - full * bs;
        if hashes.len() == full && filled > 0 && seq.table.blocks().len() > full {
            let parent = hashes
                .last()
                .copied()
                .or(seq.prefix.as_ref().map(|k| k.seed));
            if let (Some(parent), Some(tokens)) =
                (parent, seq.tokens.get(full * bs..full * bs + filled))
            {
                hashes.push(partial_hash(&parent, tokens));
            }
        }
        cache.insert(
            &hashes,
            &seq.table.blocks()[..hashes.len()],
            &mut self.alloc,
        );
    }

    /// Releases the sources of a plan's copies once they ran; returns the blocks freed (to be zeroed:
    /// sources evicted from the cache meanwhile).
    pub fn release_held(&mut self, held: &[u32]) -> Vec<u32> {
        let mut freed = Vec::new();
        for &b in held {
            match self.alloc.release(b) {
                Ok(true) => freed.push(b),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "releasing a copied KV block failed"),
            }
        }
        freed
    }

    /// Adopts the cached blocks of `id`'s longest cached prefix (never all of its tokens: the last one is
    /// always computed, for its logits): the full blocks shared, then a cached partly filled block that
    /// its next tokens continue copied into a block of its own (the copy goes into `plan`).
    fn adopt_cached_prefix(&mut self, id: SeqId, plan: &mut StepPlan) {
        let bs = self.config.block_size;
        let (Some(cache), Some(seq)) = (&mut self.prefix, self.seqs.get_mut(&id)) else {
            return;
        };
        let Some(key) = seq.prefix.clone() else {
            return;
        };
        if seq.cached != 0 || !seq.table.blocks().is_empty() {
            return;
        }
        if key.prompt_hashes.is_empty() {
            return;
        }
        // A preempted sequence also finds the blocks of what it generated (offered when preempted).
        let hashes = seq.block_hashes((seq.tokens.len() - 1) / bs, bs);
        let mut blocks = cache.lookup(&hashes, seq.prompt_len, bs, &mut self.alloc);
        let mut hit = blocks.len() * bs;
        // The longest cached partial block after them (at most a block's tokens, never the last one).
        let parent = blocks
            .len()
            .checked_sub(1)
            .and_then(|i| hashes.get(i).copied())
            .unwrap_or(key.seed);
        let most = (bs - 1).min(seq.tokens.len() - 1 - hit);
        let source = (1..=most).rev().find_map(|n| {
            let h = partial_hash(&parent, &seq.tokens[hit..hit + n]);
            cache.lookup_partial(&h, n, &mut self.alloc).map(|b| (b, n))
        });
        if let Some((source, n)) = source {
            // A block of its own: the source stays retained (`plan.held`) until the copy ran, so no
            // eviction can take it first; it goes back untaken when no block can be had.
            self.make_room(1, &mut plan.freed);
            match self.alloc.allocate() {
                Some(own) => {
                    plan.copies.push((source, own));
                    plan.held.push(source);
                    blocks.push(own);
                    hit += n;
                }
                None => plan.freed.extend(self.release_held(&[source])),
            }
        }
        let Some(seq) = self.seqs.get_mut(&id) else {
            return;
        };
        seq.table.adopt(blocks);
        seq.cached = hit;
        if seq.generated() == 0 && seq.admitted == 0 {
            seq.prefix_hit = hit;
        }
    }

    /// A fresh sequence id.
    pub fn next_id(&mut self) -> SeqId {
        let id = self.next_seq;
        self.next_seq += 1;
        id
    }

    /// Queues a sequence (made with an id from [`Self::next_id`]).
    pub fn add(&mut self, seq: Sequence) {
        let id = seq.id;
        self.seqs.insert(id, seq);
        self.waiting.push_back(id);
    }

    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    pub fn free_blocks(&self) -> usize {
        self.alloc.num_free()
    }

    pub fn get(&self, id: SeqId) -> Option<&Sequence> {
        self.seqs.get(&id)
    }

    pub fn get_mut(&mut self, id: SeqId) -> Option<&mut Sequence> {
        self.seqs.get_mut(&id)
    }

    pub fn sequences(&self) -> impl Iterator<Item = &Sequence> {
        self.seqs.values()
    }

    pub fn sequences_mut(&mut self) -> impl Iterator<Item = &mut Sequence> {
        self.seqs.values_mut()
    }

    /// The sequences (choices) of one request.
    pub fn of_request(&self, request_id: u64) -> Vec<SeqId> {
        self.seqs
            .values()
            .filter(|s| s.request_id == request_id)
            .map(|s| s.id)
            .collect()
    }

    pub fn ids(&self) -> Vec<SeqId> {
        self.seqs.keys().copied().collect()
    }

    /// Takes a sequence out (finished, cancelled): its blocks are released; the ones no other sequence
    /// holds are returned to be zeroed.
    pub fn remove(&mut self, id: SeqId) -> Option<(Sequence, Vec<u32>)> {
        let mut seq = self.seqs.remove(&id)?;
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&w| w != id);
        self.offer(&seq);
        let freed = self.release(&mut seq);
        Some((seq, freed))
    }

    fn release(&mut self, seq: &mut Sequence) -> Vec<u32> {
        match seq.table.release(&mut self.alloc) {
            Ok(freed) => freed,
            Err(e) => {
                tracing::error!(error = %e, "releasing KV blocks failed");
                Vec::new()
            }
        }
    }

    /// Frees `id`'s blocks and puts it back at the head of the queue (recomputed when admitted again).
    fn requeue(&mut self, id: SeqId, freed: &mut Vec<u32>) {
        self.running.retain(|&r| r != id);
        if let Some(mut seq) = self.seqs.remove(&id) {
            self.offer(&seq);
            freed.extend(self.release(&mut seq));
            seq.cached = 0;
            self.seqs.insert(id, seq);
        }
        self.waiting.push_front(id);
    }

    /// Preempts the newest running sequence but `except`; false when there is none.
    fn preempt_newest(&mut self, except: Option<SeqId>, plan: &mut StepPlan) -> bool {
        let victim = self
            .running
            .iter()
            .filter(|&&id| Some(id) != except)
            .max_by_key(|&&id| self.seqs.get(&id).map_or(0, |s| s.admitted))
            .copied();
        let Some(victim) = victim else {
            return false;
        };
        self.requeue(victim, &mut plan.freed);
        plan.preempted += 1;
        tracing::debug!(seq = victim, "preempted for KV blocks");
        true
    }

    /// Reserves blocks for `len` tokens of `id`, preempting newer sequences when short.
    fn reserve(&mut self, id: SeqId, len: usize, plan: &mut StepPlan) -> bool {
        loop {
            let bs = self.config.block_size;
            let Some(seq) = self.seqs.get_mut(&id) else {
                return false;
            };
            let need = seq.table.blocks_needed(len, bs);
            if self.can_have(need) {
                self.make_room(need, &mut plan.freed);
                let Some(seq) = self.seqs.get_mut(&id) else {
                    return false;
                };
                return seq.table.reserve(len, bs, &mut self.alloc).is_ok();
            }
            if !self.preempt_newest(Some(id), plan) {
                return false;
            }
        }
    }

    /// Decides this step's work.
    pub fn schedule(&mut self) -> StepPlan {
        let mut plan = StepPlan {
            freed: self.expire(),
            ..StepPlan::default()
        };
        let mut budget = self.config.max_batch_tokens;
        // Running sequences in admission order: decodes, then unfinished prefills.
        let mut order = self.running.clone();
        order.sort_by_key(|id| {
            (
                self.seqs.get(id).is_none_or(|s| s.is_prefilling()),
                self.seqs.get(id).map_or(0, |s| s.admitted),
            )
        });
        for id in order {
            if budget == 0 {
                break;
            }
            if !self.running.contains(&id) {
                continue; // preempted while planning
            }
            let Some(seq) = self.seqs.get(&id) else {
                continue;
            };
            let chunk = chunk_of(seq, budget);
            let target = seq.cached + chunk;
            if self.reserve(id, target, &mut plan) {
                plan.work.push((id, chunk));
                budget -= chunk;
            } else if target.div_ceil(self.config.block_size) > self.config.num_blocks {
                // Longer than the whole cache: it can never continue.
                self.running.retain(|&r| r != id);
                plan.unfit.push(id);
            } else {
                // Not even alone does it fit now: it waits for blocks and is recomputed later.
                self.requeue(id, &mut plan.freed);
            }
        }
        plan.work.retain(|(id, _)| self.running.contains(id));
        // Admit waiting sequences.
        while budget > 0 && self.running.len() < self.config.max_running {
            let Some(&id) = self.waiting.front() else {
                break;
            };
            if !self.seqs.contains_key(&id) {
                self.waiting.pop_front();
                continue;
            }
            self.adopt_cached_prefix(id, &mut plan);
            let Some(seq) = self.seqs.get(&id) else {
                continue;
            };
            let chunk = chunk_of(seq, budget);
            let target = seq.cached + chunk;
            let bs = self.config.block_size;
            let need = seq.table.blocks_needed(target, bs);
            if !self.can_have(need) {
                // Wait for blocks (running sequences are not preempted for newcomers); cached blocks
                // adopted for it go back.
                if let Some(mut seq) = self.seqs.remove(&id) {
                    let own = seq.table.blocks().to_vec();
                    plan.freed.extend(self.release(&mut seq));
                    // A copy into one of its blocks is off too (its source goes back now).
                    let (dropped, kept): (Vec<_>, Vec<_>) =
                        plan.copies.iter().partition(|(_, dst)| own.contains(dst));
                    plan.copies = kept;
                    for (src, _) in dropped {
                        if let Some(i) = plan.held.iter().position(|&h| h == src) {
                            plan.held.swap_remove(i);
                            plan.freed.extend(self.release_held(&[src]));
                        }
                    }
                    seq.cached = 0;
                    seq.prefix_hit = 0;
                    self.seqs.insert(id, seq);
                }
                break;
            }
            self.make_room(need, &mut plan.freed);
            self.waiting.pop_front();
            self.admissions += 1;
            if let Some(seq) = self.seqs.get_mut(&id) {
                seq.admitted = self.admissions;
                if seq.table.reserve(target, bs, &mut self.alloc).is_err() {
                    self.waiting.push_front(id);
                    break;
                }
            }
            self.running.push(id);
            plan.work.push((id, chunk));
            budget -= chunk;
        }
        plan
    }

    /// After the prompt of a multi-choice request is prefilled, the other choices share its full blocks and
    /// get a copy of its partly filled last block (one block per layer, whatever the pool's size). The
    /// choices forked now sample their first token from the same logits. A choice that finds the running
    /// limit reached or no free block waits in the queue instead, with no blocks, and computes the prompt
    /// itself when admitted — forks never bypass `max_running` and never fail for want of blocks.
    pub fn fork_pending(&mut self, id: SeqId) -> Result<Forks> {
        let mut forks = Forks::default();
        let mut deferred = Vec::new();
        let Some(parent) = self.seqs.get_mut(&id) else {
            return Ok(forks);
        };
        let count = std::mem::take(&mut parent.pending_forks);
        let bs = self.config.block_size;
        for k in 1..=count {
            let child_id = self.next_id();
            let Some(parent) = self.seqs.get(&id) else {
                break;
            };
            let mut child = parent.fork(child_id, k);
            forks.created.push((child_id, k));
            let len = parent.tokens.len();
            let full = len / bs;
            let partial = len % bs != 0;
            let blocks = parent.table.blocks();
            let fits = self.running.len() < self.config.max_running
                && blocks.len() >= full + usize::from(partial)
                && (!partial || self.can_have(1));
            if !fits {
                deferred.push(child);
                continue;
            }
            let mut child_blocks = blocks[..full].to_vec();
            let last = partial.then(|| blocks[full]);
            for &b in &child_blocks {
                self.alloc.retain(b)?;
            }
            if let Some(last) = last {
                // Each choice writes its own next tokens into the partly filled block: it gets a copy.
                self.make_room(1, &mut forks.freed);
                if let Some(fresh) = self.alloc.allocate() {
                    forks.copies.push((last, fresh));
                    child_blocks.push(fresh);
                }
            }
            child.table.adopt(child_blocks);
            child.cached = len;
            self.seqs.insert(child_id, child);
            self.running.push(child_id);
            forks.children.push(child_id);
        }
        // Waiting choices go ahead of requests not yet admitted, in choice order.
        for child in deferred.into_iter().rev() {
            let cid = child.id;
            self.seqs.insert(cid, child);
            self.waiting.push_front(cid);
        }
        Ok(forks)
    }
}

#[cfg(test)]
mod tests {
    //! The policy with no model: sequences are plain token lists, a "step" advances what was planned
    //! and appends one token to every sequence whose prompt is done.

    use std::sync::Arc;

    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::engine::request::RequestParams;

    fn config(num_blocks: usize, max_batch_tokens: usize, max_running: usize) -> SchedulerConfig {
        SchedulerConfig {
            max_running,
            max_batch_tokens,
            max_waiting: 1000,
            block_size: 4,
            num_blocks,
            prefix_cache_ttl: None,
        }
    }

    /// Queues a request of `prompt` tokens and `n` choices; returns its sequence id.
    fn add(s: &mut Scheduler, prompt: usize, n: usize, request: u64) -> SeqId {
        let id = s.next_id();
        let params = Arc::new(RequestParams {
            n,
            ..Default::default()
        });
        s.add(Sequence::new(id, request, vec![1; prompt], params));
        id
    }

    /// Runs what `plan` says, as the engine would (forking after a prompt); returns the sequences that
    /// produced a token.
    fn run(s: &mut Scheduler, plan: &StepPlan) -> Vec<SeqId> {
        let mut sampled = Vec::new();
        for &(id, chunk) in &plan.work {
            let seq = s.get_mut(id).unwrap();
            seq.cached += chunk;
            if seq.cached == seq.tokens.len() {
                seq.tokens.push(7);
                sampled.push(id);
                let forks = s.fork_pending(id).unwrap();
                for c in forks.children {
                    s.get_mut(c).unwrap().tokens.push(7);
                    sampled.push(c);
                }
            }
        }
        sampled
    }

    /// Every block is free or held (by sequences or the prefix cache); a block held by several is shared
    /// (forks, cached prefixes), and its refcount counts exactly its holders.
    fn assert_blocks_accounted(s: &Scheduler) {
        let mut holders: HashMap<u32, u32> = HashMap::new();
        for b in s.sequences().flat_map(|q| q.table.blocks().iter().copied()) {
            *holders.entry(b).or_default() += 1;
        }
        for b in s.prefix.iter().flat_map(|c| c.blocks()) {
            *holders.entry(b).or_default() += 1;
        }
        assert_eq!(holders.len() + s.free_blocks(), s.config.num_blocks);
        for (b, n) in holders {
            assert_eq!(s.alloc.refcount(b), n, "block {b}");
        }
    }

    /// Queues `tokens` for `tenant` with prefix caching; returns its sequence id.
    fn add_cached(s: &mut Scheduler, tokens: Vec<u32>, tenant: u8, request: u64) -> SeqId {
        use crate::kv::prefix_cache::{chain, chain_seed};
        let id = s.next_id();
        let seed = chain_seed(&[tenant; 32]);
        let key = crate::kv::prefix_cache::PrefixKey {
            seed,
            prompt_hashes: chain(&seed, &tokens, s.config.block_size),
        };
        s.add(
            Sequence::new(id, request, tokens, Arc::new(RequestParams::default()))
                .with_prefix(Some(Arc::new(key))),
        );
        id
    }

    fn cached_config(num_blocks: usize, ttl: std::time::Duration) -> SchedulerConfig {
        SchedulerConfig {
            prefix_cache_ttl: Some(ttl),
            ..config(num_blocks, 100, 8)
        }
    }

    /// Runs `id` alone until its prompt is in the cache and one token generated, then removes it.
    fn serve_once(s: &mut Scheduler, id: SeqId) {
        let plan = s.schedule();
        assert!(plan.work.iter().any(|w| w.0 == id));
        run(s, &plan);
        s.remove(id);
    }

    #[test]
    fn the_same_tenant_reuses_a_prefix_another_tenant_does_not() {
        let mut s = Scheduler::new(cached_config(32, std::time::Duration::from_secs(60)));
        let prompt: Vec<u32> = (0..14).collect(); // 3 full blocks of 4, and 2 tokens
        let a = add_cached(&mut s, prompt.clone(), 1, 1);
        serve_once(&mut s, a);
        assert_eq!(
            s.prefix.as_ref().unwrap().len(),
            4,
            "its computed full blocks and its partly filled last one are kept"
        );
        assert_blocks_accounted(&s);
        // Same tenant, same prompt: 12 tokens come from the cache, 2 are computed.
        let b = add_cached(&mut s, prompt.clone(), 1, 2);
        let plan = s.schedule();
        assert_eq!(plan.work, [(b, 2)]);
        assert_eq!(s.get(b).unwrap().prefix_hit, 12);
        assert_blocks_accounted(&s);
        run(&mut s, &plan);
        s.remove(b);
        // Another tenant with the same prompt computes all of it.
        let c = add_cached(&mut s, prompt.clone(), 2, 3);
        let plan = s.schedule();
        assert_eq!(plan.work, [(c, 14)]);
        assert_eq!(s.get(c).unwrap().prefix_hit, 0);
        run(&mut s, &plan);
        s.remove(c);
        // A prompt sharing only its first block hits that block.
        let mut other = prompt.clone();
        other[5] = 999;
        let d = add_cached(&mut s, other, 1, 4);
        let plan = s.schedule();
        assert_eq!(plan.work, [(d, 10)]);
        assert_blocks_accounted(&s);
    }

    /// A prompt that continues a finished sequence's tokens past its last full block gets a copy of that
    /// partly filled block (its source held until the copy ran) and computes only what follows; another
    /// tenant, or tokens that differ inside the block, get nothing from it.
    #[test]
    fn a_partly_filled_cached_block_is_copied_into_the_continuing_prompt() {
        let mut s = Scheduler::new(cached_config(32, std::time::Duration::from_secs(60)));
        let first: Vec<u32> = (0..14).collect(); // 3 full blocks of 4, and 2 tokens
        let a = add_cached(&mut s, first.clone(), 1, 1);
        serve_once(&mut s, a);
        let mut longer = first.clone();
        longer.extend([50, 51, 52]);
        let b = add_cached(&mut s, longer.clone(), 1, 2);
        let plan = s.schedule();
        assert_eq!(plan.work, [(b, 3)], "14 of 17 tokens cached");
        assert_eq!(s.get(b).unwrap().prefix_hit, 14);
        assert_eq!(plan.copies.len(), 1);
        let (src, dst) = plan.copies[0];
        assert_eq!(plan.held, [src]);
        let table = s.get(b).unwrap().table.blocks().to_vec();
        assert_eq!(table[3], dst, "the copy is its fourth block");
        assert!(s.prefix.as_ref().unwrap().blocks().any(|blk| blk == src));
        assert_eq!(s.alloc.refcount(src), 2, "cache + the copy's hold");
        run(&mut s, &plan);
        assert!(s.release_held(&plan.held).is_empty(), "still cached");
        assert_blocks_accounted(&s);
        s.remove(b);
        assert_blocks_accounted(&s);
        // Another tenant: no full block, no partial one.
        let c = add_cached(&mut s, longer.clone(), 2, 3);
        let plan = s.schedule();
        assert_eq!(plan.work, [(c, 17)]);
        assert!(plan.copies.is_empty() && plan.held.is_empty());
        run(&mut s, &plan);
        s.remove(c);
        // Same tenant, a token changed inside the partial block: the full blocks only.
        let mut changed = longer.clone();
        changed[13] = 77;
        let d = add_cached(&mut s, changed, 1, 4);
        let plan = s.schedule();
        assert_eq!(plan.work, [(d, 5)]);
        assert!(plan.copies.is_empty());
        assert_blocks_accounted(&s);
    }

    #[test]
    fn cached_blocks_expire_and_come_back_to_be_zeroed() {
        let mut s = Scheduler::new(cached_config(16, std::time::Duration::ZERO));
        let a = add_cached(&mut s, (0..9).collect(), 1, 1);
        serve_once(&mut s, a);
        let cached: Vec<u32> = s.prefix.as_ref().unwrap().blocks().collect();
        assert_eq!(cached.len(), 3, "two full blocks and the partly filled one");
        let mut freed = s.expire();
        freed.sort();
        let mut want = cached.clone();
        want.sort();
        assert_eq!(
            freed, want,
            "expired blocks are freed, for the engine to zero"
        );
        assert_eq!(s.free_blocks(), 16);
    }

    #[test]
    fn cached_blocks_make_room_before_anyone_waits_or_is_preempted() {
        let mut s = Scheduler::new(cached_config(6, std::time::Duration::from_secs(60)));
        // 5 blocks, all cached after: 4 full ones and the partly filled one.
        let a = add_cached(&mut s, (0..17).collect(), 1, 1);
        serve_once(&mut s, a);
        assert_eq!(s.prefix.as_ref().unwrap().len(), 5);
        assert_eq!(s.free_blocks(), 1);
        // A new prompt needing 4 blocks: the cache gives up its least recently used ones.
        let b = add_cached(&mut s, (100..113).collect(), 2, 2);
        let plan = s.schedule();
        assert_eq!(plan.work, [(b, 13)]);
        assert_eq!(plan.preempted, 0);
        assert_eq!(plan.freed.len(), 3, "three evicted, to be zeroed");
        assert_blocks_accounted(&s);
    }

    #[test]
    fn chunks_respect_budget() {
        assert_eq!(chunk_for(1, 10), 1);
        assert_eq!(chunk_for(100, 10), 10);
        assert_eq!(chunk_for(5, 0), 0);
    }

    #[test]
    fn decodes_go_first_then_prefill_chunks_within_the_budget() {
        let mut s = Scheduler::new(config(64, 8, 8));
        let a = add(&mut s, 3, 1, 1);
        let plan = s.schedule();
        assert_eq!(plan.work, [(a, 3)]);
        run(&mut s, &plan);
        let b = add(&mut s, 20, 1, 2);
        // A decodes (1 token), B prefills with what is left of the 8-token budget.
        let plan = s.schedule();
        assert_eq!(plan.work, [(a, 1), (b, 7)]);
        run(&mut s, &plan);
        let plan = s.schedule();
        assert_eq!(plan.work, [(a, 1), (b, 7)]);
        run(&mut s, &plan);
        let plan = s.schedule();
        assert_eq!(plan.work, [(a, 1), (b, 6)], "the rest of B's prompt");
        assert!(plan.work.iter().map(|w| w.1).sum::<usize>() <= 8);
    }

    #[test]
    fn admission_is_in_order_and_capped() {
        let mut s = Scheduler::new(config(64, 100, 2));
        let ids: Vec<SeqId> = (0..4).map(|r| add(&mut s, 2, 1, r)).collect();
        let plan = s.schedule();
        assert_eq!(
            plan.work,
            [(ids[0], 2), (ids[1], 2)],
            "two running at most, first come"
        );
        assert_eq!((s.running(), s.waiting()), (2, 2));
        run(&mut s, &plan);
        let (_, freed) = s.remove(ids[0]).unwrap();
        assert!(!freed.is_empty(), "its blocks come back to be zeroed");
        let plan = s.schedule();
        assert_eq!(plan.work, [(ids[1], 1), (ids[2], 2)]);
        assert_blocks_accounted(&s);
    }

    #[test]
    fn the_newest_is_preempted_and_resumes_from_scratch() {
        // 4 blocks of 4 tokens: two sequences of 6 tokens fit (2 blocks each), but not once they grow.
        let mut s = Scheduler::new(config(4, 100, 8));
        let a = add(&mut s, 6, 1, 1);
        let b = add(&mut s, 6, 1, 2);
        let plan = s.schedule();
        assert_eq!(plan.work.len(), 2);
        run(&mut s, &plan);
        for _ in 0..2 {
            let plan = s.schedule();
            run(&mut s, &plan);
        }
        // Both at 9 tokens now: 3 blocks each needed, 4 in the cache.
        let plan = s.schedule();
        assert_eq!(plan.preempted, 1);
        assert!(!plan.freed.is_empty(), "the victim's blocks, to be zeroed");
        assert_eq!(plan.work, [(a, 1)], "the older one goes on");
        let victim = s.get(b).unwrap();
        assert_eq!((victim.cached, victim.table.blocks().len()), (0, 0));
        assert_eq!(s.waiting(), 1);
        run(&mut s, &plan);
        s.remove(a);
        // B comes back and recomputes all its tokens (prompt and generated).
        let plan = s.schedule();
        assert_eq!(plan.work, [(b, 9)]);
        assert_blocks_accounted(&s);
    }

    #[test]
    fn a_sequence_longer_than_the_cache_is_unfit() {
        let mut s = Scheduler::new(config(2, 100, 8));
        let a = add(&mut s, 8, 1, 1);
        let plan = s.schedule();
        assert_eq!(plan.work, [(a, 8)]);
        run(&mut s, &plan);
        let plan = s.schedule();
        assert_eq!(plan.unfit, [a], "9 tokens need 3 blocks of the 2 there are");
        assert!(plan.work.is_empty());
    }

    #[test]
    fn forks_share_full_blocks_copy_the_partial_one_or_wait() {
        let mut s = Scheduler::new(config(16, 100, 3));
        let a = add(&mut s, 6, 4, 1); // 1 full block + 2 tokens
        let plan = s.schedule();
        let sampled = run(&mut s, &plan);
        // Two forks fit under max_running 3; the third waits in the queue without blocks.
        assert_eq!(sampled.len(), 3);
        assert_eq!(s.running(), 3);
        assert_eq!(s.waiting(), 1);
        let parent_full = s.get(a).unwrap().table.blocks()[0];
        for &c in &sampled[1..] {
            let t = s.get(c).unwrap().table.blocks();
            assert_eq!(t[0], parent_full, "the full block is shared");
            assert_ne!(
                t[1],
                s.get(a).unwrap().table.blocks()[1],
                "the partial one is a copy"
            );
        }
        assert_blocks_accounted(&s);
    }

    /// Random arrivals, cancellations and steps under a small cache: blocks are never leaked or freed
    /// twice, every token is scheduled within the budget, and everything drains.
    #[test]
    fn random_traffic_never_leaks_or_double_frees_blocks() {
        random_traffic(false);
    }

    /// The same with prefix caching, prompts that are prefixes of one another (full and partly filled
    /// blocks found, copies and their held sources), two tenants.
    #[test]
    fn random_traffic_with_prefix_caching_never_leaks_or_double_frees_blocks() {
        random_traffic(true);
    }

    fn random_traffic(cached: bool) {
        let mut hits = 0;
        let mut copies = 0;
        for seed in 0..20u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut s = Scheduler::new(SchedulerConfig {
                prefix_cache_ttl: cached.then_some(std::time::Duration::from_secs(60)),
                ..config(24, 16, 6)
            });
            let mut request = 0;
            let mut live: Vec<u64> = Vec::new();
            for _ in 0..300 {
                if rng.random_bool(0.3) {
                    request += 1;
                    if cached {
                        let len = rng.random_range(1..30);
                        let tenant = rng.random_range(1..3);
                        add_cached(&mut s, (0..len).collect(), tenant, request);
                    } else {
                        add(
                            &mut s,
                            rng.random_range(1..30),
                            rng.random_range(1..4),
                            request,
                        );
                    }
                    live.push(request);
                }
                if !live.is_empty() && rng.random_bool(0.1) {
                    let r = live.swap_remove(rng.random_range(0..live.len()));
                    for id in s.of_request(r) {
                        s.remove(id);
                    }
                }
                let plan = s.schedule();
                assert!(plan.work.iter().map(|w| w.1).sum::<usize>() <= 16);
                copies += plan.copies.len();
                for id in &plan.unfit {
                    s.remove(*id);
                }
                let finished = run(&mut s, &plan);
                s.release_held(&plan.held);
                for id in finished {
                    // Finished sequences leave (about 1 in 8 tokens ends one).
                    if rng.random_bool(0.12) {
                        s.remove(id);
                    }
                }
                assert_blocks_accounted(&s);
            }
            hits += s.prefix_stats().map_or(0, |(_, c)| c.hit_tokens);
            for id in s.ids() {
                s.remove(id);
            }
            s.clear_prefix_cache();
            assert_eq!(s.free_blocks(), 24, "seed {seed}: every block back");
        }
        if cached {
            assert!(hits > 0 && copies > 0, "{hits} tokens hit, {copies} copies");
        }
    }
}
